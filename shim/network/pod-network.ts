// The pod's network on the host side, from CNI's namespace to the guest's NICs: read the
// namespace, record what is about to be made (so `shim delete` can undo it after a kill -9),
// wire a TAP per link (tcfilter.ts), and hand the launch the TAPs; once the agent answers, give
// it the interfaces, routes and neighbours (Kata's order: after SetPolicy, before CreateSandbox).
// Teardown removes filters, qdiscs and TAPs, then the record.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ServiceClient } from '../../proto/rpc.js';
import type { CallOptions } from '../../proto/ttrpc/index.js';
import type { GuestHandle, GuestLauncher } from '../guest.js';
import { checkNetnsPath } from './netns.js';
import { planPodNetwork, readNetns, IFNAME, TAP_NAME, type PodNetworkPlan } from './scan.js';
import { removeStaleTaps, unwire, wire } from './tcfilter.js';

export type InternetworkingModel = 'tcfilter' | 'none';
export const INTERNETWORKING_MODELS: readonly InternetworkingModel[] = ['tcfilter', 'none'];

/** What a killed shim leaves for `shim delete` to undo, in the sandbox's state dir. */
export const NETWORK_RECORD = 'network.json';

export interface NetworkRecord {
  netns: string;
  pairs: { link: string; tap: string }[];
}

/** A NIC of the guest: the TAP QEMU attaches to, and the MAC and MTU the guest sees. */
export interface GuestNic {
  tap: string;
  mac: string;
  mtu: number;
}

export interface PodNetwork {
  netns: string;
  plan: PodNetworkPlan;
  nics: GuestNic[];
  /** Removes what setup made. Idempotent. */
  teardown(): Promise<void>;
}

function writeRecord(file: string, rec: NetworkRecord): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(rec), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** Wires the pod's links to new TAPs. On failure nothing of it is left. */
export async function setupPodNetwork(o: { netns: string; stateDir: string; log: Logger }): Promise<PodNetwork> {
  const netns = checkNetnsPath(o.netns);
  const state = await readNetns(netns);
  const stale = await removeStaleTaps(netns, state.links.map((l) => l.ifname));
  if (stale.length) o.log.warn({ netns, taps: stale }, 'removed TAPs an earlier attempt left in the pod network namespace');
  const plan = planPodNetwork(state);
  for (const s of plan.skipped) o.log.warn({ netns, link: s.link }, `pod network link not connected to the VM: ${s.why}`);
  const pairs = plan.endpoints.map((e) => ({ link: e.link, tap: e.tap, mtu: e.mtu }));
  const recordFile = path.join(o.stateDir, NETWORK_RECORD);
  fs.mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  writeRecord(recordFile, { netns, pairs: pairs.map(({ link, tap }) => ({ link, tap })) });
  let torn: Promise<void> | undefined;
  const teardown = () =>
    (torn ??= (async () => {
      await unwire(netns, pairs);
      fs.rmSync(recordFile, { force: true });
      o.log.info({ netns, taps: pairs.map((p) => p.tap) }, 'pod network unwired');
    })());
  try {
    await wire(netns, pairs);
  } catch (e) {
    await teardown().catch((err: unknown) => o.log.error({ err }, 'undoing a half-wired pod network failed'));
    throw e;
  }
  o.log.info({ netns, pairs: pairs.map((p) => `${p.link}<->${p.tap}`), routes: plan.routes.length, neighbours: plan.neighbours.length }, 'pod network wired (tcfilter)');
  return { netns, plan, nics: plan.endpoints.map((e) => ({ tap: e.tap, mac: e.mac, mtu: e.mtu })), teardown };
}

/** Interfaces, then all routes in one call, then neighbours: the guest's side of the pod network. */
export async function configureGuestNetwork(agent: ServiceClient<'grpc.AgentService'>, net: PodNetwork, call: CallOptions, log: Logger): Promise<void> {
  for (const e of net.plan.endpoints) await agent.UpdateInterface({ interface: e.iface }, call);
  if (net.plan.routes.length) await agent.UpdateRoutes({ routes: { Routes: net.plan.routes } }, call);
  if (net.plan.neighbours.length) await agent.AddARPNeighbors({ neighbors: { ARPNeighbors: net.plan.neighbours } }, call);
  log.info({ interfaces: net.plan.endpoints.map((e) => `${e.iface.name} ${e.iface.IPAddresses.map((a) => `${a.address}/${a.mask}`).join(',')}`), routes: net.plan.routes.length }, 'guest network configured');
}

/** `shim delete`'s part: undoes what a dead shim's record names (after its VMM is gone). */
export async function removeRecordedNetwork(stateDir: string): Promise<NetworkRecord | undefined> {
  const file = path.join(stateDir, NETWORK_RECORD);
  let rec: NetworkRecord;
  try {
    rec = JSON.parse(fs.readFileSync(file, 'utf8')) as NetworkRecord;
  } catch {
    return undefined;
  }
  // The record is the shim's own (a 0700 dir), read back all the same as input: names as made.
  const pairs = (Array.isArray(rec.pairs) ? rec.pairs : []).filter((p) => TAP_NAME.test(p.tap) && IFNAME.test(p.link));
  let netns: string | undefined;
  try {
    netns = checkNetnsPath(rec.netns);
  } catch {
    // The namespace is gone, and its links, TAPs and qdiscs with it.
  }
  if (netns) await unwire(netns, pairs);
  fs.rmSync(file, { force: true });
  return rec;
}

/**
 * A launcher whose VMs get the pod's network: with a pod network namespace and the tcfilter model,
 * the TAPs are wired before `launch` runs (it is handed them as `network`), the guest handle
 * carries the plan for the agent calls (sandbox-boot.ts), and its stop() unwires after the VM is
 * gone. A failed launch unwires at once.
 */
export function withPodNetwork(launch: GuestLauncher): GuestLauncher {
  return async (req) => {
    if (!req.podNetns) return launch(req);
    if (req.config.runtime.internetworking_model === 'none') {
      req.log.warn({ netns: req.podNetns }, 'internetworking_model = none: the pod network namespace is not connected to the VM (containers get loopback only)');
      return launch(req);
    }
    const net = await setupPodNetwork({ netns: req.podNetns, stateDir: req.stateDir, log: req.log });
    let guest: GuestHandle;
    try {
      guest = await launch({ ...req, network: { netns: net.netns, nics: net.nics } });
    } catch (e) {
      await net.teardown().catch((err: unknown) => req.log.error({ err }, 'unwiring the pod network after a failed launch failed'));
      throw e;
    }
    return {
      ...guest,
      podNetwork: net,
      stop: async () => {
        try {
          await guest.stop();
        } finally {
          await net.teardown().catch((err: unknown) => req.log.error({ err, netns: net.netns }, 'unwiring the pod network failed'));
        }
      },
    };
  };
}
