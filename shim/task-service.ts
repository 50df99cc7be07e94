// containerd.task.v2.Task (and v3, the same messages) for katats: containerd's view of tasks,
// mapped onto one sandbox VM per shim (one per pod) and the agent inside it. The sandbox container
// (CRI's pause container, or a lone container without CRI annotations) boots the VM in its
// Create; the other containers of the pod join that VM. The VM is powered off when the last
// container is deleted, so deleting the sandbox container while others remain leaves them running
// (as Kata does). The VM's states live in sandbox-vm.ts, each process's in process-state.ts; this
// file maps requests onto them, and errors onto wire codes in one place (errdefs.ts).
import type { Logger } from 'pino';
import type { CallContext } from '../proto/ttrpc/index.js';
import type { ServiceImpl } from '../proto/rpc.js';
import type { containerd, grpc } from '../proto/gen/types.js';
import { ociToGrpcProcess, ociToGrpcResources } from '../proto/oci.js';
import { timestamp as ts } from '../proto/registry.js';
import type { KatatsConfig } from './config.js';
import type { EventPublisher } from './events.js';
import type { GuestHandle, GuestLauncher } from './guest.js';
import { ShimProcess, type ExitInfo, type StdioPaths } from './process.js';
import { metricsAny } from './metrics.js';
import { SandboxVm } from './sandbox-vm.js';
import type { ProcessLifecycle, Transition } from './process-state.js';
import { createGuestSandbox, launchSandboxVm, setGuestPolicy, startGuestNetwork } from './sandbox-boot.js';
import { POLICY_ANNOTATION, takePodPolicy, type PodPolicy } from './pod-policy.js';
import { takePodInitdata } from './pod-initdata.js';
import { INITDATA_ANNOTATION, type Initdata } from '../attestation/initdata.js';
import { createContainerInGuest } from './container-create.js';
import { ShimContainer } from './container.js';
import { containerType, readBundleSpec } from './container-spec.js';
import { unshareContainerFiles } from './rootfs-share.js';
import { alreadyExists, invalid, notFound, precondition, unimplemented, withWireErrors } from './errdefs.js';
import { AGENT_TEARDOWN_TIMEOUT_MS, requestCall, setupCall } from './agent-calls.js';
import { unmountAll } from '../sys/mount.js';
import { checkId } from '../sys/ids.js';
import { PodSteps } from './pod-steps.js';
import type { PodView } from './monitor/endpoint.js';
import type { SandboxReport } from './monitor/report.js';

/** containerd's task status enum (containerd.v1.types.Status). */
const Status = { UNKNOWN: 0, CREATED: 1, RUNNING: 2, STOPPED: 3, PAUSED: 4 } as const;
const STATUS_OF = { created: Status.CREATED, running: Status.RUNNING, paused: Status.PAUSED, stopped: Status.STOPPED, deleted: Status.STOPPED } as const;
/** Exit status reported for processes whose VM died under them. */
export const VM_DIED_EXIT = 255;

export interface TaskServiceOptions {
  /** The grouping id: the pod's sandbox id, or the container id for a lone container. */
  sandboxId: string;
  namespace: string;
  config: KatatsConfig;
  launcher: GuestLauncher;
  events: Pick<EventPublisher, 'publish'>;
  stateDir: string;
  log: Logger;
  /** Called when containerd asks the shim to go away and nothing is left to serve. */
  onShutdown: () => void;
  /** Where the pod's step times go (the daemon shares it with the monitor endpoint); a fresh one when absent. */
  steps?: PodSteps;
}

type TaskImpl = Partial<ServiceImpl<'containerd.task.v2.Task'>>;

