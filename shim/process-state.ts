// A task process's lifecycle as one explicit table (containerd's runc shim keeps a small type per
// state): which requests each state admits and where each transition leads. A request its state
// does not admit fails before anything reaches the guest, with FailedPrecondition naming the
// state (a kill of a finished process is NotFound, as containerd expects).
import { notFound, precondition } from './errdefs.js';

export type ProcessState = 'created' | 'running' | 'paused' | 'stopped' | 'deleted';
export type Transition = 'start' | 'pause' | 'resume' | 'exit' | 'delete';
/** Requests that leave the state as it is. */
export type Request = 'kill' | 'exec' | 'resize' | 'closeIO' | 'update' | 'stats';

const MACHINE: Record<ProcessState, { to: Partial<Record<Transition, ProcessState>>; admits: readonly Request[] }> = {
  created: { to: { start: 'running', exit: 'stopped', delete: 'deleted' }, admits: ['kill', 'resize', 'closeIO', 'update', 'stats'] },
  running: { to: { pause: 'paused', exit: 'stopped' }, admits: ['kill', 'exec', 'resize', 'closeIO', 'update', 'stats'] },
  paused: { to: { resume: 'running', exit: 'stopped' }, admits: ['kill', 'closeIO', 'update', 'stats'] },
  stopped: { to: { delete: 'deleted' }, admits: ['closeIO', 'stats'] },
  deleted: { to: {}, admits: [] },
};

export class ProcessLifecycle {
  private current: ProcessState = 'created';
  /**
   * A transition whose guest call is in flight (Start, Pause, Resume): a second one waits its
   * turn as an error instead of racing the first.
   */
  private inFlight: Transition | undefined;

  constructor(
    /** "container c1" or "exec e1 of container c1", for errors. */
    readonly label: string,
  ) {}

  get state(): ProcessState {
    return this.current;
  }

  get pending(): Transition | undefined {
    return this.inFlight;
  }

  allows(what: Transition | Request): boolean {
    const row = MACHINE[this.current];
    return (row.to as Record<string, ProcessState | undefined>)[what] !== undefined || (row.admits as readonly string[]).includes(what);
  }

  /** Throws unless the current state admits `what`. */
  check(what: Transition | Request): void {
    if (this.allows(what) && !(this.inFlight && what === this.inFlight)) return;
    if (what === 'kill' && (this.current === 'stopped' || this.current === 'deleted')) throw notFound(`${this.label}: process already finished`);
    const doing = this.inFlight ? ` (${this.inFlight} in progress)` : '';
    throw precondition(`${this.label} is ${this.current}${doing}: cannot ${what}`);
  }

  /** Claims a transition whose guest call comes next; commit() or abandon() ends the claim. */
  begin(t: Transition): void {
    this.check(t);
    if (this.inFlight) throw precondition(`${this.label} is ${this.current} (${this.inFlight} in progress): cannot ${t}`);
    this.inFlight = t;
  }

  commit(): void {
    const t = this.inFlight;
    this.inFlight = undefined;
    // The process may have exited while the call was in flight: the exit stands.
    if (t && this.allows(t)) this.to(t);
  }

  abandon(): void {
    this.inFlight = undefined;
  }

  to(t: Transition): ProcessState {
    this.check(t);
    this.current = MACHINE[this.current].to[t]!;
    return this.current;
  }
}
