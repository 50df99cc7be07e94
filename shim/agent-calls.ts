// How long an agent call made for a Task request may take. containerd's deadline for the request
// (ttrpc timeout_nano, the handler's CallContext.deadline) travels on to the agent call it causes,
// and a request containerd gives up on cancels its agent call; on top of that, setup calls have
// their own named bound and the others a default one: a wedged guest fails the request instead
// of hanging it.
import type { CallContext, CallOptions } from '../proto/ttrpc/index.js';

/** CreateSandbox, CreateContainer, StartContainer, ExecProcess: guest work that may take a while under TCG. */
export const AGENT_SETUP_TIMEOUT_MS = 120_000;
/** Signals, pause/resume, resize, stats, update: the agent answers these at once when it is alive. */
export const AGENT_REQUEST_TIMEOUT_MS = 60_000;
/** RemoveContainer and DestroySandbox at teardown: a dead guest must not hold a Delete. */
export const AGENT_TEARDOWN_TIMEOUT_MS = 10_000;

function timeoutFor(ctx: CallContext | undefined, boundMs: number): number {
  const left = ctx?.deadline !== undefined ? Math.max(1, ctx.deadline - Date.now()) : undefined;
  return left === undefined ? boundMs : Math.min(left, boundMs);
}

/** An agent call made on behalf of a request: its deadline, and canceled with the request. */
export function requestCall(ctx: CallContext | undefined, boundMs = AGENT_REQUEST_TIMEOUT_MS): CallOptions {
  return { timeoutMs: timeoutFor(ctx, boundMs), ...(ctx ? { signal: ctx.signal } : {}) };
}

/**
 * A setup call: the request's deadline, but not canceled when containerd hangs up, since the
 * guest would go on with what the shim then no longer tracks; a setup call that times out is
 * undone by its caller.
 */
export function setupCall(ctx: CallContext | undefined): CallOptions {
  return { timeoutMs: timeoutFor(ctx, AGENT_SETUP_TIMEOUT_MS) };
}
