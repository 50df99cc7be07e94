// containerd.task.v2.Task for katats: containerd's view of tasks, mapped onto one sandbox VM per
// shim (one per pod) and the agent inside it. The sandbox container (CRI's pause container, or a
// lone container without CRI annotations) boots the VM in its Create; the other containers of the
// pod join that VM. The VM is powered off when the last container is deleted, so deleting the
// sandbox container while others remain leaves them running (as Kata does).
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import type { CallContext } from '../proto/ttrpc/index.js';
import { Code, TtrpcError } from '../proto/ttrpc/index.js';
import type { ServiceImpl } from '../proto/rpc.js';
import type { containerd, grpc } from '../proto/gen/types.js';
import { ociToGrpcProcess, ociToGrpcResources, ociToGrpcSpec, OciSpecError } from '../proto/oci.js';
import { ConfigError, sandboxConfig, type KatatsConfig } from './config.js';
import { timestamp } from '../proto/registry.js';
import type { EventPublisher } from './events.js';
import { SHARED_FS_TAG, type GuestHandle, type GuestLauncher } from './guest.js';
import { ShimProcess, type ExitInfo } from './process.js';
import { bindMount, isHostSystemPath, mount } from './mounts.js';
import { removeTree, unmountAll } from '../sys/mount.js';
import { CgroupError } from './cgroups.js';
import { planSandboxCgroups, type SandboxCgroupPlan } from './sandbox-cgroups.js';
import { metricsAny } from './metrics.js';
import { sandboxDir } from './layout.js';
import { checkId } from '../sys/ids.js';

const Status = { UNKNOWN: 0, CREATED: 1, RUNNING: 2, STOPPED: 3, PAUSED: 4 } as const;
const CONTAINER_TYPE_ANNOTATION = 'io.kubernetes.cri.container-type';
/** containerd's CRI default for the sandbox's shm size, used when the host's cannot be read. */
const DEFAULT_SHM_BYTES = 64 * 1024 * 1024;
/** Agent calls that set things up get a deadline: a wedged guest must fail the request, not hang it. */
const AGENT_SETUP_TIMEOUT_MS = 120_000;
/** Exit status reported for processes whose VM died under them. */
export const VM_DIED_EXIT = 255;

interface ShimContainer {
  id: string;
  bundle: string;
  spec: grpc.Spec;
  init: ShimProcess;
  execs: Map<string, ShimProcess>;
  /** Exec specs between Exec and Start (the process object exists already, in state 'created'). */
  pendingExecs: Map<string, grpc.Process>;
  /** Host dir of this container inside the shared directory. */
  sharedDir: string;
  paused: boolean;
}

export interface TaskServiceOptions {
  /** The grouping id: the pod's sandbox id, or the container id for a lone container. */
  sandboxId: string;
  namespace: string;
  config: KatatsConfig;
  launcher: GuestLauncher;
  events: EventPublisher;
  stateDir: string;
  log: Logger;
  /** Called when containerd asks the shim to go away and nothing is left to serve. */
  onShutdown: () => void;
}

const ts = timestamp;

/** The agent storage that mounts the pod's shared directory, as upstream Kata names it (none for a local agent). */
function sharedStorage(g: GuestHandle) {
  const mount_point = g.guestDirs.shared;
  if (g.sharedFs === 'host') return [];
  if (g.sharedFs === 'virtio-fs') return [{ driver: 'virtio-fs', source: SHARED_FS_TAG, fstype: 'virtiofs', options: [], mount_point }];
  return [{ driver: '9p', source: SHARED_FS_TAG, fstype: '9p', options: ['trans=virtio', 'version=9p2000.L', 'msize=512000', 'cache=mmap'], mount_point }];
}

export class TaskService {
  private guest: GuestHandle | undefined;
  private readonly containers = new Map<string, ShimContainer>();
  private readonly log: Logger;
  private vmDead = false;
  /** Whether the guest has the pod's /dev/shm at GUEST_SANDBOX_SHM (the sandbox had a private one). */
  private podShm = false;

  constructor(private readonly o: TaskServiceOptions) {
    this.log = o.log;
  }

  get accel(): string | undefined {
    return this.guest?.accel;
  }

  get vmmPid(): number | undefined {
    return this.guest?.vmmPid;
  }

