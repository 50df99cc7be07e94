// grpc.AgentService and grpc.Health: each request checked, mapped onto the sandbox and its
// containers, answered. Methods not listed answer Unimplemented naming themselves (proto/rpc.ts).
import type { ServiceImpl } from '../proto/rpc.js';
import type { CallContext } from '../proto/ttrpc/index.js';
import { Container } from './container.js';
import type { Sandbox } from './sandbox.js';
import { copyFile } from './copy-file.js';
import { diagnosticData } from './diagnostics.js';
import { agentMetrics } from './metrics.js';
import { guestDetails, onlineCpuMem, reseedRandomDev, setGuestDateTime, AGENT_VERSION, API_VERSION } from './guest.js';
import { checkAbsolute } from './spec.js';
import { GuestNetwork, noGuestNetwork } from './network.js';
import { invalid, unavailable, withContext, TtrpcError, Code } from './errors.js';
import { checkKbsUrl, KBS_URL_ANNOTATION } from '../attestation/cdh.js';

const MAX_READ = 1 << 20;

function deadline<T>(p: Promise<T>, seconds: number, what: string): Promise<T> {
  if (!seconds) return p;
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new TtrpcError(Code.DeadlineExceeded, `${what}: not done within ${seconds} s`)), seconds * 1000);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/** Runs a handler, turning stray errors into ttrpc errors that name the request. */
async function guard<T>(what: string, f: () => Promise<T> | T): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof TtrpcError) throw e;
    throw withContext(what, e);
  }
}