export class TaskService {
  private readonly vm: SandboxVm;
  private readonly containers = new Map<string, ShimContainer>();
  /** Ids whose Create is under way: a second Create of the same id fails at once. */
  private readonly creating = new Set<string>();
  private readonly log: Logger;
  /** Whether the guest holds the pod's /dev/shm (the sandbox had a private one). */
  private podShm = false;
  /** The guest's pod network being configured (startGuestNetwork); the pod's Creates answer after it. */
  private podNetwork: Promise<void> | undefined;
  /** How the pod's start went, step by step (pod-steps.ts). */
  readonly steps: PodSteps;
  /** The Kubernetes pod this sandbox is, from CRI's annotations on the sandbox container. */
  private criPod: SandboxReport['cri'];

  constructor(private readonly o: TaskServiceOptions) {
    this.log = o.log;
    this.steps = o.steps ?? new PodSteps();
    this.vm = new SandboxVm({
      sandboxId: o.sandboxId,
      log: o.log,
      onDeath: (reason) => this.onVmDeath(reason),
      onOom: (id) => this.onOom(id),
    });
  }

  /**
   * The pid containerd gets for every task of the pod: the VMM's, as Kata's shim reports it (its
   * hpid). Guest pids would name unrelated processes on the host, where containerd and its
   * clients look them up; the VMM is the host process that runs the pod's processes.
   */
  private get taskPid(): number {
    return this.vm.handle?.vmmPid || process.pid;
  }

  private container(id: string): ShimContainer {
    const c = this.containers.get(id);
    if (!c) throw notFound(`container ${id} not found`);
    return c;
  }

  private publishExit(p: ShimProcess, e: ExitInfo): void {
    this.o.events.publish('TaskExit', { container_id: p.containerId, id: p.execId || p.containerId, pid: p.pid, exit_status: e.status, exited_at: ts(e.at) });
  }

  private onVmDeath(reason: string): void {
    let ended = 0;
    for (const c of this.containers.values()) ended += c.endAll(VM_DIED_EXIT);
    if (ended) this.log.error({ reason }, 'sandbox VM died under running containers');
  }

  private onOom(id: string): void {
    // The id comes from the guest: only a container of this pod becomes an event.
    if (!this.containers.has(id)) {
      this.log.warn({ container: id }, 'OOM event for a container this shim does not know; dropped');
      return;
    }
    this.log.warn({ container: id }, 'OOM kill in the guest');
    this.o.events.publish('TaskOOM', { container_id: id });
  }

  /** Launches the VM and creates the sandbox in the guest: what the pod's first Create does. */
  private bootSandbox(
    spec: grpc.Spec,
    options: { type_url: string; value: Uint8Array } | null | undefined,
    policy: PodPolicy | undefined,
    rootfs: containerd.types.Mount[],
    ctx: CallContext,
    initdata: Initdata | undefined,
  ): Promise<GuestHandle> {
    const boot = { sandboxId: this.o.sandboxId, config: this.o.config, stateDir: this.o.stateDir, launcher: this.o.launcher, log: this.log };
    return this.vm.boot(
      async () => {
        const guest = await this.steps.time('vm_ready', () => launchSandboxVm(boot, spec, options, policy, rootfs, initdata));
        this.steps.bootPath = guest.bootPath ?? 'cold';
        return guest;
      },
      (guest) =>
        this.steps.time('create_sandbox', async () => {
          if (policy) await setGuestPolicy(boot, guest, policy, ctx);
          this.podNetwork = startGuestNetwork(boot, guest, ctx);
          if (this.podNetwork) void this.steps.time('network', () => this.podNetwork!).catch(() => {});
          this.podShm = await createGuestSandbox(boot, guest, spec, ctx);
        }),
    );
  }

  private newProcess(containerId: string, execId: string, stdio: StdioPaths, guest: GuestHandle, log: Logger): ShimProcess {
    return new ShimProcess(containerId, execId, stdio, guest.agent, log, this.o.namespace, this.taskPid);
  }

