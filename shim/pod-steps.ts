// How this pod's start went: the duration of each step of the pod path, and whether its VM was a
// template's clone or a cold boot. One record per shim (one shim per pod), filled in as the steps
// happen and read by the monitor endpoint (monitor-endpoint.ts). A step is kept the first time it
// is done: "create_container" is the pod's first container, the one that waits for everything else.
// Work on the pod path adds steps by calling done() with a name of its own.

/** The steps the shim records today, in the order a pod goes through them. */
export const POD_STEPS = ['shim_serving', 'vm_ready', 'create_sandbox', 'create_container', 'start'] as const;

/** Step names become Prometheus label values: short snake case only. */
const STEP_NAME = /^[a-z][a-z0-9_]{0,62}$/;
/** A record is read on every scrape: a bug adding steps in a loop must not grow it without end. */
export const MAX_STEPS = 32;

export type BootPath = 'template' | 'cold';

export interface PodStepsSnapshot {
  /** Step name -> milliseconds. */
  steps: Record<string, number>;
  bootPath?: BootPath;
}

export class PodSteps {
  private readonly steps = new Map<string, number>();
  private boot: BootPath | undefined;

  /** Records a step's duration unless the step was recorded before. Returns the ms, for the log line. */
  done(step: string, ms: number): number {
    if (!STEP_NAME.test(step)) throw new Error(`pod step ${JSON.stringify(step)}: not a snake_case name`);
    const v = Math.max(0, Math.round(ms));
    if (!this.steps.has(step) && this.steps.size < MAX_STEPS) this.steps.set(step, v);
    return v;
  }

  /** Times `fn` as `step` (recorded only when it succeeds: a failed step has no duration to compare). */
  async time<T>(step: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    const v = await fn();
    this.done(step, performance.now() - t0);
    return v;
  }

  set bootPath(p: BootPath) {
    this.boot ??= p;
  }

  snapshot(): PodStepsSnapshot {
    return { steps: Object.fromEntries(this.steps), ...(this.boot ? { bootPath: this.boot } : {}) };
  }
}

/** The env var `start` hands the daemon: when containerd ran `start` (ms since the epoch). */
export const SHIM_STARTED_AT_ENV = 'KATATS_SHIM_STARTED_AT';

/** When `start` began, from the env, or this process's own start when absent or not plausible. */
export function shimStartedAt(env: NodeJS.ProcessEnv = process.env, now = Date.now()): number {
  const v = Number(env[SHIM_STARTED_AT_ENV]);
  const own = performance.timeOrigin;
  // `start` ran just before this daemon: an hour off is not a start time but someone else's value.
  return Number.isFinite(v) && v <= now && now - v < 3_600_000 ? v : own;
}
