// A private containerd for tests and benchmarks: its own root, state, gRPC and ttrpc sockets and
// config (written with smol-toml), CRI off unless asked (then with a locally built pause image,
// CNI dirs of its own and host-network pods in mind), the default overlayfs snapshotter, and
// runtimes registered by name. Works with bookworm's containerd 1.6 (the installed package) and with
// sid's or trixie's (2.x, 1.7) unpacked from their .debs. stop() leaves nothing behind: no process
// of its namespace (shims, containers, runsc sandboxes), no mount, no socket, no directory.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { stringify } from 'smol-toml';
import { run, runOk, type RunOptions, type RunResult } from './exec.js';
import { unpackDeb } from './debs.js';
import { cniBridgesOf, removeCniBridge, setupCniNetworks, type CniNetwork } from './cni.js';
import { fileLogger, type FileLogger, type Logger } from './log.js';
import { unmountUnder, mountsUnder } from './mounts.js';
import { killMatching, openPaths, procsMatching, type ProcInfo } from './procs.js';
import { CriClient } from './cri.js';
import { pauseImage, PAUSE_IMAGE, PAUSE_INDEX } from './images/pause.js';
import { ociArch } from './images/oci.js';
import { OVERHEAD_ROOT } from '../shim/sandbox-cgroups.js';

/** Where the containerd binaries come from: the installed Debian package (bookworm), or a newer suite's .deb unpacked. */
export type ContainerdFlavor = 'bookworm' | 'trixie' | 'sid';

export interface ContainerdBinaries {
  flavor: ContainerdFlavor;
  containerd: string;
  ctr: string;
  /** Holds containerd, ctr and containerd-shim-runc-v2 of this flavor: first on containerd's PATH. */
  binDir: string;
  /** e.g. 1.6.20~ds1 or 2.1.9+unknown */
  version: string;
  major: number;
}

/** The containerd namespace CRI keeps its pods, containers and images in. */
export const CRI_NAMESPACE = 'k8s.io';

/** The runc shim's runtime type: runtimes of this type take `--runc-binary` and `--runc-root`. */
export const RUNC_V2 = 'io.containerd.runc.v2';

export interface RuntimeRegistration {
  /** Short name tests and benchmarks use: `runc`, `runsc`, `katats`. */
  name: string;
  /** containerd's runtime name: `io.containerd.runc.v2`, `io.containerd.katats.v2`. */
  runtimeType: string;
  /** A shim binary for a non-runc runtime: linked into containerd's PATH as containerd-shim-<x>-<v>. */
  shimBinary?: string;
  /** For a runtime of type io.containerd.runc.v2: the runc-compatible binary (e.g. the runsc wrapper). */
  runcBinary?: string;
  /** Extra options for CRI's runtime table (only written when CRI is on). */
  options?: Record<string, unknown>;
  /** The snapshotter CRI uses for this runtime handler's pods (containerd 1.7+; CRI only). */
  snapshotter?: string;
  /** Pod annotation keys (globs) CRI passes to this runtime's specs, e.g. `io.katacontainers.*` (CRI only). */
  podAnnotations?: string[];
}

/** A proxy plugin containerd calls over gRPC: `[proxy_plugins.<name>] type = "snapshot" address = ...`. */
export interface ProxyPlugin {
  name: string;
  type: 'snapshot' | 'content';
  /** Its unix socket. */
  address: string;
}

export interface ContainerdOptions {
  flavor?: ContainerdFlavor;
  /** Binaries already resolved with containerdBinaries() (wins over flavor). */
  binaries?: ContainerdBinaries;
  /** Registered in addition to `runc` (io.containerd.runc.v2), which is always there. */
  runtimes?: RuntimeRegistration[];
  /**
   * Keep the CRI plugin (default off). Its sandbox image is the locally built pause image
   * (harness/images/pause.ts), imported into the k8s.io namespace by startContainerd; CNI looks for
   * configs and plugins inside the instance dir only, so pods meant to run are host-network pods.
   */
  cri?: boolean;
  /**
   * With cri: a bridge network of its own for the pods (harness/cni.ts), so pods that are not
   * host-network get an address on this machine; the bridge goes with stop().
   */
  cni?: boolean;
  /**
   * With cni: 2 gives every pod a second network (eth1 on a second bridge, containerd's
   * max_conf_num = 2), as a pod with two CNI networks has. Default 1.
   */
  cniNetworks?: 1 | 2;
  /** Default: a fresh `katats-<hex>` (unique, so runc state, cgroups and shims of two instances never mix). */
  namespace?: string;
  /** Parent of the instance dir (default os.tmpdir()). Unix socket paths must stay short: keep it short. */
  baseDir?: string;
  /** containerd.log and harness.log go here (default: inside the instance dir, removed by stop()). */
  logDir?: string;
  /** containerd's own log level (default info). */
  logLevel?: string;
  onProgress?: (line: string) => void;
  startTimeoutMs?: number;
  /** Proxy plugins (a snapshotter of our own, for one). */
  proxyPlugins?: ProxyPlugin[];
  /**
   * CRI passes the layer labels (containerd.io/snapshot/cri.layer-digest, ...) to snapshotters
   * when this is false (its default is true); with CRI only.
   */
  disableSnapshotAnnotations?: boolean;
  /**
   * The snapshotter CRI uses for every pod (default overlayfs); containerd 1.6, which has no
   * per-handler snapshotter, needs this to run CRI pods on a proxy snapshotter. With CRI only.
   */
  criSnapshotter?: string;
}