  private async create(req: Parameters<NonNullable<TaskImpl['Create']>>[0], ctx: CallContext) {
    if (req.checkpoint) throw unimplemented('katats cannot restore from a checkpoint');
    const log = this.log.child({ container: req.id });
    const spec = readBundleSpec(req.bundle);
    // Out of every spec (CRI passes pod annotations to containers too); only the sandbox's counts.
    const policy = takePodPolicy(spec, `container ${req.id}`);
    const initdata = takePodInitdata(spec, `container ${req.id}`);
    const type = containerType(spec);
    // Without CRI's annotation (ctr, plain containerd clients) the pod's first container is its
    // sandbox. Decided and claimed before any await: a concurrent Create joins the boot instead.
    const isSandbox = type ? type === 'sandbox' : this.vm.state === 'stopped' && this.containers.size === 0;
    if (!isSandbox && this.vm.state === 'stopped') {
      throw precondition(`container ${req.id}: pod ${this.o.sandboxId} has no sandbox VM (its sandbox container was not created here, or it was deleted)`);
    }
    if (isSandbox) this.criPod = criPodOf(spec);
    if (policy && !isSandbox) log.debug('the pod policy annotation on a container that is not the sandbox: taken out, not applied');
    if (isSandbox && policy && initdata) {
      // One policy per pod, bound by one digest: initdata's policy.rego, or the annotation's.
      throw invalid(`container ${req.id}: the pod has both initdata (${INITDATA_ANNOTATION}) and a policy annotation (${POLICY_ANNOTATION}); put the policy in initdata's policy.rego, or drop the initdata`);
    }
    const guest = isSandbox ? await this.bootSandbox(spec, req.options, policy, req.rootfs, ctx, initdata) : await this.vm.ready(`create container ${req.id}`);
    try {
      const stdio = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      const t0 = performance.now();
      const { init, sharedDir, sandboxPidns } = await createContainerInGuest({
        id: req.id,
        bundle: req.bundle,
        rootfs: req.rootfs,
        stdio,
        spec,
        guest,
        podShm: this.podShm,
        ctx,
        log,
        newInit: () => this.newProcess(req.id, '', stdio, guest, log),
      });
      // The sandbox container was created while the guest configured the network: the pod is not
      // created until that is done, and a failure there fails this Create (the VM goes with it).
      if (this.podNetwork) await this.podNetwork;
      this.containers.set(req.id, new ShimContainer(req.id, req.bundle, init, sharedDir, sandboxPidns, (p, e) => this.publishExit(p, e), log));
      this.o.events.publish('TaskCreate', { container_id: req.id, bundle: req.bundle, rootfs: req.rootfs, io: stdio, pid: init.pid });
      log.info({ sandbox: isSandbox, type, sandboxPidns, ms: this.steps.done('create_container', performance.now() - t0) }, 'container created');
      return { pid: init.pid };
    } catch (e) {
      // containerd keeps only the message of what it is answered: the code (the agent's
      // PermissionDenied for a policy's refusal, say) is in this log line.
      log.warn({ err: e }, 'create failed');
      // A sandbox container that failed after its boot leaves no VM behind with nothing in it.
      if (isSandbox && this.containers.size === 0 && this.creating.size === 1) await this.vm.stop().catch((err: unknown) => log.error({ err }, 'stopping the VM after a failed create failed'));
      throw e;
    }
  }

  private async startInit(c: ShimContainer, ctx: CallContext) {
    const p = c.init;
    const t0 = performance.now();
    await inGuest(p.life, 'start', () => this.vm.agent(`start container ${c.id}`).StartContainer({ container_id: c.id }, setupCall(ctx)));
    await p.attachStdio();
    p.log.info({ ms: this.steps.done('start', performance.now() - t0) }, 'container started');
    this.o.events.publish('TaskStart', { container_id: c.id, pid: p.pid });
    c.followInit(() => this.vm.agent('end the execs of an exited init')).catch((err: unknown) => p.log.error({ err }, 'following the container failed'));
    return { pid: p.pid };
  }

