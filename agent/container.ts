// One container: its bundle (config.json, the rootfs bind mount), its crun container, its init
// process and execs, its cgroup (stats, OOM watch) and the storages it holds.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { Init } from '../proto/registry.js';
import type { Logger } from './log.js';
import type { Sandbox } from './sandbox.js';
import { ContainerProcess } from './process.js';
import { ContainerCgroup, removeCgroupParents } from './cgroups.js';
import { watchOomV1, watchOomV2, type OomWatcher } from './oom.js';
import { umount, isMounted } from '../sys/mount.js';
import { bindRootfs, bundleDir } from './places.js';
import { unsealEnv, unsealSpec } from './unseal.js';
import { removeCopies } from './copy-file.js';
import { applyDevices } from './devices.js';
import { specToOci, processToOci, resourcesToOci, type OciSpec } from './spec.js';
import { checkId as checkSysId } from '../sys/ids.js';
import { alreadyExists, invalid, notFound, precondition, withContext, TtrpcError, Code } from './errors.js';

/** Container and exec ids become paths below the state dir: the shim's rule (sys/ids.ts), as InvalidArgument. */
export function checkId(id: string, what: string): void {
  try {
    checkSysId(id, what);
  } catch (e) {
    throw invalid((e as Error).message);
  }
}

export type ContainerStatus = 'created' | 'running' | 'paused' | 'stopped';

const SIGKILL = 9;
const SIGTERM = 15;

/** Whether the process at `pid` blocks, ignores or catches `sig` (upstream's is_signal_handled). */
function signalHandled(pid: number, sig: number): boolean {
  if (sig === 0) return fs.existsSync(`/proc/${pid}/status`);
  if (sig > 64) return false;
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return false;
  }
  const bit = 1n << BigInt(sig - 1);
  return [...text.matchAll(/^(?:SigBlk|SigIgn|SigCgt):\s*([0-9a-f]+)$/gm)].some((m) => (BigInt(`0x${m[1]}`) & bit) !== 0n);
}