export interface CtrOptions extends RunOptions {
  /** containerd namespace for this call (default: the instance's own). */
  namespace?: string;
}

export interface StopReport {
  /** Processes that stop() had to kill (shims, containers, runsc sandboxes): empty after a clean run. */
  killed: ProcInfo[];
  /** Mounts that stop() had to remove: empty after a clean run. */
  unmounted: string[];
  /** Tasks that were still present and removed with `ctr task rm -f`. */
  tasksRemoved: string[];
  /** CRI pod sandboxes that were still present and stopped and removed through CRI. */
  podsRemoved: string[];
}

const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const INSTANCE_PREFIX = 'katats-ctrd-';

async function versionOf(containerd: string): Promise<string> {
  // "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
  // "containerd github.com/containerd/containerd/v2 2.1.9+unknown "
  const out = (await runOk(containerd, ['--version'], { timeoutMs: 20_000 })).stdout.trim().split(/\s+/);
  return out[2] ?? 'unknown';
}

/** Resolves the binaries of a flavor: bookworm's are the installed package; the others are fetched and unpacked (cached). */
export async function containerdBinaries(flavor: ContainerdFlavor = 'bookworm', opts: { onProgress?: (line: string) => void } = {}): Promise<ContainerdBinaries> {
  let binDir: string;
  if (flavor === 'bookworm') {
    binDir = '/usr/bin';
    if (!fs.existsSync(path.join(binDir, 'containerd'))) throw new Error('containerd is not installed (apt-get install containerd; scripts/setup.sh does it)');
  } else {
    const deb = await unpackDeb('containerd', { suite: flavor, onProgress: opts.onProgress });
    binDir = path.join(deb.dir, 'usr', 'bin');
  }
  const containerd = path.join(binDir, 'containerd');
  const version = await versionOf(containerd);
  return { flavor, containerd, ctr: path.join(binDir, 'ctr'), binDir, version, major: Number(version.split('.')[0]) || 0 };
}

/** containerd's naming rule: io.containerd.katats.v2 -> containerd-shim-katats-v2. */
export function shimBinaryName(runtimeType: string): string {
  const parts = runtimeType.split('.');
  if (parts.length < 2) throw new Error(`runtime type ${runtimeType}: expected io.containerd.<name>.<version>`);
  return `containerd-shim-${parts[parts.length - 2]}-${parts[parts.length - 1]}`;
}