  private container(id: string): ShimContainer {
    const c = this.containers.get(id);
    if (!c) throw new TtrpcError(Code.NotFound, `container ${id} not found`);
    return c;
  }

  private proc(id: string, execId: string): ShimProcess {
    const c = this.container(id);
    if (!execId) return c.init;
    const p = c.execs.get(execId);
    if (!p) throw new TtrpcError(Code.NotFound, `exec ${execId} in container ${id} not found`);
    return p;
  }

  private agent() {
    if (!this.guest || this.vmDead) throw new TtrpcError(Code.Unavailable, `sandbox ${this.o.sandboxId}: the VM is not running`);
    return this.guest.agent;
  }

  private async bootSandbox(spec: grpc.Spec, options: { type_url: string; value: Uint8Array } | null | undefined): Promise<GuestHandle> {
    let cfg: KatatsConfig;
    try {
      // containerd's CRI passes the runtime's options here (runtimeoptions.v1.Options).
      cfg = sandboxConfig(this.o.config, options, spec.Annotations ?? {}, { warn: (f, msg) => this.log.warn(f, msg) });
    } catch (e) {
      if (e instanceof ConfigError) throw new TtrpcError(Code.InvalidArgument, e.message);
      throw e;
    }
    if (cfg.hypervisor.qemu.shared_fs === 'none') {
      // Refused before booting: every container rootfs (the sandbox's own too) reaches the guest
      // through the shared directory until block-device layers exist.
      throw new TtrpcError(Code.InvalidArgument, `shared_fs = none: sandbox ${this.o.sandboxId} cannot get container rootfs into the guest without a shared filesystem (block-device rootfs are not implemented); set [hypervisor.qemu] shared_fs to "virtio-9p" or "virtio-fs"`);
    }
    // CRI makes the pod's network namespace (CNI's veth in it) but nothing connects it to the VM yet:
    // said where an operator looks, since the pod still runs, with loopback only.
    const podNetns = spec.Linux?.Namespaces.find((n) => n.Type === 'network' && n.Path)?.Path;
    if (podNetns) this.log.warn({ netns: podNetns }, 'the pod network namespace is not connected to the VM: containers get loopback only (host-network pods are unaffected)');
    let cgroups: SandboxCgroupPlan | undefined;
    try {
      cgroups = planSandboxCgroups(spec.Linux?.CgroupsPath, this.o.sandboxId, cfg.runtime.sandbox_cgroup_only);
    } catch (e) {
      if (e instanceof CgroupError) throw new TtrpcError(Code.InvalidArgument, `sandbox ${this.o.sandboxId}: ${e.message}`);
      throw e;
    }
    const guest = await this.o.launcher({
      sandboxId: this.o.sandboxId,
      config: cfg,
      launchData: Buffer.alloc(32),
      stateDir: sandboxDir(this.o.stateDir, this.o.sandboxId),
      log: this.log,
      ...(cgroups ? { cgroups } : {}),
    });
    this.log.info({ accel: guest.accel, vmmPid: guest.vmmPid }, 'sandbox VM ready');
    // Tracked from here on: whatever fails next, the shim's cleanup must find this VM to stop it.
    this.guest = guest;
    guest.exited.then((exit) => this.onVmExit(exit.reason)).catch((err: unknown) => this.log.error({ err }, 'handling the VM exit failed'));
    const shmBytes = podShmBytes(spec);
    await guest.agent.CreateSandbox({
      hostname: spec.Hostname,
      sandbox_id: this.o.sandboxId,
      storages: [
        ...sharedStorage(guest),
        // A host tmpfs seen through the shared filesystem would share files but not memory: the pod's shm lives in the guest.
        ...(shmBytes
          ? [{ driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['noexec', 'nosuid', 'nodev', 'mode=1777', `size=${shmBytes}`], mount_point: guest.guestDirs.sandboxShm }]
          : []),
      ],
    }, { timeoutMs: AGENT_SETUP_TIMEOUT_MS });
    this.podShm = shmBytes > 0;
    this.log.info({ podShmBytes: shmBytes || undefined }, 'sandbox created in the guest');
    return guest;
  }

