// CNI for a private containerd's CRI pods: Debian's containernetworking-plugins (bridge, host-local,
// loopback, portmap) unpacked into the cache, linked into the instance's own CNI bin dir, and one
// bridge network in its conf dir. Each instance gets its own bridge (named after its namespace)
// and its own /24 in 10.222.0.0/16, one no route of this machine covers yet; host-local keeps its
// leases inside the instance dir. Traffic stays on this machine: no masquerading, no default route
// out of the bridge. removeCniBridge() takes the bridge (and the route to its subnet) away.
// A second network (setupCniNetworks with 2, containerd's max_conf_num = 2) gives every pod a
// second interface (eth1) on a second bridge and /24, with no default route but one extra route
// (TEST-NET-2 via its gateway): the shape of a pod with two CNI networks, as Multus makes them.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { unpackDeb } from './debs.js';
import { run, runOk } from './exec.js';

export const CNI_PLUGINS = ['bridge', 'host-local', 'loopback', 'portmap'];

export interface CniNetwork {
  /** The pod's interface on it: eth0 for the first network, eth1 for the second (containerd's names). */
  ifname: string;
  /** The CNI network name (also host-local's lease dir). */
  name: string;
  /** The bridge in this machine's namespace. */
  bridge: string;
  /** 10.222.N.0/24 */
  subnet: string;
  /** The bridge's address: the pods' gateway, and how this machine reaches them. */
  gateway: string;
  /** Routes (other than the connected one) the pods get through this network: 'default' or a CIDR. */
  routes: string[];
}

/** The route a second network gives its pods: TEST-NET-2 (RFC 5737), never routed anywhere. */
export const SECOND_NETWORK_ROUTE = '198.51.100.0/24';
/** Conf files of ours in an instance's conf dir (loaded in name order: the first is eth0's). */
const CONF_FILE = /^\d\d-katats(-\d)?\.conflist$/;

/** The Debian plugins' dir (unpacked, not installed). */
export async function cniPluginDir(onProgress?: (line: string) => void): Promise<string> {
  const deb = await unpackDeb('containernetworking-plugins', { suite: 'system', ...(onProgress ? { onProgress } : {}) });
  const dir = path.join(deb.dir, 'usr', 'lib', 'cni');
  for (const p of CNI_PLUGINS) if (!fs.existsSync(path.join(dir, p))) throw new Error(`containernetworking-plugins ${deb.version}: no ${p} in ${dir}`);
  return dir;
}

/** A /24 of 10.222.0.0/16 that no route of this machine covers, chosen from the namespace's hash. */
async function freeSubnet(seed: string): Promise<number> {
  const routes = (await runOk('ip', ['-4', '-o', 'route', 'show'])).stdout;
  const used = new Set([...routes.matchAll(/^10\.222\.(\d+)\.\d+/gm)].map((m) => Number(m[1])));
  if (/^10\.(0\.0\.0\/8|222\.0\.0\/16) /m.test(routes)) throw new Error('10.222.0.0/16 is routed on this machine already: no private subnet for CNI');
  const start = parseInt(createHash('sha256').update(seed).digest('hex').slice(0, 4), 16) % 250;
  for (let i = 0; i < 250; i++) {
    const n = ((start + i) % 250) + 1;
    if (!used.has(n)) return n;
  }
  throw new Error('no free /24 in 10.222.0.0/16 for a CNI bridge');
}

/**
 * Links the plugins into `binDir` and writes a bridge network into `confDir` (host-local's leases
 * under `dataDir`). `namespace` names the bridge: kt + 10 hex digits of its hash (15 bytes at most).
 */
export interface CniSetupOptions {
  confDir: string;
  binDir: string;
  dataDir: string;
  namespace: string;
  onProgress?: (line: string) => void;
}

export async function setupCniNetwork(o: CniSetupOptions): Promise<CniNetwork> {
  return (await setupCniNetworks(o, 1))[0]!;
}