/** The config TOML: version 2 for containerd 1.x, version 3 for 2.x. */
export function containerdConfig(c: {
  major: number;
  root: string;
  state: string;
  address: string;
  ttrpcAddress: string;
  cri: boolean;
  runtimes: RuntimeRegistration[];
  logLevel: string;
  /** With cri: the pod sandbox image (default PAUSE_IMAGE) and the CNI dirs (default inside root). */
  sandboxImage?: string;
  cniConfDir?: string;
  cniBinDir?: string;
  /** How many of the conf dir's networks CRI attaches a pod to (default 1). */
  cniMaxConf?: number;
  proxyPlugins?: ProxyPlugin[];
  disableSnapshotAnnotations?: boolean;
  criSnapshotter?: string;
}): string {
  const criPlugins = c.major >= 2 ? ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.runtime', 'io.containerd.cri.v1.images'] : ['io.containerd.grpc.v1.cri'];
  const disabled = [...(c.cri ? [] : criPlugins), 'io.containerd.nri.v1.nri'];
  const plugins: Record<string, unknown> = {
    // Its default is /opt/containerd: keep it inside our root.
    'io.containerd.internal.v1.opt': { path: path.join(c.root, 'opt') },
  };
  if (c.cri) {
    const table: Record<string, unknown> = {};
    for (const r of c.runtimes) {
      const options: Record<string, unknown> = { ...r.options };
      if (r.runcBinary) options.BinaryName = r.runcBinary;
      table[r.name] = {
        runtime_type: r.runtimeType,
        ...(r.snapshotter ? { snapshotter: r.snapshotter } : {}),
        ...(r.podAnnotations ? { pod_annotations: r.podAnnotations } : {}),
        ...(Object.keys(options).length ? { options } : {}),
      };
    }
    const sandboxImage = c.sandboxImage ?? PAUSE_IMAGE;
    // Never /etc/cni/net.d or /opt/cni/bin: a host's networks are not ours to use.
    const cni = { conf_dir: c.cniConfDir ?? path.join(c.root, 'cni', 'net.d'), bin_dir: c.cniBinDir ?? path.join(c.root, 'cni', 'bin'), max_conf_num: c.cniMaxConf ?? 1 };
    const runtime = {
      // No AppArmor, no SELinux here; with AppArmor on, containerd would load its own profile.
      disable_apparmor: true,
      enable_selinux: false,
      // Without CAP_SYS_RESOURCE (containers, nested sandboxes) the sandbox's oom_score_adj of -998
      // cannot be set: cap it at containerd's own instead of failing every pod.
      restrict_oom_score_adj: true,
      // Pod network namespaces inside the instance's state dir, where stop() finds them.
      netns_mounts_under_state_dir: true,
      cni,
      containerd: {
        snapshotter: c.criSnapshotter ?? 'overlayfs',
        default_runtime_name: 'runc',
        runtimes: table,
        ...(c.disableSnapshotAnnotations !== undefined ? { disable_snapshot_annotations: c.disableSnapshotAnnotations } : {}),
      },
    };
    // The streaming server (exec/attach/port-forward URLs) on loopback, a free port.
    const streaming = { stream_server_address: '127.0.0.1', stream_server_port: '0', disable_tcp_service: true };
    if (c.major >= 2) {
      const { containerd, cni: { bin_dir, ...cniRest }, ...rest } = runtime;
      // 2.x reads a list of plugin dirs (bin_dirs); its bin_dir is deprecated.
      const cni2 = { ...cniRest, bin_dirs: [bin_dir] };
      plugins['io.containerd.cri.v1.runtime'] = { ...rest, cni: cni2, containerd: { default_runtime_name: containerd.default_runtime_name, runtimes: table } };
      plugins['io.containerd.cri.v1.images'] = {
        snapshotter: containerd.snapshotter,
        pinned_images: { sandbox: sandboxImage },
        ...(containerd.disable_snapshot_annotations !== undefined ? { disable_snapshot_annotations: containerd.disable_snapshot_annotations } : {}),
      };
      plugins['io.containerd.grpc.v1.cri'] = streaming;
    } else {
      plugins['io.containerd.grpc.v1.cri'] = { ...runtime, ...streaming, sandbox_image: sandboxImage };
    }
  }
  const proxy: Record<string, unknown> = {};
  for (const p of c.proxyPlugins ?? []) proxy[p.name] = { type: p.type, address: p.address };
  // containerd 2.x's transfer service (ctr images import/pull) unpacks only into the snapshotters
  // its unpack_config names; naming any replaces the default (overlayfs), so that one is kept.
  const snapshotProxies = (c.proxyPlugins ?? []).filter((p) => p.type === 'snapshot');
  if (c.major >= 2 && snapshotProxies.length) {
    const platform = `linux/${ociArch()}`;
    plugins['io.containerd.transfer.v1.local'] = {
      unpack_config: [{ platform, snapshotter: 'overlayfs' }, ...snapshotProxies.map((p) => ({ platform, snapshotter: p.name }))],
    };
  }
  return stringify({
    version: c.major >= 2 ? 3 : 2,
    root: c.root,
    state: c.state,
    disabled_plugins: disabled,
    grpc: { address: c.address },
    ttrpc: { address: c.ttrpcAddress },
    debug: { level: c.logLevel },
    metrics: { address: '' },
    ...(Object.keys(proxy).length ? { proxy_plugins: proxy } : {}),
    plugins,
  });
}

export class Containerd {
  readonly runtimes = new Map<string, RuntimeRegistration>();
  /** pino, to harness.log in logDir. */
  readonly logger: Logger;
  private stopped = false;
  private criClient: CriClient | undefined;
  /** Whether the CRI plugin is on (startContainerd's `cri`). */
  cri = false;
  /** The pods' bridge network (startContainerd with cni): eth0's. */
  cniNetwork: CniNetwork | undefined;
  /** All of them (cniNetworks: 2 adds eth1's). */
  cniNetworks: CniNetwork[] = [];

