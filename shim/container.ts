// One container of the pod as containerd's Task API sees it: its init process, its execs, where
// its files sit in the share, and the order its exits are told in. The init's TaskExit is always
// the container's last (containerd's runc shim, handleInitExit): once the guest reports the init
// gone, no exec may start, the execs still running are killed (in the pod's PID namespace they
// would outlive it), and the init's exit is recorded and published only after theirs.
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import { settleWithin } from '../sys/timeout.js';
import type { ShimProcess, ExitInfo } from './process.js';
import { alreadyExists, invalid, notFound, precondition } from './errdefs.js';
import { AGENT_TEARDOWN_TIMEOUT_MS } from './agent-calls.js';

/** How long the init's exit waits for its execs' exits after they were killed. */
export const EXEC_EXITS_AFTER_INIT_MS = 30_000;
const SIGKILL = 9;

export class ShimContainer {
  readonly execs = new Map<string, ShimProcess>();
  /** The guest reported the init gone: its exit waits for the execs', and no exec starts (runc's containerInitExit). */
  initExited = false;

  constructor(
    readonly id: string,
    readonly bundle: string,
    readonly init: ShimProcess,
    /** Host dir of this container inside the shared directory. */
    readonly sharedDir: string,
    /** The container joined the pod's PID namespace (sandbox_pidns). */
    readonly sandboxPidns: boolean,
    private readonly publishExit: (p: ShimProcess, e: ExitInfo) => void,
    readonly log: Logger,
  ) {}

  /** '' is the init, as containerd's Task API says. */
  process(execId: string): ShimProcess {
    if (!execId) return this.init;
    const p = this.execs.get(execId);
    if (!p) throw notFound(`exec ${execId} in container ${this.id} not found`);
    return p;
  }

  addExec(p: ShimProcess): void {
    if (p.execId === this.id) throw invalid(`exec id ${p.execId} is its container's own id, which names the container's init process`);
    if (this.execs.has(p.execId)) throw alreadyExists(`exec ${p.execId} already exists in container ${this.id}`);
    this.execs.set(p.execId, p);
  }

  /** Refuses an exec's start once the init is gone (its exit may still wait to be published). */
  checkExecStart(): void {
    if (this.initExited || this.init.exit) throw precondition(`container ${this.id}: its init process is not running: cannot start an exec`);
  }

  /** Records an exit and tells containerd, in one step: nothing can come between the two. */
  exitProcess(p: ShimProcess, status: number): void {
    if (p.exit) return;
    this.publishExit(p, p.setExited(status));
  }

  /** Follows a started exec until the guest reports its exit. */
  async followExec(p: ShimProcess): Promise<void> {
    const status = await p.waitInGuest();
    if (status !== undefined) this.exitProcess(p, status);
  }

  /** Follows the started init until it exits, then ends the container in order. */
  async followInit(agent: () => ServiceClient<'grpc.AgentService'>): Promise<void> {
    const status = await this.init.waitInGuest();
    if (status === undefined) return;
    this.initExited = true;
    const live = [...this.execs.values()].filter((p) => !p.exit && (p.life.state !== 'created' || p.life.pending === 'start'));
    if (live.length) {
      this.log.info({ execs: live.map((p) => p.execId) }, 'init exited: ending its execs before reporting it');
      for (const p of live) {
        if (p.life.pending === 'start') continue;
        let client: ServiceClient<'grpc.AgentService'>;
        try {
          client = agent();
        } catch {
          break;
        }
        client
          .SignalProcess({ container_id: this.id, exec_id: p.agentExecId, signal: SIGKILL }, { timeoutMs: AGENT_TEARDOWN_TIMEOUT_MS })
          .catch((err) => p.log.debug({ err }, 'killing an exec after its init failed'));
      }
      const ended = await settleWithin(Promise.allSettled(live.map((p) => p.wait())), EXEC_EXITS_AFTER_INIT_MS);
      if (!ended) this.log.warn({ execs: live.filter((p) => !p.exit).map((p) => p.execId) }, `execs did not end within ${EXEC_EXITS_AFTER_INIT_MS} ms of their init; reporting the init's exit anyway`);
    }
    this.exitProcess(this.init, status);
  }

  /** The VM died: execs first, then the init, every live one with `status`. */
  endAll(status: number): number {
    const live = [...this.execs.values(), this.init].filter((p) => !p.exit && p.life.state !== 'created');
    for (const p of live) this.exitProcess(p, status);
    return live.length;
  }
}