function netStats(pid: number): Init<grpc.NetworkStats>[] {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/net/dev`, 'utf8');
  } catch {
    return [];
  }
  const out: Init<grpc.NetworkStats>[] = [];
  for (const line of text.split('\n').slice(2)) {
    const m = /^\s*([^:]+):\s*(.*)$/.exec(line);
    if (!m || m[1] === 'lo') continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    out.push({
      name: m[1],
      rx_bytes: f[0],
      rx_packets: f[1],
      rx_errors: f[2],
      rx_dropped: f[3],
      tx_bytes: f[8],
      tx_packets: f[9],
      tx_errors: f[10],
      tx_dropped: f[11],
    });
  }
  return out;
}

/** The hooks `crun create` runs, or the container's init runs before its exec (OCI runtime spec). */
const CREATE_HOOKS = ['prestart', 'createRuntime', 'createContainer', 'startContainer'] as const;

export class Container {
  status: ContainerStatus = 'created';
  readonly execs = new Map<string, ContainerProcess>();
  init!: ContainerProcess;
  private oom: OomWatcher | undefined;
  private rootfsMounted = false;
  private crunCreated = false;
  /** The spec runs hooks at start (poststart) or delete (poststop): crun's own ASLR stays on for those. */
  private hooks = { poststart: false, poststop: false };
  storageMounts: string[] = [];
  removing: Promise<void> | undefined;

  constructor(
    readonly id: string,
    readonly sandbox: Sandbox,
    readonly bundle: string,
    readonly cgroup: ContainerCgroup,
    /** the agent chose the cgroup path and may remove its empty parents */
    private readonly ownCgroupPath: boolean,
    readonly log: Logger,
  ) {}

  get crun() {
    return this.sandbox.crun;
  }

  /** CreateContainer: bundle, storages, devices, crun create. Cleans up after itself on failure. */
  static async create(sb: Sandbox, req: grpc.CreateContainerRequest): Promise<Container> {
    const cid = req.container_id;
    checkId(cid, 'container id');
    if (sb.containers.has(cid) || sb.creating.has(cid)) throw alreadyExists(`container ${cid}`);
    if (!req.OCI) throw invalid(`container ${cid}: request has no OCI spec`);
    const spec = specToOci(req.OCI);
    const cfg = sb.config;
    const log = sb.log.child({ sandbox_id: sb.id || undefined, container_id: cid });

    // Namespaces: the pod's IPC/UTS, a new PID namespace unless the sandbox's is asked for.
    spec.linux ??= {};
    const ns = (spec.linux.namespaces ?? []).filter((n) => n.type !== 'pid');
    for (const n of ns) {
      if ((n.type === 'ipc' || n.type === 'uts') && sb.sharedNsDir) n.path = path.join(sb.sharedNsDir, n.type);
      else if (n.type === 'ipc' || n.type === 'uts') delete n.path;
    }
    ns.push(req.sandbox_pidns && sb.pidnsPath ? { type: 'pid', path: sb.pidnsPath } : { type: 'pid' });
    // The pod's network is the VM's: every container joins it by path, whatever the host asked.
    // Joined rather than inherited so that crun lets the pod's net.* sysctls through (containerd
    // 2.x sets net.ipv4.ip_unprivileged_port_start); they apply to the pod's network, as in runc.
    spec.linux.namespaces = cfg.netnsPath ? [...ns.filter((n) => n.type !== 'network'), { type: 'network', path: cfg.netnsPath }] : ns;
    if (sb.sharedNsDir && ns.some((n) => n.type === 'uts' && n.path)) delete spec.hostname;
    // No UTS namespace of its own (a host-network pod's containers): it shares the guest's, whose
    // name is not the container's to set, and crun refuses a hostname without a UTS namespace.
    if (spec.hostname && !ns.some((n) => n.type === 'uts')) {
      log.debug({ hostname: spec.hostname }, 'no UTS namespace: the spec hostname is not applied');
      delete spec.hostname;
    }
    if (sb.guestHooks) {
      spec.hooks ??= {};
      for (const k of ['prestart', 'poststart', 'poststop'] as const) {
        if (sb.guestHooks[k].length) spec.hooks[k] = [...(spec.hooks[k] ?? []), ...sb.guestHooks[k]];
      }
    }
    const given = spec.linux.cgroupsPath;
    const usable = !!given && given.startsWith('/') && !given.includes(':') && !given.split('/').includes('..');
    const cgPath = usable ? given! : `${cfg.cgroupParent}/${cid}`;
    spec.linux.cgroupsPath = cgPath;

    const bundle = bundleDir(cfg.stateDir, cid);
    const c = new Container(cid, sb, bundle, new ContainerCgroup(cfg.cgroups, cgPath), !usable, log);
    c.hooks = { poststart: !!spec.hooks?.poststart?.length, poststop: !!spec.hooks?.poststop?.length };
    sb.creating.add(cid);
    const t0 = performance.now();
    const at: Record<string, number> = {};
    const mark = (step: string) => (at[`${step}_ms`] = Math.round(performance.now() - t0));
    try {
      // After the policy decided the request (on the sealed text), before anything runs.
      await unsealSpec(spec, { sharedRoot: cfg.copyRoot, copyDir: path.join(bundle, 'sealed'), kbs: cfg.cdh?.resourceSource(), cid, log });
      await applyDevices(req.devices ?? [], spec, cfg.sysfsRoot, cfg.pciRescan);
      mark('devices');
      c.storageMounts = await sb.addStorages(req.storages ?? [], cid);
      mark('storages');
      // The overlay of the container's layers is a storage mounted on its rootfs already.
      const rootfs = path.join(bundle, 'rootfs');
      if (!(path.resolve(spec.root!.path) === rootfs && c.storageMounts.some((m) => path.resolve(m) === rootfs))) {
        await bindRootfs(spec.root!.path, rootfs, cfg.stateDir);
        c.rootfsMounted = true;
      }
      spec.root = { path: path.join(bundle, 'rootfs'), readonly: spec.root!.readonly };
      const createFlags = c.crun.createFlags(spec, { runsHooks: CREATE_HOOKS.some((k) => spec.hooks?.[k]?.length) });
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify(spec, null, 2));
      mark('rootfs');
      const io = path.join(bundle, 'io', 'init');
      const tty = !!spec.process?.terminal;
      const p = new ContainerProcess(cid, '', tty, log, cfg.outputBufferBytes);
      const sock = tty ? consoleSocketPath(cfg.stateDir, cid, 'init') : undefined;
      await p.launch({
        runner: cfg.runner,
        runnerFlags: createFlags,
        crunArgv: c.crun.createArgs(cid, bundle, path.join(io, 'pid'), sock, path.join(io, 'crun.log')),
        ioDir: io,
        pidFile: path.join(io, 'pid'),
        consoleSocket: sock,
        monitorSocket: consoleSocketPath(cfg.stateDir, cid, 'runner:init'),
        keeper: cfg.runnersByKeeper === false ? undefined : cfg.keeper,
        crunLog: path.join(io, 'crun.log'),
        consoleSize: spec.process?.consoleSize ? { rows: spec.process.consoleSize.height, cols: spec.process.consoleSize.width } : undefined,
      });
      c.crunCreated = true;
      c.init = p;
      p.exited
        .then(() => {
          c.status = 'stopped';
          c.stopOom();
        })
        .catch((err: unknown) => log.error({ err }, 'container exit bookkeeping failed'));
      if (!sb.pidnsPath && sb.containers.size === 0) sb.pidnsPath = `/proc/${p.pid}/ns/pid`;
      sb.containers.set(cid, c);
      mark('launched');
      // Milliseconds since the request reached the container's create, at the end of each step.
      log.info({ bundle, pid: p.pid, cgroup: cgPath, ...at }, 'container created');
      return c;
    } catch (e) {
      log.warn({ err: e }, 'container create failed, cleaning up');
      await c.cleanup().catch((e2) => log.warn({ err: e2 }, 'cleanup after failed create failed'));
      throw e instanceof TtrpcError ? e : withContext(`create container ${cid}`, e);
    } finally {
      sb.creating.delete(cid);
    }
  }

  async start(): Promise<void> {
    if (this.status !== 'created') throw precondition(`container ${this.id} is ${this.status}, not created`);
    await this.crun.start(this.id, { runsHooks: this.hooks.poststart });
    this.status = 'running';
    if (this.id !== this.sandbox.id) await this.startOom();
    this.log.info('container started');
  }

  private async startOom(): Promise<void> {
    const dir = this.cgroup.memoryDir();
    if (!dir || !fs.existsSync(dir)) {
      this.log.warn({ dir }, 'no memory cgroup: OOM events unavailable');
      return;
    }
    const onOom = () => this.sandbox.pushOom(this.id);
    try {
      if (this.cgroup.v2) this.oom = watchOomV2(dir, onOom, this.log);
      else {
        this.oom = watchOomV1(this.sandbox.config.runner, dir, onOom, this.log);
        await this.oom.ready;
      }
    } catch (e) {
      this.log.warn({ err: e }, 'OOM watch failed');
    }
  }

  private stopOom(): void {
    // A v1 eventfd fires once more as the cgroup goes away; give a last OOM time to be read.
    const w = this.oom;
    this.oom = undefined;
    if (w) setTimeout(() => w.stop(), 500).unref();
  }

  /** The init by '' or by the container's own id (as Kata's shim names it), else an exec. */
  process(execId: string): ContainerProcess {
    if (!execId || execId === this.id) return this.init;
    const p = this.execs.get(execId);
    if (!p) throw notFound(`exec ${execId} of container ${this.id}`);
    return p;
  }

  async exec(req: grpc.ExecProcessRequest): Promise<ContainerProcess> {
    const eid = req.exec_id;
    checkId(eid, 'exec id');
    if (eid === this.id) throw alreadyExists(`exec ${eid} of container ${this.id}: the container's own id names its init process`);
    if (this.execs.has(eid)) throw alreadyExists(`exec ${eid} of container ${this.id}`);
    if (this.status !== 'running') throw precondition(`container ${this.id} is ${this.status}: cannot exec ${eid}`);
    if (!req.process) throw invalid(`exec ${eid} of container ${this.id}: request has no process`);
    const proc = processToOci(req.process, `exec ${eid} process`);
    const cfg = this.sandbox.config;
    const log = this.log.child({ exec_id: eid });
    const p = new ContainerProcess(this.id, eid, !!proc.terminal, log, cfg.outputBufferBytes);
    this.execs.set(eid, p);
    const io = path.join(this.bundle, 'io', `exec-${eid}`);
    try {
      // The host builds an exec's env from the container's spec: its sealed values too, unsealed as at create.
      if (proc.env?.length) proc.env = (await unsealEnv(proc.env, cfg.cdh?.resourceSource(), `ExecProcess ${this.id}/${eid}`)).env;
      fs.mkdirSync(io, { recursive: true, mode: 0o700 });
      fs.writeFileSync(path.join(io, 'process.json'), JSON.stringify(proc));
      const sock = p.tty ? consoleSocketPath(cfg.stateDir, this.id, eid) : undefined;
      await p.launch({
        runner: cfg.runner,
        runnerFlags: this.crun.runnerPrefix(),
        crunArgv: this.crun.execArgs(this.id, path.join(io, 'process.json'), path.join(io, 'pid'), sock, path.join(io, 'crun.log')),
        ioDir: io,
        pidFile: path.join(io, 'pid'),
        consoleSocket: sock,
        monitorSocket: consoleSocketPath(cfg.stateDir, this.id, `runner:exec:${eid}`),
        keeper: cfg.runnersByKeeper === false ? undefined : cfg.keeper,
        crunLog: path.join(io, 'crun.log'),
        consoleSize: proc.consoleSize ? { rows: proc.consoleSize.height, cols: proc.consoleSize.width } : undefined,
      });
    } catch (e) {
      this.execs.delete(eid);
      throw e;
    }
    return p;
  }

  /**
   * SignalProcess. The container's id (or an exec's) signals that one process; an empty exec id
   * signals the init and then every other process of the container (Kata's "all").
   */
  async signal(execId: string, sig: number): Promise<void> {
    const all = execId === '';
    const p = this.process(execId);
    let s = sig;
    // A PID 1 without a handler ignores SIGTERM: Kata's agent turns it into SIGKILL for the init.
    if (p === this.init && s === SIGTERM && p.running && !signalHandled(p.pid, SIGTERM)) s = SIGKILL;
    p.signal(s);
    if (all && (this.status === 'running' || this.status === 'paused')) {
      let pids: number[] = [];
      try {
        pids = await this.crun.ps(this.id);
      } catch (e) {
        this.log.debug({ err: e }, 'crun ps failed while signalling all processes');
      }
      for (const pid of pids) {
        if (pid === p.pid) continue;
        try {
          process.kill(pid, s);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ESRCH') this.log.warn({ err: e, pid }, 'signal failed');
        }
      }
    }
  }

  /** WaitProcess: the exit status; an exec whose output is fully read is forgotten afterwards. */
  async wait(execId: string, signal: AbortSignal): Promise<number> {
    const p = this.process(execId);
    const code = await Promise.race([
      p.exited,
      new Promise<never>((_r, reject) => {
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      }),
    ]);
    p.waited = true;
    this.reapExec(p);
    return code;
  }

  /** Drops an exec once it was waited for and its output streams reached their end. */
  reapExec(p: ContainerProcess): void {
    if (!p.execId || !p.waited || !p.stdout.done || !p.stderr.done) return;
    if (this.execs.get(p.execId) !== p) return;
    this.execs.delete(p.execId);
    p.dispose();
    p.log.debug('exec forgotten');
  }

  async pause(): Promise<void> {
    if (this.status !== 'running') throw precondition(`container ${this.id} is ${this.status}: cannot pause`);
    await this.crun.pause(this.id);
    this.status = 'paused';
  }

  async resume(): Promise<void> {
    if (this.status !== 'paused') throw precondition(`container ${this.id} is ${this.status}: cannot resume`);
    await this.crun.resume(this.id);
    this.status = 'running';
  }

  async update(res: grpc.LinuxResources): Promise<void> {
    if (this.status === 'stopped') throw precondition(`container ${this.id} is stopped: cannot update`);
    await this.crun.update(this.id, resourcesToOci(res), path.join(this.bundle, `resources-${Date.now()}.json`));
  }

  stats(): Init<grpc.StatsContainerResponse> {
    return { cgroup_stats: this.cgroup.stats(), network_stats: this.init.running ? netStats(this.init.pid) : [] };
  }

  /** RemoveContainer's work: kill, delete, unmount, forget. */
  remove(): Promise<void> {
    this.removing ??= (async () => {
      if (this.crunCreated) {
        const runsHooks = { runsHooks: this.hooks.poststop };
        await this.crun.delete(this.id, true, runsHooks).catch(async (e: TtrpcError) => {
          // Already gone is fine; anything else is worth one more try after a kill.
          if (e.code === Code.NotFound) return;
          this.init.signal(SIGKILL);
          await this.crun.delete(this.id, true, runsHooks);
        });
        await Promise.race([this.init.exited, new Promise((r) => setTimeout(r, 10_000))]);
      }
      await this.cleanup();
      this.sandbox.containers.delete(this.id);
      this.log.info('container removed');
    })();
    return this.removing;
  }

  /** Undoes create: processes, OOM watch, rootfs, storages, bundle, cgroup parents. */
  async cleanup(): Promise<void> {
    for (const p of this.execs.values()) p.dispose();
    this.execs.clear();
    this.init?.dispose();
    this.oom?.stop();
    this.oom = undefined;
    const rootfs = path.join(this.bundle, 'rootfs');
    if (this.rootfsMounted || isMounted(rootfs)) {
      await umount(rootfs).catch(() => umount(rootfs, true));
      this.rootfsMounted = false;
    }
    await this.sandbox.releaseStorages(this.storageMounts);
    this.storageMounts = [];
    fs.rmSync(this.bundle, { recursive: true, force: true });
    // The files a host without a shared filesystem copied in for it.
    if (this.sandbox.copiedDirs.delete(this.id)) {
      try {
        removeCopies(this.id, this.sandbox.config.copyRoot, this.sandbox.config.stateDir);
      } catch (err) {
        this.log.warn({ err }, 'removing the files copied in for the container failed');
      }
    }
    fs.rmSync(consoleSocketDir(this.sandbox.config.stateDir, this.id), { recursive: true, force: true });
    if (this.ownCgroupPath) removeCgroupParents(this.sandbox.config.cgroups, this.cgroup.cgPath);
    this.status = 'stopped';
  }
}

/** Console sockets live under a short path: sun_path holds only 108 bytes. */
const h16 = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 16);

function consoleSocketDir(stateDir: string, cid: string): string {
  const dir = path.join(stateDir, 'cs', h16(cid));
  return Buffer.byteLength(dir) + 22 <= 107 ? dir : path.join(os.tmpdir(), 'katats-cs', h16(`${stateDir}\0${cid}`));
}

function consoleSocketPath(stateDir: string, cid: string, name: string): string {
  const dir = consoleSocketDir(stateDir, cid);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  return path.join(dir, `${h16(name)}.sock`);
}

export type { OciSpec };