/** As setupCniNetwork, with `count` (1 or 2) networks: every pod gets an interface on each. */
export async function setupCniNetworks(o: CniSetupOptions, count: 1 | 2): Promise<CniNetwork[]> {
  const src = await cniPluginDir(o.onProgress);
  fs.mkdirSync(o.binDir, { recursive: true });
  fs.mkdirSync(o.confDir, { recursive: true });
  for (const p of CNI_PLUGINS) {
    const link = path.join(o.binDir, p);
    fs.rmSync(link, { force: true });
    fs.symlinkSync(path.join(src, p), link);
  }
  const nets: CniNetwork[] = [];
  try {
    for (let i = 0; i < count; i++) nets.push(await addNetwork(o, i));
  } catch (e) {
    for (const n of nets) await removeCniBridge(n.bridge).catch(() => undefined);
    throw e;
  }
  return nets;
}

async function addNetwork(o: CniSetupOptions, index: number): Promise<CniNetwork> {
  const seed = index ? `${o.namespace}/${index + 1}` : o.namespace;
  const bridge = `kt${createHash('sha256').update(seed).digest('hex').slice(0, 10)}`;
  // The first network's bridge is up by now, its route with it: the second gets another /24.
  const n = await freeSubnet(seed);
  const suffix = index ? `-${index + 1}` : '';
  const net: CniNetwork = {
    ifname: `eth${index}`,
    name: `katats-${o.namespace}${suffix}`,
    bridge,
    subnet: `10.222.${n}.0/24`,
    gateway: `10.222.${n}.1`,
    routes: index ? [SECOND_NETWORK_ROUTE] : ['default'],
  };
  const conf = {
    cniVersion: '0.4.0',
    name: net.name,
    plugins: [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: {
          type: 'host-local',
          dataDir: o.dataDir,
          ranges: [[{ subnet: net.subnet, gateway: net.gateway }]],
          routes: net.routes.map((r) => ({ dst: r === 'default' ? '0.0.0.0/0' : r })),
        },
      },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  fs.writeFileSync(path.join(o.confDir, `${10 * (index + 1)}-katats${suffix}.conflist`), JSON.stringify(conf, null, 2));
  // Made here rather than by the first pod: servers on this machine can bind the gateway address
  // before any pod exists (the plugin takes a bridge that is there, with its address, as it is).
  try {
    await runOk('ip', ['link', 'add', 'name', bridge, 'type', 'bridge']);
    await runOk('ip', ['addr', 'add', `${net.gateway}/24`, 'dev', bridge]);
    await runOk('ip', ['link', 'set', 'dev', bridge, 'up']);
  } catch (e) {
    await removeCniBridge(bridge).catch(() => undefined);
    throw e;
  }
  return net;
}

/** Removes the instance's bridge (its address and route go with it). A missing bridge is fine. */
export async function removeCniBridge(bridge: string): Promise<void> {
  const r = await run('ip', ['link', 'del', 'dev', bridge], { timeoutMs: 15_000 });
  if (r.code !== 0 && !/Cannot find device/.test(r.stderr)) throw new Error(`ip link del ${bridge}: ${r.stderr.trim()}`);
}

/** The bridges an instance's conf dir names (ours only: kt + 10 hex digits), for reaping a dead instance's. */
export function cniBridgesOf(confDir: string): string[] {
  let files: string[];
  try {
    files = fs.readdirSync(confDir).filter((f) => CONF_FILE.test(f)).sort();
  } catch {
    return [];
  }
  return files.flatMap((f) => {
    try {
      const conf = JSON.parse(fs.readFileSync(path.join(confDir, f), 'utf8')) as { plugins?: { type?: string; bridge?: string }[] };
      const b = conf.plugins?.find((p) => p.type === 'bridge')?.bridge;
      return b && /^kt[0-9a-f]{10}$/.test(b) ? [b] : [];
    } catch {
      return [];
    }
  });
}