  private async startExec(c: ShimContainer, p: ShimProcess, ctx: CallContext) {
    p.life.begin('start');
    const spec = this.execSpecs.get(p)!;
    try {
      c.checkExecStart();
      // Before the process exists: an output that cannot be opened leaves nothing to kill.
      await p.openOutput().catch((e: Error) => {
        throw invalid(e.message);
      });
    } catch (e) {
      p.life.abandon();
      throw e;
    }
    try {
      await this.vm.agent(`start exec ${p.execId}`).ExecProcess({ container_id: c.id, exec_id: p.execId, process: spec }, setupCall(ctx));
    } catch (e) {
      // Whatever the guest did, the exec is over for containerd: an exit it can wait for and delete.
      this.vm.handle?.agent
        .SignalProcess({ container_id: c.id, exec_id: p.execId, signal: 9 }, { timeoutMs: AGENT_TEARDOWN_TIMEOUT_MS })
        .catch(() => undefined);
      c.exitProcess(p, VM_DIED_EXIT);
      throw e;
    }
    p.life.commit();
    this.execSpecs.delete(p);
    await p.attachStdio();
    this.o.events.publish('TaskExecStarted', { container_id: c.id, exec_id: p.execId, pid: p.pid });
    c.followExec(p).catch((err: unknown) => p.log.error({ err }, 'following the exec failed'));
    return { pid: p.pid };
  }

  private async deleteProcess(c: ShimContainer, execId: string) {
    const p = c.process(execId);
    p.life.check('delete');
    c.execs.delete(execId);
    p.markDeleted();
    await p.release();
    return { pid: p.pid, exit_status: p.exit?.status ?? 0, exited_at: p.exit ? ts(p.exit.at) : null };
  }

  private async deleteContainer(c: ShimContainer) {
    c.init.life.check('delete');
    // A task created and never started ends here; one that ran has its exit already.
    const exit = c.init.exit ?? c.init.setExited(0);
    if (this.vm.state === 'ready') {
      await this.vm
        .agent(`delete container ${c.id}`)
        .RemoveContainer({ container_id: c.id, timeout: 10 }, { timeoutMs: AGENT_TEARDOWN_TIMEOUT_MS })
        .catch((err) => this.log.warn({ err, container: c.id }, 'RemoveContainer failed'));
    }
    for (const p of c.execs.values()) {
      // Only an exec that outlived its init's wait (see container.ts) still runs: RemoveContainer killed it.
      if (!p.exit && p.life.state !== 'created') c.exitProcess(p, 128 + 9);
      p.markDeleted();
    }
    c.init.markDeleted();
    await Promise.all([c.init, ...c.execs.values()].map((p) => p.release()));
    await unshareContainerFiles(c.sharedDir);
    // After RemoveContainer: the guest has let go of the layers no other container uses.
    if (this.vm.state === 'ready') await this.vm.handle?.layers?.release(c.id);
    this.containers.delete(c.id);
    this.o.events.publish('TaskDelete', { container_id: c.id, pid: c.init.pid, exit_status: exit.status, exited_at: ts(exit.at), id: c.id });
    if (this.containers.size === 0 && this.creating.size === 0) await this.vm.stop();
    return { pid: c.init.pid, exit_status: exit.status, exited_at: ts(exit.at) };
  }