  /** The VM went away under us: every live process exits with an error status, and events say so. */
  private onVmExit(reason: string): void {
    if (this.vmDead) return;
    this.vmDead = true;
    const live = [...this.containers.values()].flatMap((c) => [c.init, ...c.execs.values()]).filter((p) => !p.exit && p.status !== 'created');
    if (live.length) this.log.error({ reason }, 'sandbox VM died under running containers');
    for (const p of live) {
      const e = p.setExited(VM_DIED_EXIT);
      this.publishExit(p, e);
    }
  }

  private publishExit(p: ShimProcess, e: ExitInfo): void {
    this.o.events.publish('TaskExit', {
      container_id: p.containerId,
      id: p.execId || p.containerId,
      pid: p.pid,
      exit_status: e.status,
      exited_at: ts(e.at),
    });
  }

  private readSpec(bundle: string): { json: Record<string, unknown>; spec: grpc.Spec } {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new TtrpcError(Code.InvalidArgument, `bundle ${bundle}: cannot read config.json: ${(e as Error).message}`);
    }
    try {
      return { json, spec: ociToGrpcSpec(json) };
    } catch (e) {
      if (e instanceof OciSpecError) throw new TtrpcError(Code.InvalidArgument, `bundle ${bundle}: ${e.message}`);
      throw e;
    }
  }

  /**
   * Makes the container's rootfs and bind-mount sources visible in the shared directory and
   * rewrites the spec to the guest's paths.
   */
  private async shareContainerFiles(id: string, bundle: string, rootfs: containerd.types.Mount[], spec: grpc.Spec, guest: GuestHandle): Promise<string> {
    const dir = path.join(guest.sharedDir, id);
    const target = path.join(dir, 'rootfs');
    fs.mkdirSync(target, { recursive: true, mode: 0o700 });
    if (rootfs.length > 0) {
      for (const m of rootfs) await mount({ type: m.type, source: m.source, options: m.options }, target);
    } else {
      const root = spec.Root?.Path ?? 'rootfs';
      await bindMount(path.resolve(bundle, root), target);
    }
    const guestDir = `${guest.guestDirs.shared}/${id}`;
    spec.Root = { Path: `${guestDir}/rootfs`, Readonly: spec.Root?.Readonly ?? false };
    for (const m of spec.Mounts ?? []) {
      const isBind = m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');
      if (!isBind || !m.source.startsWith('/')) continue;
      if (isPodShm(m) && this.podShm) {
        m.source = guest.guestDirs.sandboxShm;
        continue;
      }
      if (isHostSystemPath(m.source)) continue;
      if (!fs.existsSync(m.source)) throw new TtrpcError(Code.InvalidArgument, `container ${id}: bind mount source ${m.source} does not exist`);
      const name = `${crypto.createHash('sha256').update(m.destination).digest('hex').slice(0, 12)}-${path.basename(m.source)}`;
      await bindMount(m.source, path.join(dir, 'mounts', name), { readonly: m.options.includes('ro'), recursive: m.type === 'rbind' || m.options.includes('rbind') });
      m.source = `${guestDir}/mounts/${name}`;
    }
    return dir;
  }

  readonly impl: Partial<ServiceImpl<'containerd.task.v2.Task'>> = {
    Create: async (req) => {
      idArgument(req.id, 'container id');
      if (this.containers.has(req.id)) throw new TtrpcError(Code.AlreadyExists, `container ${req.id} already exists`);
      if (req.checkpoint) throw new TtrpcError(Code.Unimplemented, 'katats cannot restore from a checkpoint');
      const log = this.log.child({ container: req.id });
      const { spec } = this.readSpec(req.bundle);
      const type = spec.Annotations?.[CONTAINER_TYPE_ANNOTATION];
      // Without CRI's annotation (ctr, plain containerd clients) the pod's first container is its sandbox.
      const isSandbox = type ? type === 'sandbox' : !this.guest && this.containers.size === 0;
      if (isSandbox && this.guest) throw new TtrpcError(Code.AlreadyExists, `pod ${this.o.sandboxId} already runs its sandbox VM; ${req.id} cannot be a second sandbox container`);
      if (!isSandbox && !this.guest) {
        throw new TtrpcError(Code.FailedPrecondition, `container ${req.id}: pod ${this.o.sandboxId} has no sandbox VM (its sandbox container was not created here, or it was deleted)`);
      }
      if (isSandbox) {
        try {
          await this.bootSandbox(spec, req.options);
        } catch (e) {
          await this.stopSandbox().catch(() => undefined);
          throw e;
        }
      }
      const guest = this.guest!;
      const sandboxPidns = constrainNamespaces(spec);
      const sharedDir = await this.shareContainerFiles(req.id, req.bundle, req.rootfs, spec, guest).catch(async (e) => {
        await unmountAll(path.join(guest.sharedDir, req.id));
        throw e;
      });
      log.debug({ rootfs: spec.Root?.Path }, 'rootfs shared with the guest');
      const stdio = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      if (spec.Process) spec.Process.Terminal = req.terminal;
      const init = new ShimProcess(req.id, '', stdio, guest.agent, log, this.o.namespace);
      let inGuest = false;
      try {
        await this.agent().CreateContainer(
          { container_id: req.id, exec_id: req.id, OCI: spec, storages: [], devices: [], sandbox_pidns: sandboxPidns },
          { timeoutMs: AGENT_SETUP_TIMEOUT_MS },
        );
        inGuest = true;
        await init.openOutput();
      } catch (e) {
        if (inGuest) {
          // The container exists in the guest but its output has nowhere to go: take it away again.
          await this.agent()
            .RemoveContainer({ container_id: req.id, timeout: 10 })
            .catch((err) => log.warn({ err }, 'RemoveContainer after a failed output open failed'));
        }
        await removeTree(sharedDir);
        throw inGuest ? new TtrpcError(Code.InvalidArgument, (e as Error).message) : e;
      }
      this.containers.set(req.id, { id: req.id, bundle: req.bundle, spec, init, execs: new Map(), pendingExecs: new Map(), sharedDir, paused: false });
      this.o.events.publish('TaskCreate', {
        container_id: req.id,
        bundle: req.bundle,
        rootfs: req.rootfs,
        io: { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal },
        pid: init.pid,
      });
      log.info({ sandbox: isSandbox, type, sandboxPidns }, 'container created');
      return { pid: init.pid };
    },

    Start: async (req) => {
      const c = this.container(req.id);
      if (!req.exec_id) {
        if (c.init.status !== 'created') throw new TtrpcError(Code.FailedPrecondition, `container ${req.id} is ${c.init.status}, not created`);
        await this.agent().StartContainer({ container_id: req.id }, { timeoutMs: AGENT_SETUP_TIMEOUT_MS });
        c.init.status = 'running';
        await c.init.attachStdio();
        this.o.events.publish('TaskStart', { container_id: req.id, pid: c.init.pid });
        c.init.watch().then((e) => this.publishExit(c.init, e)).catch((err: unknown) => c.init.log.error({ err }, 'watching the container failed'));
        return { pid: c.init.pid };
      }
      const p = this.proc(req.id, req.exec_id);
      const spec = c.pendingExecs.get(req.exec_id);
      if (!spec) throw new TtrpcError(Code.FailedPrecondition, `exec ${req.exec_id} is ${p.status}, not created`);
      // Before the process exists: an output that cannot be opened leaves nothing to kill.
      await p.openOutput().catch((e: Error) => {
        throw new TtrpcError(Code.InvalidArgument, e.message);
      });
      c.pendingExecs.delete(req.exec_id);
      try {
        await this.agent().ExecProcess({ container_id: req.id, exec_id: req.exec_id, process: spec });
      } catch (e) {
        this.publishExit(p, p.setExited(VM_DIED_EXIT));
        throw e;
      }
      p.status = 'running';
      await p.attachStdio();
      this.o.events.publish('TaskExecStarted', { container_id: req.id, exec_id: req.exec_id, pid: p.pid });
      p.watch().then((e) => this.publishExit(p, e)).catch((err: unknown) => p.log.error({ err }, 'watching the exec failed'));
      return { pid: p.pid };
    },

    Exec: async (req) => {
      idArgument(req.exec_id, 'exec id');
      const c = this.container(req.id);
      if (c.execs.has(req.exec_id)) throw new TtrpcError(Code.AlreadyExists, `exec ${req.exec_id} already exists in container ${req.id}`);
      if (c.init.status !== 'running') throw new TtrpcError(Code.FailedPrecondition, `container ${req.id} is not running`);
      let process: grpc.Process;
      try {
        process = ociToGrpcProcess(JSON.parse(Buffer.from(req.spec?.value ?? []).toString('utf8')));
      } catch (e) {
        throw new TtrpcError(Code.InvalidArgument, `exec ${req.exec_id}: bad process spec: ${(e as Error).message}`);
      }
      process.Terminal = req.terminal;
      const stdio = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      c.execs.set(req.exec_id, new ShimProcess(req.id, req.exec_id, stdio, this.agent(), c.init.log.child({ exec: req.exec_id }), this.o.namespace));
      c.pendingExecs.set(req.exec_id, process);
      this.o.events.publish('TaskExecAdded', { container_id: req.id, exec_id: req.exec_id });
      return {};
    },

    State: async (req) => {
      const c = this.container(req.id);
      const p = this.proc(req.id, req.exec_id);
      const status = p.exit ? Status.STOPPED : c.paused && p.isInit ? Status.PAUSED : p.status === 'created' ? Status.CREATED : Status.RUNNING;
      return {
        id: req.id,
        exec_id: req.exec_id,
        bundle: c.bundle,
        pid: p.pid,
        status,
        stdin: p.stdio.stdin,
        stdout: p.stdio.stdout,
        stderr: p.stdio.stderr,
        terminal: p.stdio.terminal,
        exit_status: p.exit?.status ?? 0,
        exited_at: p.exit ? ts(p.exit.at) : null,
      };
    },

    Kill: async (req) => {
      const p = this.proc(req.id, req.exec_id);
      if (p.exit) throw new TtrpcError(Code.NotFound, `process ${req.exec_id || req.id} already exited`);
      if (p.status === 'created' && p.isInit) {
        // Never started: there is nothing in the guest to signal; the task simply ends.
        this.publishExit(p, p.setExited(128 + req.signal));
        return {};
      }
      // An empty exec id with all=true reaches every process of the container, as crun kill --all does.
      await this.agent().SignalProcess({ container_id: req.id, exec_id: req.all ? '' : req.exec_id, signal: req.signal });
      return {};
    },

    Wait: async (req, ctx: CallContext) => {
      const p = this.proc(req.id, req.exec_id);
      const e = await Promise.race([
        p.wait(),
        new Promise<never>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
      ]);
      return { exit_status: e.status, exited_at: ts(e.at) };
    },

    Delete: async (req) => {
      const c = this.container(req.id);
      if (req.exec_id) {
        const p = this.proc(req.id, req.exec_id);
        if (c.pendingExecs.delete(req.exec_id)) {
          c.execs.delete(req.exec_id);
          await p.release();
          return { pid: p.pid, exit_status: 0 };
        }
        if (!p.exit) throw new TtrpcError(Code.FailedPrecondition, `exec ${req.exec_id} is still running`);
        c.execs.delete(req.exec_id);
        await p.release();
        return { pid: p.pid, exit_status: p.exit.status, exited_at: ts(p.exit.at) };
      }
      if (!c.init.exit && c.init.status !== 'created') throw new TtrpcError(Code.FailedPrecondition, `container ${req.id} is still running`);
      const exit = c.init.exit ?? c.init.setExited(0);
      if (!this.vmDead) {
        await this.agent()
          .RemoveContainer({ container_id: req.id, timeout: 10 })
          .catch((err) => this.log.warn({ err, container: req.id }, 'RemoveContainer failed'));
      }
      await Promise.all([c.init, ...c.execs.values()].map((p) => p.release()));
      await removeTree(c.sharedDir);
      this.containers.delete(req.id);
      this.o.events.publish('TaskDelete', { container_id: req.id, pid: c.init.pid, exit_status: exit.status, exited_at: ts(exit.at), id: req.id });
      if (this.containers.size === 0) await this.stopSandbox();
      return { pid: c.init.pid, exit_status: exit.status, exited_at: ts(exit.at) };
    },

    Pids: async (req) => {
      const c = this.container(req.id);
      const procs = [c.init, ...c.execs.values()].filter((p) => !p.exit);
      return { processes: procs.length ? [{ pid: c.init.pid }] : [] };
    },

    Pause: async (req) => {
      const c = this.container(req.id);
      await this.agent().PauseContainer({ container_id: req.id });
      c.paused = true;
      this.o.events.publish('TaskPaused', { container_id: req.id });
      return {};
    },

    Resume: async (req) => {
      const c = this.container(req.id);
      await this.agent().ResumeContainer({ container_id: req.id });
      c.paused = false;
      this.o.events.publish('TaskResumed', { container_id: req.id });
      return {};
    },

    ResizePty: async (req) => {
      this.proc(req.id, req.exec_id);
      await this.agent().TtyWinResize({ container_id: req.id, exec_id: req.exec_id, row: req.height, column: req.width });
      return {};
    },

    CloseIO: async (req) => {
      const p = this.proc(req.id, req.exec_id);
      if (req.stdin) await p.closeIO();
      return {};
    },

    Update: async (req) => {
      this.container(req.id);
      let resources: grpc.LinuxResources;
      try {
        resources = ociToGrpcResources(JSON.parse(Buffer.from(req.resources?.value ?? []).toString('utf8')));
      } catch (e) {
        throw new TtrpcError(Code.InvalidArgument, `update ${req.id}: bad resources: ${(e as Error).message}`);
      }
      await this.agent().UpdateContainer({ container_id: req.id, resources });
      return {};
    },

    Stats: async (req) => {
      this.container(req.id);
      return { stats: metricsAny(await this.agent().StatsContainer({ container_id: req.id })) };
    },

    Connect: async () => ({ shim_pid: process.pid, task_pid: process.pid, version: '2' }),

    Shutdown: async () => {
      if (this.containers.size > 0) return {};
      await this.stopSandbox();
      this.o.onShutdown();
      return {};
    },
  };

  private async stopSandbox(): Promise<void> {
    const g = this.guest;
    if (!g) return;
    this.guest = undefined;
    this.vmDead = true;
    await g.agent.DestroySandbox({}, { timeoutMs: 10_000 }).catch(() => undefined);
    await g.stop();
    this.log.info('sandbox VM stopped');
  }

  /** For the daemon's exit path: tear everything down without containerd's help. */
  async forceCleanup(): Promise<void> {
    for (const c of this.containers.values()) {
      await unmountAll(c.sharedDir).catch(() => undefined);
    }
    this.containers.clear();
    await this.stopSandbox().catch(() => undefined);
  }
}