export function agentService(sb: Sandbox): Partial<ServiceImpl<'grpc.AgentService'>> {
  const log = {
    info: (...a: Parameters<Sandbox['log']['info']>) => sb.log.info(...a),
    warn: (...a: Parameters<Sandbox['log']['warn']>) => sb.log.warn(...a),
  };
  const proc = (cid: string, eid: string) => sb.container(cid).process(eid);
  const network = sb.config.network ? new GuestNetwork(sb.config.network, sb.config.keeper, sb.config.log) : undefined;

  return {
    // ---- sandbox
    CreateSandbox: (req) =>
      guard('CreateSandbox', async () => {
        if (sb.running) throw new TtrpcError(Code.AlreadyExists, `sandbox ${sb.id || '(unnamed)'} already exists`);
        // Refused before anything changes: a host that needs modules would otherwise run pods without them.
        if (req.kernel_modules?.length) {
          throw new TtrpcError(Code.Unimplemented, `kernel modules cannot be loaded in this guest (its image carries only its boot modules): ${req.kernel_modules.map((m) => m.name).join(', ')}`);
        }
        if (req.sandbox_id) sb.id = req.sandbox_id;
        sb.hostname = req.hostname;
        sb.log = sb.config.log.child({ sandbox_id: sb.id || undefined });
        sb.log.info({ hostname: req.hostname }, 'creating sandbox');
        if (req.guest_hook_path) {
          checkAbsolute(req.guest_hook_path, 'guest_hook_path');
          sb.loadGuestHooks(req.guest_hook_path);
        }
        sb.writeDns(req.dns ?? []);
        // The pod's ipc/uts namespaces and its storages do not depend on each other, and each runs
        // helpers (slow under TCG) and waits on the VMM (9p): both at once, undone together.
        const [ns, storages] = await Promise.allSettled([sb.setupSharedNamespaces(), sb.addStorages(req.storages ?? [])]);
        if (storages.status === 'fulfilled') sb.sandboxMounts = storages.value;
        const failed = [ns, storages].find((r) => r.status === 'rejected');
        if (failed) {
          await sb.teardown();
          throw failed.reason;
        }
        sb.running = true;
        return {};
      }),

    DestroySandbox: () =>
      guard('DestroySandbox', async () => {
        const ids = [...sb.containers.keys()];
        const sandboxId = sb.id;
        const results = await Promise.allSettled([...sb.containers.values()].map((c) => c.remove()));
        const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${ids[i]}: ${(r.reason as Error).message}`] : []));
        await sb.teardown();
        log.info({ sandbox_id: sandboxId, containers: ids.length }, 'sandbox destroyed');
        if (failed.length) throw new TtrpcError(Code.Internal, `DestroySandbox: ${failed.join('; ')}`);
        return {};
      }),

    GetGuestDetails: (req) => guard('GetGuestDetails', () => guestDetails(req, sb.config.sysfsRoot)),

    OnlineCPUMem: (req) =>
      guard('OnlineCPUMem', async () => {
        const r = await onlineCpuMem(req, sb.config.sysfsRoot);
        log.info(r, 'onlined CPUs and memory');
        return {};
      }),

    SetGuestDateTime: (req) =>
      guard('SetGuestDateTime', async () => {
        const applied = await setGuestDateTime(req, sb.config.runner, sb.config.setClock, sb.config.keeper);
        log.info({ sec: req.Sec, usec: req.Usec, applied }, applied ? 'guest clock set' : 'guest clock not set (local mode)');
        return {};
      }),

    ReseedRandomDev: (req) =>
      guard('ReseedRandomDev', async () => {
        const applied = await reseedRandomDev(req, sb.config.setClock, sb.config.keeper);
        log.info({ bytes: req.data?.length ?? 0, applied }, applied ? 'kernel CRNG reseeded' : 'kernel CRNG not reseeded (local mode)');
        return {};
      }),

    CopyFile: (req) =>
      guard('CopyFile', () => {
        const made = copyFile(req, sb.config.copyRoot, sb.config.stateDir);
        if (made) sb.copiedDirs.add(made);
        return {};
      }),

    GetOOMEvent: (_req, ctx: CallContext) => guard('GetOOMEvent', async () => ({ container_id: await sb.nextOom(ctx.signal) })),

    GetMetrics: () =>
      guard('GetMetrics', () => ({
        metrics: agentMetrics({ kata_agent_containers: sb.containers.size }) + sb.policy.timings.text(),
      })),

    SetPolicy: (req) => guard('SetPolicy', () => (sb.policy.set(req.policy), {})),

    AddSwapPath: (req) =>
      guard('AddSwapPath', () => {
        throw new TtrpcError(Code.Unimplemented, `AddSwapPath ${req.path}: swap is not supported by this agent (guest images have no swap support); the sandbox runs without swap`);
      }),

    GetDiagnosticData: (req) => guard(`GetDiagnosticData ${req.container_id}`, () => diagnosticData(sb.container(req.container_id), req.log_type)),

    // ---- network (Kata's order: after SetPolicy, before CreateSandbox)
    UpdateInterface: (req) =>
      guard('UpdateInterface', async () => {
        const t0 = performance.now();
        const r = await (network ?? noGuestNetwork('UpdateInterface')).updateInterface(req.interface);
        log.info({ interface: r.name, mac: r.hwAddr, addresses: r.IPAddresses.map((a) => `${a.address}/${a.mask}`), mtu: r.mtu, via: network?.via, ms: Math.round(performance.now() - t0) }, 'interface configured');
        return r;
      }),

    UpdateRoutes: (req) =>
      guard('UpdateRoutes', async () => {
        const t0 = performance.now();
        const routes = await (network ?? noGuestNetwork('UpdateRoutes')).updateRoutes(req.routes?.Routes ?? []);
        log.info({ routes: routes.map((r) => `${r.dest || 'default'}${r.gateway ? ` via ${r.gateway}` : ''} dev ${r.device}`), via: network?.via, ms: Math.round(performance.now() - t0) }, 'routes configured');
        return { Routes: routes };
      }),

    AddARPNeighbors: (req) =>
      guard('AddARPNeighbors', async () => {
        const list = req.neighbors?.ARPNeighbors ?? [];
        const t0 = performance.now();
        await (network ?? noGuestNetwork('AddARPNeighbors')).addNeighbours(list);
        log.info({ neighbours: list.map((n) => `${n.toIPAddress?.address ?? ''} ${n.lladdr} dev ${n.device}`), via: network?.via, ms: Math.round(performance.now() - t0) }, 'neighbours added');
        return {};
      }),

    // ---- containers
    CreateContainer: (req) =>
      guard(`CreateContainer ${req.container_id}`, async () => {
        // The pod's KBS, from its annotation (as decided by the policy like every other field);
        // initdata's, when the VM has initdata, stays (the first KBS named stays).
        const kbsUrl = req.OCI?.Annotations?.[KBS_URL_ANNOTATION];
        if (kbsUrl !== undefined) {
          try {
            checkKbsUrl(kbsUrl);
          } catch (e) {
            throw invalid(`CreateContainer ${req.container_id}: annotation ${KBS_URL_ANNOTATION}: ${(e as Error).message}`);
          }
        }
        // Named before the container is made: its own sealed secrets come from that KBS.
        if (kbsUrl !== undefined) {
          if (sb.config.cdh) sb.config.cdh.setKbsUrl(kbsUrl);
          else sb.config.log.warn({ container: req.container_id }, `annotation ${KBS_URL_ANNOTATION}: this VM has no SNP report port; no attestation endpoint`);
        }
        await Container.create(sb, req);
        return {};
      }),

    StartContainer: (req) => guard(`StartContainer ${req.container_id}`, () => sb.container(req.container_id).start().then(() => ({}))),

    RemoveContainer: (req) =>
      guard(`RemoveContainer ${req.container_id}`, async () => {
        const c = sb.container(req.container_id);
        await deadline(c.remove(), req.timeout, `RemoveContainer ${req.container_id}`);
        return {};
      }),

    PauseContainer: (req) => guard(`PauseContainer ${req.container_id}`, () => sb.container(req.container_id).pause().then(() => ({}))),
    ResumeContainer: (req) => guard(`ResumeContainer ${req.container_id}`, () => sb.container(req.container_id).resume().then(() => ({}))),

    UpdateContainer: (req) =>
      guard(`UpdateContainer ${req.container_id}`, async () => {
        const c = sb.container(req.container_id);
        if (req.resources) await c.update(req.resources);
        return {};
      }),

    StatsContainer: (req) => guard(`StatsContainer ${req.container_id}`, () => sb.container(req.container_id).stats()),

    // ---- processes
    ExecProcess: (req) =>
      guard(`ExecProcess ${req.container_id}/${req.exec_id}`, async () => {
        await sb.container(req.container_id).exec(req);
        return {};
      }),

    SignalProcess: (req) =>
      guard(`SignalProcess ${req.container_id}/${req.exec_id}`, async () => {
        if (req.signal > 64) throw invalid(`SignalProcess: invalid signal ${req.signal}`);
        await sb.container(req.container_id).signal(req.exec_id, req.signal);
        return {};
      }),

    WaitProcess: (req, ctx) =>
      guard(`WaitProcess ${req.container_id}/${req.exec_id}`, async () => ({
        status: await sb.container(req.container_id).wait(req.exec_id, ctx.signal),
      })),

    ReadStdout: (req, ctx) => guard(`ReadStdout ${req.container_id}/${req.exec_id}`, () => readStream(sb, req, 'stdout', ctx)),
    ReadStderr: (req, ctx) => guard(`ReadStderr ${req.container_id}/${req.exec_id}`, () => readStream(sb, req, 'stderr', ctx)),

    WriteStdin: (req) =>
      guard(`WriteStdin ${req.container_id}/${req.exec_id}`, async () => {
        const p = proc(req.container_id, req.exec_id);
        // Empty data is the end of input (upstream's runtime-rs closes stdin this way).
        if (req.data.length === 0) {
          await p.closeStdin();
          return { len: 0 };
        }
        return { len: await p.stdin.write(req.data) };
      }),

    CloseStdin: (req) =>
      guard(`CloseStdin ${req.container_id}/${req.exec_id}`, async () => {
        await proc(req.container_id, req.exec_id).closeStdin();
        return {};
      }),

    TtyWinResize: (req) =>
      guard(`TtyWinResize ${req.container_id}/${req.exec_id}`, () => {
        const p = proc(req.container_id, req.exec_id);
        if (!p.tty) throw unavailable(`TtyWinResize: ${p.label} has no tty`);
        if (!p.running) throw new TtrpcError(Code.FailedPrecondition, `TtyWinResize: ${p.label} is not running`);
        p.resize(req.row, req.column);
        return {};
      }),
  };
}

async function readStream(
  sb: Sandbox,
  req: { container_id: string; exec_id: string; len: number },
  which: 'stdout' | 'stderr',
  ctx: CallContext,
): Promise<{ data: Uint8Array }> {
  const c = sb.container(req.container_id);
  const p = c.process(req.exec_id);
  const len = Math.min(req.len || MAX_READ, MAX_READ);
  let data: Uint8Array;
  try {
    data = await p[which].read(len, ctx.signal);
  } catch (e) {
    if (p[which].done) c.reapExec(p);
    throw e;
  }
  // Decided after the read, as Kata's agent does: a denied stream is still drained (the process
  // does not block on a full pipe), only its bytes are withheld.
  return { data: sb.policy.readAllowed(req, which) ? data : new Uint8Array(0) };
}

export function healthService(): Partial<ServiceImpl<'grpc.Health'>> {
  return {
    Check: () => ({ status: 1 }),
    Version: () => ({ agent_version: AGENT_VERSION, grpc_version: API_VERSION }),
  };
}