  readonly impl: TaskImpl = withWireErrors<TaskImpl>({
    Create: async (req, ctx) => {
      checkId(req.id, 'container id');
      if (this.containers.has(req.id) || this.creating.has(req.id)) throw alreadyExists(`container ${req.id} already exists`);
      this.creating.add(req.id);
      try {
        return await this.create(req, ctx);
      } finally {
        this.creating.delete(req.id);
      }
    },

    Start: async (req, ctx) => {
      const c = this.container(req.id);
      if (!req.exec_id) return this.startInit(c, ctx);
      return this.startExec(c, c.process(req.exec_id), ctx);
    },

    Exec: async (req) => {
      checkId(req.exec_id, 'exec id');
      const c = this.container(req.id);
      c.init.life.check('exec');
      let spec: grpc.Process;
      try {
        spec = ociToGrpcProcess(JSON.parse(Buffer.from(req.spec?.value ?? []).toString('utf8')));
      } catch (e) {
        throw invalid(`exec ${req.exec_id}: bad process spec: ${(e as Error).message}`);
      }
      spec.Terminal = req.terminal;
      const stdio = { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
      const guest = await this.vm.ready(`exec in container ${req.id}`);
      const p = this.newProcess(req.id, req.exec_id, stdio, guest, c.log.child({ exec: req.exec_id }));
      c.addExec(p);
      this.execSpecs.set(p, spec);
      this.o.events.publish('TaskExecAdded', { container_id: req.id, exec_id: req.exec_id });
      return {};
    },

    State: async (req) => {
      const c = this.container(req.id);
      const p = c.process(req.exec_id);
      // An exec of a paused container is frozen with it.
      const state = !p.isInit && p.life.state === 'running' && c.init.life.state === 'paused' ? 'paused' : p.life.state;
      return {
        id: req.id,
        exec_id: req.exec_id,
        bundle: c.bundle,
        pid: p.pid,
        status: STATUS_OF[state],
        stdin: p.stdio.stdin,
        stdout: p.stdio.stdout,
        stderr: p.stdio.stderr,
        terminal: p.stdio.terminal,
        exit_status: p.exit?.status ?? 0,
        exited_at: p.exit ? ts(p.exit.at) : null,
      };
    },

    Kill: async (req, ctx) => {
      const c = this.container(req.id);
      const p = c.process(req.exec_id);
      p.life.check('kill');
      if (p.life.state === 'created' && !p.life.pending) {
        // An exec not started is no process yet (runc's shim says so too).
        if (!p.isInit) throw precondition(`${p.life.label} is created: it has no process to signal`);
        // A task created and never started: nothing runs in the guest to signal; the task simply ends.
        c.exitProcess(p, 128 + req.signal);
        return {};
      }
      // The init is addressed by the container's id; only `all` reaches every process of the
      // container (the agent's empty exec id, as Kata's shim sends it for --all).
      const execId = req.all && p.isInit ? '' : p.agentExecId;
      await this.vm.agent(`signal ${p.life.label}`).SignalProcess({ container_id: req.id, exec_id: execId, signal: req.signal }, requestCall(ctx));
      return {};
    },

    Wait: async (req, ctx) => {
      const p = this.container(req.id).process(req.exec_id);
      const e = await untilAborted(p.wait(), ctx.signal);
      return { exit_status: e.status, exited_at: ts(e.at) };
    },

    Delete: async (req) => {
      const c = this.container(req.id);
      return req.exec_id ? this.deleteProcess(c, req.exec_id) : this.deleteContainer(c);
    },

    Pids: async (req) => {
      this.container(req.id);
      // Kata's answer: the pod's one host process (the VMM) stands for the task's processes.
      return { processes: [{ pid: this.taskPid }] };
    },

    Pause: async (req, ctx) => {
      const c = this.container(req.id);
      await inGuest(c.init.life, 'pause', () => this.vm.agent(`pause container ${req.id}`).PauseContainer({ container_id: req.id }, requestCall(ctx)));
      this.o.events.publish('TaskPaused', { container_id: req.id });
      return {};
    },

    Resume: async (req, ctx) => {
      const c = this.container(req.id);
      await inGuest(c.init.life, 'resume', () => this.vm.agent(`resume container ${req.id}`).ResumeContainer({ container_id: req.id }, requestCall(ctx)));
      this.o.events.publish('TaskResumed', { container_id: req.id });
      return {};
    },

    ResizePty: async (req, ctx) => {
      const p = this.container(req.id).process(req.exec_id);
      p.life.check('resize');
      await this.vm.agent(`resize ${p.life.label}`).TtyWinResize({ container_id: req.id, exec_id: p.agentExecId, row: req.height, column: req.width }, requestCall(ctx));
      return {};
    },

    CloseIO: async (req) => {
      const p = this.container(req.id).process(req.exec_id);
      p.life.check('closeIO');
      if (req.stdin) await p.closeIO();
      return {};
    },

    Update: async (req, ctx) => {
      const c = this.container(req.id);
      c.init.life.check('update');
      let resources: grpc.LinuxResources;
      try {
        resources = ociToGrpcResources(JSON.parse(Buffer.from(req.resources?.value ?? []).toString('utf8')));
      } catch (e) {
        throw invalid(`update ${req.id}: bad resources: ${(e as Error).message}`);
      }
      await this.vm.agent(`update container ${req.id}`).UpdateContainer({ container_id: req.id, resources }, requestCall(ctx));
      return {};
    },

    Stats: async (req, ctx) => {
      const c = this.container(req.id);
      c.init.life.check('stats');
      return { stats: metricsAny(await this.vm.agent(`read stats of container ${req.id}`).StatsContainer({ container_id: req.id }, requestCall(ctx))) };
    },

    // The version of the API this call came in on: containerd 2.x calls v3 when `start` announced it.
    Connect: async (_req, ctx) => ({ shim_pid: process.pid, task_pid: this.taskPid, version: ctx.service === 'containerd.task.v3.Task' ? '3' : '2' }),

    Shutdown: async () => {
      if (this.containers.size > 0 || this.creating.size > 0) return {};
      await this.vm.stop();
      this.o.onShutdown();
      return {};
    },
  });

  /** Exec specs between Exec and Start (the process object exists already, in state 'created'). */
  private readonly execSpecs = new WeakMap<ShimProcess, grpc.Process>();

  /** For the daemon's exit path: tear everything down without containerd's help. */
  async forceCleanup(): Promise<void> {
    for (const c of this.containers.values()) {
      await unmountAll(c.sharedDir).catch(() => undefined);
    }
    this.containers.clear();
    await this.vm.stop().catch(() => undefined);
  }

  /** What the monitor endpoint reports about the pod, read at the moment it asks. */
  monitorView(): PodView {
    const g = this.vm.handle;
    const ready = this.vm.state === 'ready' && g !== undefined;
    return {
      vmState: this.vm.state,
      steps: this.steps.snapshot(),
      containers: this.containers.size,
      ...(this.criPod ? { cri: this.criPod } : {}),
      ...(g ? { accel: g.accel, ...(g.vmmPid ? { vmmPid: g.vmmPid } : {}) } : {}),
      ...(ready ? { agent: g.agent, health: g.health } : {}),
    };
  }

  /** The sandbox VM's state, for logs and tests. */
  get vmState(): SandboxVm['state'] {
    return this.vm.state;
  }
}

/** CRI's annotations naming the pod (containerd's CRI sets them on the sandbox container), when all are there. */
function criPodOf(spec: grpc.Spec): SandboxReport['cri'] {
  const a = spec.Annotations ?? {};
  const [name, namespace, uid] = ['io.kubernetes.cri.sandbox-name', 'io.kubernetes.cri.sandbox-namespace', 'io.kubernetes.cri.sandbox-uid'].map((k) => a[k]?.slice(0, 253));
  return name && namespace && uid ? { name, namespace, uid } : undefined;
}

/** A transition whose guest call decides it: claimed first, made when the call succeeds. */
async function inGuest(life: ProcessLifecycle, t: Transition, call: () => Promise<unknown>): Promise<void> {
  life.begin(t);
  try {
    await call();
  } catch (e) {
    life.abandon();
    throw e;
  }
  life.commit();
}

/** `p`, or the abort's reason once `signal` aborts (containerd hung up on a Wait). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e as Error);
      },
    );
  });
}