/** An id from containerd that becomes a path (here or in the guest): InvalidArgument naming it when it cannot. */
function idArgument(id: string, what: string): void {
  try {
    checkId(id, what);
  } catch (e) {
    throw new TtrpcError(Code.InvalidArgument, (e as Error).message);
  }
}

/** A bind of a private /dev/shm (CRI's sandbox shm dir on the host); the host's own /dev/shm is not one. */
function isPodShm(m: grpc.Mount): boolean {
  return m.destination === '/dev/shm' && m.source !== '/dev/shm';
}

/**
 * Size of the pod's /dev/shm from a CRI sandbox container's spec: 0 when the pod has none of its
 * own. Only CRI's pause container says that its /dev/shm is the pod's: elsewhere a bind onto
 * /dev/shm is the user's directory and goes through the share like any other.
 */
function podShmBytes(spec: grpc.Spec): number {
  if (spec.Annotations?.[CONTAINER_TYPE_ANNOTATION] !== 'sandbox') return 0;
  const m = (spec.Mounts ?? []).find((x) => isPodShm(x) && (x.type === 'bind' || x.options.includes('bind') || x.options.includes('rbind')));
  if (!m) return 0;
  try {
    const st = fs.statfsSync(m.source);
    return st.blocks * st.bsize || DEFAULT_SHM_BYTES;
  } catch {
    return DEFAULT_SHM_BYTES;
  }
}

/**
 * Host namespace paths mean nothing in the guest (Kata's constrainGRPCSpec and handlePidNamespace):
 * the network stack is the VM's and cgroup namespaces are the guest's own, so both go; a pid
 * namespace with a path asks to join the pod's (returned, for sandbox_pidns); other paths are
 * cleared, and the agent puts ipc and uts into the pod's shared namespaces.
 */
function constrainNamespaces(spec: grpc.Spec): boolean {
  if (!spec.Linux) return false;
  let sandboxPidns = false;
  spec.Linux.Namespaces = spec.Linux.Namespaces.filter((n) => n.Type !== 'network' && n.Type !== 'cgroup').map((n) => {
    if (n.Type === 'pid' && n.Path) sandboxPidns = true;
    return { ...n, Path: '' };
  });
  return sandboxPidns;
}
