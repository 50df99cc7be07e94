// Every wait in katats has a name and a limit. A wait that runs out rejects with a TimeoutError
// whose `code` says which wait it was (undici's style: callers and tests match codes, not text).

export class TimeoutError extends Error {
  override readonly name = 'TimeoutError';
  constructor(
    /** Stable, upper-case, e.g. KATATS_QMP_TIMEOUT. */
    readonly code: string,
    /** What was being waited for, in words. */
    readonly what: string,
    readonly timeoutMs: number,
  ) {
    super(`${what}: not done within ${timeoutMs} ms (${code})`);
  }
}

export function isTimeout(e: unknown, code?: string): e is TimeoutError {
  return e instanceof TimeoutError && (code === undefined || e.code === code);
}

export interface TimeoutOptions {
  code: string;
  what: string;
  /** Called once when the limit passes (kill the child, abort the request, ...). */
  onTimeout?: () => void;
}

/** `p`, or a TimeoutError after `ms`. The timer never keeps the process alive. */
export function withTimeout<T>(p: Promise<T>, ms: number, o: TimeoutOptions): Promise<T> {
  if (!Number.isFinite(ms) || ms <= 0) return p;
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => {
      try {
        o.onTimeout?.();
      } finally {
        reject(new TimeoutError(o.code, o.what, ms));
      }
    }, Math.min(ms, 2 ** 31 - 1));
    t.unref();
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/** Whether `p` settles within `ms` (its own rejection counts as settled). Never rejects. */
export function settleWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const t = setTimeout(() => resolve(false), Math.max(0, ms));
    t.unref();
    const done = () => {
      clearTimeout(t);
      resolve(true);
    };
    p.then(done, done);
  });
}

export function sleep(ms: number, o: { unref?: boolean } = {}): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (o.unref) t.unref();
  });
}