  constructor(
    readonly dir: string,
    readonly binaries: ContainerdBinaries,
    readonly namespace: string,
    readonly logDir: string,
    private readonly log: FileLogger,
    private proc: ChildProcess,
    runtimes: RuntimeRegistration[],
  ) {
    this.logger = log.logger;
    for (const r of runtimes) this.runtimes.set(r.name, r);
  }

  get root(): string {
    return path.join(this.dir, 'root');
  }
  get state(): string {
    return path.join(this.dir, 'state');
  }
  get address(): string {
    return path.join(this.dir, 'c.sock');
  }
  get ttrpcAddress(): string {
    return path.join(this.dir, 'c.sock.ttrpc');
  }
  get configFile(): string {
    return path.join(this.dir, 'config.toml');
  }
  get logFile(): string {
    return path.join(this.logDir, 'containerd.log');
  }
  get pid(): number {
    return this.proc.pid ?? 0;
  }
  /**
   * Where the shim of container `id` listens: containerd (1.6 and 2.x alike) names it
   * /run/containerd/s/<sha256 of "ADDRESS/NAMESPACE/ID">. A shim that is killed leaves it behind.
   */
  shimSocketPath(id: string, namespace = this.namespace): string {
    return path.join('/run/containerd/s', createHash('sha256').update(path.join(this.address, namespace, id)).digest('hex'));
  }

  /** Stops and removes every CRI pod (its containers go with it); returns their ids. Bounded in time. */
  private async removeCriPods(): Promise<string[]> {
    const cri = this.criApi();
    const removed: string[] = [];
    try {
      const { items } = await cri.runtime.ListPodSandbox({}, { timeoutMs: 15_000 });
      for (const pod of items) {
        try {
          await cri.runtime.StopPodSandbox({ pod_sandbox_id: pod.id }, { timeoutMs: 120_000 });
          await cri.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id }, { timeoutMs: 60_000 });
          removed.push(pod.id);
        } catch (err) {
          this.logger.warn({ err, pod: pod.id }, 'CRI could not remove a pod; the forceful path follows');
        }
      }
    } catch (err) {
      this.logger.warn({ err }, 'CRI did not list its pods; the forceful path follows');
    }
    if (removed.length) this.logger.warn({ pods: removed }, 'removed CRI pods left running');
    return removed;
  }

  /** The directory the runc shim keeps runc's (or runsc's) state in for runtime `name`. */
  runcRoot(name: string): string {
    return path.join(this.dir, 'runc', name);
  }

  /**
   * `ctr --address SOCK --namespace NS ARGS...` with this flavor's ctr; never throws for a non-zero
   * exit. NS is this instance's namespace unless `opts.namespace` names another (CRI_NAMESPACE).
   */
  ctr(args: string[], opts: CtrOptions = {}): Promise<RunResult> {
    const { namespace = this.namespace, ...runOpts } = opts;
    this.logger.debug({ args, namespace }, 'ctr');
    return run(this.binaries.ctr, ['--address', this.address, '--namespace', namespace, ...args], { timeoutMs: 120_000, ...runOpts });
  }

  /** The CRI client of this instance (one per instance, closed by stop()); only with `cri: true`. */
  criApi(): CriClient {
    if (!this.cri) throw new Error('this containerd runs without CRI (startContainerd({ cri: true }))');
    this.criClient ??= new CriClient(this.address);
    return this.criClient;
  }

  /** ctr() that rejects (with ctr's stderr) unless it exits 0. */
  async ctrOk(args: string[], opts: CtrOptions = {}): Promise<RunResult> {
    const r = await this.ctr(args, opts);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')}: exit ${r.code ?? r.signal}: ${(r.stderr || r.stdout).trim().slice(-2000)}`);
    return r;
  }

  /** Starts ctr without waiting (stdio piped), for callers that time output and exit themselves. */
  ctrSpawn(args: string[]): ChildProcess {
    this.logger.debug({ args }, 'ctr spawn');
    return spawn(this.binaries.ctr, ['--address', this.address, '--namespace', this.namespace, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** The `ctr run` flags selecting registered runtime `name` (--runtime, and for runc-shim runtimes --runc-root/--runc-binary). */
  runtimeArgs(name: string): string[] {
    const r = this.runtimes.get(name);
    if (!r) throw new Error(`runtime ${name} is not registered (have ${[...this.runtimes.keys()].join(', ')})`);
    const args = ['--runtime', r.runtimeType];
    if (r.runtimeType === RUNC_V2) {
      args.push('--runc-root', this.runcRoot(name));
      if (r.runcBinary) args.push('--runc-binary', r.runcBinary);
    }
    return args;
  }

  /**
   * Imports an OCI archive; `indexName` names the image that keeps the index (`--index-name`), besides
   * the name in the index's `io.containerd.image.name` annotation (which names the manifest). The flags
   * are the same on 1.6 and 2.x (2.x goes through the transfer service unless `--local`, which 1.6
   * lacks). On 1.6 `indexName` must differ from the annotation's name, or the import fails with
   * "content digest ...: not found".
   */
  async importImage(archive: string, indexName?: string, opts: { namespace?: string } = {}): Promise<void> {
    await this.ctrOk(['images', 'import', ...(indexName ? ['--index-name', indexName] : []), archive], { timeoutMs: 300_000, namespace: opts.namespace });
  }

  /** Image names known to this containerd. */
  async images(): Promise<string[]> {
    const r = await this.ctrOk(['images', 'ls', '-q']);
    return r.stdout.split('\n').filter(Boolean);
  }

  /** What this instance has on the host now beyond containerd itself: processes of its namespace and mounts under its dir. */
  leftovers(): { procs: ProcInfo[]; mounts: string[] } {
    const procs = procsMatching(this.needles()).filter((p) => p.pid !== this.pid);
    return { procs, mounts: mountsUnder(this.dir) };
  }

  private needles(): string[] {
    // Shims carry `-address <our socket>`; runc/runsc processes name our runc roots or bundles (under state/).
    return [`-address ${this.address}`, this.dir + '/'];
  }

  private containerdAlive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /**
   * Removes remaining tasks and containers, stops containerd, kills what is left of its namespace,
   * unmounts, removes its dirs. Logs kept inside the instance dir are copied to keepLogsIn first.
   */
  /**
   * Restarts containerd alone (SIGTERM, wait, spawn again with the same config and environment):
   * shims and their tasks keep running, as on a node whose containerd is upgraded.
   */
  async restart(timeoutMs = 30_000): Promise<void> {
    if (this.containerdAlive()) {
      const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
      this.proc.kill('SIGTERM');
      await exited;
    }
    const out = fs.openSync(this.logFile, 'a');
    this.proc = spawn(this.binaries.containerd, ['--config', this.configFile], { stdio: ['ignore', out, out], env: this.spawnEnv });
    fs.closeSync(out);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.ctr(['version'], { timeoutMs: 5_000 });
      if (r.code === 0) return;
      if (Date.now() > deadline || this.proc.exitCode !== null) throw new Error(`containerd did not come back after restart: ${r.stderr.trim()}`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  /** The environment containerd was started with (set by startContainerd, reused by restart). */
  spawnEnv: NodeJS.ProcessEnv = process.env;

  async stop(opts: { keepLogsIn?: string } = {}): Promise<StopReport> {
    const report: StopReport = { killed: [], unmounted: [], tasksRemoved: [], podsRemoved: [] };
    if (this.stopped) return report;
    this.stopped = true;
    // 1. The gentle path: pods through CRI (which also unmounts their shm and removes their netns),
    // then tasks and containers through containerd (bounded in time).
    const ids = new Set<string>();
    if (this.containerdAlive() && this.cri) report.podsRemoved = await this.removeCriPods();
    this.criClient?.close();
    if (this.containerdAlive()) {
      for (const namespace of this.cri ? [this.namespace, CRI_NAMESPACE] : [this.namespace]) {
        const tasks = await this.ctr(['tasks', 'ls', '-q'], { timeoutMs: 15_000, namespace });
        for (const id of tasks.code === 0 ? tasks.stdout.split('\n').filter(Boolean) : []) {
          ids.add(id);
          await this.ctr(['tasks', 'rm', '-f', id], { timeoutMs: 15_000, namespace });
          report.tasksRemoved.push(id);
        }
        const cs = await this.ctr(['containers', 'ls', '-q'], { timeoutMs: 15_000, namespace });
        for (const id of cs.code === 0 ? cs.stdout.split('\n').filter(Boolean) : []) {
          ids.add(id);
          await this.ctr(['containers', 'rm', id], { timeoutMs: 15_000, namespace });
        }
      }
    }
    // Shim sockets live in /run/containerd/s; the bundles name them.
    for (const id of bundleIds(this.state)) ids.add(id);
    const shimSockets = [
      ...bundleShimSockets(this.state),
      ...[...ids].flatMap((id) => [this.shimSocketPath(id), ...(this.cri ? [this.shimSocketPath(id, CRI_NAMESPACE)] : [])]),
    ];
    // 2. containerd itself: SIGTERM, then SIGKILL after 10 s.
    if (this.containerdAlive()) {
      const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    // 3. Whatever survived: shims of our socket, their children, runsc sandboxes and gofers of our roots.
    report.killed = await killMatching(this.needles());
    if (report.killed.length) this.logger.warn({ killed: report.killed }, 'killed leftover processes');
    // 4. Mounts, cgroups, sockets, dirs, the pods' bridge.
    report.unmounted = await unmountUnder(this.dir);
    for (const n of this.cniNetworks) await removeCniBridge(n.bridge).catch((err: unknown) => this.logger.warn({ err, bridge: n.bridge }, 'removing the CNI bridge failed'));
    if (report.unmounted.length) this.logger.warn({ unmounted: report.unmounted }, 'unmounted leftovers');
    if (!(await removeNamespaceCgroups(this.namespace))) this.logger.warn({ namespace: this.namespace }, 'cgroups of the namespace could not all be removed');
    for (const s of shimSockets) fs.rmSync(s, { force: true });
    removeStaleFifos(ids);
    removeOverheadCgroups(ids);
    fs.rmSync(path.join('/run/containerd/runc', this.namespace), { recursive: true, force: true });
    pruneRunDirs();
    this.logger.info(report.killed.length || report.unmounted.length ? 'stopped with leftovers' : 'stopped cleanly');
    this.log.close();
    if (opts.keepLogsIn && this.logDir.startsWith(this.dir + '/')) fs.cpSync(this.logDir, opts.keepLogsIn, { recursive: true });
    fs.rmSync(this.dir, { recursive: true, force: true });
    return report;
  }

}

/**
 * ctr makes a FIFO dir per task under /run/containerd/fifo (`<id>-stdin`, `<id>-stdout`, `<id>-stderr`);
 * a task that is never deleted through containerd leaves it. Removes the dirs that hold only FIFOs of
 * the given container ids and that no process has open.
 */
export function removeStaleFifos(ids: Iterable<string>, fifoRoot = '/run/containerd/fifo'): string[] {
  const names = new Set<string>();
  for (const id of ids) for (const s of ['stdin', 'stdout', 'stderr']) names.add(`${id}-${s}`);
  const removed: string[] = [];
  let dirs: string[];
  try {
    dirs = fs.readdirSync(fifoRoot);
  } catch {
    return removed;
  }
  const open = openPaths();
  for (const d of dirs) {
    const dir = path.join(fifoRoot, d);
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch {
      continue;
    }
    if (!entries.length || !entries.every((e) => names.has(e))) continue;
    if (entries.some((e) => open.has(path.join(dir, e)))) continue;
    fs.rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/** Container ids that have a bundle under the state dir (state/<runtime>/<ns>/<id>). */
export function bundleIds(stateDir: string): string[] {
  const ids: string[] = [];
  try {
    for (const rt of fs.readdirSync(stateDir)) {
      for (const ns of fs.readdirSync(path.join(stateDir, rt))) ids.push(...fs.readdirSync(path.join(stateDir, rt, ns)));
    }
  } catch {
    /* no bundles */
  }
  return ids;
}

/**
 * Shims and ctr make /run/containerd/{s,fifo,runc} (and /run/containerd) whatever containerd's own
 * root is. Removes those that are empty, deepest first: a dir still in use by another instance is
 * not empty, and shims and ctr recreate them (MkdirAll) right before use.
 */
export function pruneRunDirs(): void {
  for (const d of ['/run/containerd/fifo', '/run/containerd/s', '/run/containerd/runc', '/run/containerd']) {
    try {
      fs.rmdirSync(d);
    } catch {
      /* not empty, or gone */
    }
  }
}

/** Shim sockets named by the bundles' `address` (1.x) or `bootstrap.json` (2.x) files. */
export function bundleShimSockets(stateDir: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, depth: number) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory() && depth < 3) walk(p, depth + 1); // state/<runtime>/<ns>/<id>/, not into rootfs/
      else if (e.isFile() && (e.name === 'address' || e.name === 'bootstrap.json')) {
        const text = fs.readFileSync(p, 'utf8');
        for (const m of text.matchAll(/unix:\/\/(\/[^"\s]+)/g)) out.push(m[1]!);
      }
    }
  };
  walk(stateDir, 0);
  return out.filter((s) => s.startsWith('/run/containerd/s/'));
}

/**
 * A katats shim keeps its pod's VMM in katats_overhead/<sandbox id> and removes it when the pod
 * ends; a shim killed with its test (a run stopped by force) cannot. Removes those of these ids
 * that are empty (a live pod's holds processes: rmdir refuses it).
 */
export function removeOverheadCgroups(ids: Iterable<string>): void {
  let roots: string[];
  try {
    roots = fs.readdirSync('/sys/fs/cgroup').map((c) => path.join('/sys/fs/cgroup', c, OVERHEAD_ROOT));
  } catch {
    return;
  }
  roots.push(path.join('/sys/fs/cgroup', OVERHEAD_ROOT));
  for (const id of ids) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(id)) continue;
    for (const r of roots) {
      try {
        fs.rmdirSync(path.join(r, id));
      } catch {
        /* absent, or not empty */
      }
    }
  }
}

/**
 * runc makes /sys/fs/cgroup/<controller>/<namespace>/<id>; the namespace level stays after the
 * containers go. Removes it (deepest first, retried while the last processes exit). Returns false
 * when some of it could not be removed.
 */
export async function removeNamespaceCgroups(namespace: string): Promise<boolean> {
  const roots = ['/sys/fs/cgroup'];
  try {
    for (const c of fs.readdirSync('/sys/fs/cgroup')) roots.push(path.join('/sys/fs/cgroup', c));
  } catch {
    return true;
  }
  for (let attempt = 0; attempt < 20; attempt++) {
    let left = 0;
    for (const r of roots) {
      const nsDir = path.join(r, namespace);
      if (!fs.existsSync(nsDir)) continue;
      const dirs: string[] = [];
      const walk = (d: string) => {
        dirs.push(d);
        for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name));
      };
      try {
        walk(nsDir);
      } catch {
        continue;
      }
      for (const d of dirs.sort((x, y) => y.length - x.length)) {
        try {
          fs.rmdirSync(d);
        } catch {
          left++;
        }
      }
    }
    if (!left) return true;
    await new Promise((res) => setTimeout(res, 100));
  }
  return false;
}

/** Kills containerd instances (and their namespaces' processes) left by test processes that died without stop(). */
export async function reapStaleInstances(baseDir = os.tmpdir()): Promise<string[]> {
  const reaped: string[] = [];
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(baseDir).filter((e) => e.startsWith(INSTANCE_PREFIX));
  } catch {
    return reaped;
  }
  for (const e of entries) {
    const dir = path.join(baseDir, e);
    let owner = NaN;
    try {
      owner = Number(fs.readFileSync(path.join(dir, 'owner'), 'utf8'));
    } catch {
      /* no owner file: being created, or not ours */
      continue;
    }
    try {
      process.kill(owner, 0);
      continue; // the owner still runs
    } catch {
      /* dead owner */
    }
    const sockets = bundleShimSockets(path.join(dir, 'state'));
    const ids = bundleIds(path.join(dir, 'state'));
    await killMatching([dir + '/']);
    await unmountUnder(dir);
    for (const s of sockets) fs.rmSync(s, { force: true });
    removeStaleFifos(ids);
    pruneRunDirs();
    removeOverheadCgroups(ids);
    try {
      await removeNamespaceCgroups(fs.readFileSync(path.join(dir, 'namespace'), 'utf8').trim());
    } catch {
      /* no namespace recorded */
    }
    for (const bridge of cniBridgesOf(path.join(dir, 'root', 'cni', 'net.d'))) await removeCniBridge(bridge).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
    reaped.push(dir);
  }
  return reaped;
}

/** Starts a private containerd and waits until it answers `ctr version`. */
export async function startContainerd(opts: ContainerdOptions = {}): Promise<Containerd> {
  await reapStaleInstances(opts.baseDir);
  const binaries = opts.binaries ?? (await containerdBinaries(opts.flavor ?? 'bookworm', { onProgress: opts.onProgress }));
  const dir = fs.mkdtempSync(path.join(opts.baseDir ?? os.tmpdir(), INSTANCE_PREFIX));
  fs.writeFileSync(path.join(dir, 'owner'), String(process.pid));
  const namespace = opts.namespace ?? `katats-${randomBytes(4).toString('hex')}`;
  fs.writeFileSync(path.join(dir, 'namespace'), namespace);
  const logDir = opts.logDir ?? path.join(dir, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  const log = fileLogger(path.join(logDir, 'harness.log'), 'containerd-harness');
  const logger = log.logger;
  const runtimes: RuntimeRegistration[] = [{ name: 'runc', runtimeType: RUNC_V2 }, ...(opts.runtimes ?? [])];
  const names = new Set<string>();
  for (const r of runtimes) {
    if (names.has(r.name)) throw new Error(`runtime ${r.name} registered twice`);
    names.add(r.name);
  }
  // Non-runc shims are found by containerd on its PATH: link them into the instance's bin/.
  const binDir = path.join(dir, 'bin');
  fs.mkdirSync(binDir);
  for (const r of runtimes) {
    if (r.shimBinary) {
      // Several handlers may share one runtime type (and shim), differing in their options.
      const link = path.join(binDir, shimBinaryName(r.runtimeType));
      const target = path.resolve(r.shimBinary);
      if (!fs.existsSync(link)) fs.symlinkSync(target, link);
      else if (fs.readlinkSync(link) !== target) throw new Error(`runtime type ${r.runtimeType} registered with two shim binaries`);
    }
    if (r.runtimeType === RUNC_V2) fs.mkdirSync(path.join(dir, 'runc', r.name), { recursive: true });
  }
  const cfg = {
    major: binaries.major,
    root: path.join(dir, 'root'),
    state: path.join(dir, 'state'),
    address: path.join(dir, 'c.sock'),
    ttrpcAddress: path.join(dir, 'c.sock.ttrpc'),
    cri: opts.cri ?? false,
    runtimes,
    logLevel: opts.logLevel ?? 'info',
    proxyPlugins: opts.proxyPlugins,
    disableSnapshotAnnotations: opts.disableSnapshotAnnotations,
    criSnapshotter: opts.criSnapshotter,
    cniMaxConf: opts.cni ? (opts.cniNetworks ?? 1) : 1,
  };
  let cniNetworks: CniNetwork[] = [];
  if (cfg.cri) {
    for (const d of ['net.d', 'bin']) fs.mkdirSync(path.join(cfg.root, 'cni', d), { recursive: true });
    if (opts.cni) {
      const c = path.join(cfg.root, 'cni');
      cniNetworks = await setupCniNetworks({ confDir: path.join(c, 'net.d'), binDir: path.join(c, 'bin'), dataDir: path.join(c, 'ipam'), namespace, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) }, opts.cniNetworks ?? 1);
    }
  }
  fs.writeFileSync(path.join(dir, 'config.toml'), containerdConfig(cfg));
  const out = fs.openSync(path.join(logDir, 'containerd.log'), 'a');
  const spawnEnv = { ...process.env, PATH: `${binDir}:${binaries.binDir}:${process.env.PATH ?? ''}:${SYSTEM_PATH}` };
  const proc = spawn(binaries.containerd, ['--config', path.join(dir, 'config.toml')], { stdio: ['ignore', out, out], env: spawnEnv });
  fs.closeSync(out);
  const cd = new Containerd(dir, binaries, namespace, logDir, log, proc, runtimes);
  cd.spawnEnv = spawnEnv;
  cd.cri = cfg.cri;
  cd.cniNetwork = cniNetworks[0];
  cd.cniNetworks = cniNetworks;
  logger.info({ dir, namespace, version: binaries.version, flavor: binaries.flavor, runtimes }, 'starting containerd');
  // Wait until it answers (or dies).
  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  let last = '';
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      const tail = fs.readFileSync(cd.logFile, 'utf8').slice(-2000);
      await cd.stop();
      throw new Error(`containerd ${binaries.version} exited at start (${proc.exitCode ?? proc.signalCode}): ${tail}`);
    }
    if (fs.existsSync(cd.address)) {
      const r = await cd.ctr(['version'], { timeoutMs: 5_000 });
      if (r.code === 0) break;
      last = r.stderr.trim();
    }
    if (Date.now() > deadline) {
      await cd.stop();
      throw new Error(`containerd ${binaries.version} did not answer within ${opts.startTimeoutMs ?? 30_000} ms: ${last}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  logger.info({ pid: cd.pid }, 'containerd answers');
  if (cfg.cri) {
    try {
      // RunPodSandbox would try to pull the sandbox image from a registry if it were missing.
      const pause = await pauseImage({ onProgress: opts.onProgress });
      await cd.importImage(pause.archive, PAUSE_INDEX, { namespace: CRI_NAMESPACE });
      const v = await cd.criApi().waitReady(Math.max(0, deadline - Date.now()) + 10_000);
      await cd.criApi().waitForImage(pause.name);
      logger.info({ runtime: v.runtime_name, version: v.runtime_version, api: v.runtime_api_version, sandboxImage: pause.name }, 'CRI answers');
    } catch (e) {
      await cd.stop();
      throw e;
    }
  }
  return cd;
}
