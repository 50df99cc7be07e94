// One error taxonomy for the shim, after containerd's errdefs: code below the Task API throws a
// ShimError of a kind (or the typed error of its own module: config, OCI spec, cgroups, ids, a
// named timeout), and the Task service turns whatever a handler throws into a ttrpc status in exactly
// one place, withWireErrors(). Answers of the agent are ttrpc errors already and keep their code.
import { Code, TtrpcError } from '../proto/ttrpc/index.js';
import { OciSpecError } from '../proto/oci.js';
import { TimeoutError } from '../sys/timeout.js';
import { InvalidIdError } from '../sys/ids.js';
import { CgroupError } from './cgroups.js';
import { ConfigError } from './config.js';

export type ErrorKind = 'NotFound' | 'AlreadyExists' | 'FailedPrecondition' | 'InvalidArgument' | 'Unavailable' | 'Unimplemented';

export class ShimError extends Error {
  override readonly name = 'ShimError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export const notFound = (message: string) => new ShimError('NotFound', message);
export const alreadyExists = (message: string) => new ShimError('AlreadyExists', message);
export const precondition = (message: string) => new ShimError('FailedPrecondition', message);
export const invalid = (message: string) => new ShimError('InvalidArgument', message);
export const unimplemented = (message: string) => new ShimError('Unimplemented', message);

const WIRE: Record<ErrorKind, number> = {
  NotFound: Code.NotFound,
  AlreadyExists: Code.AlreadyExists,
  FailedPrecondition: Code.FailedPrecondition,
  InvalidArgument: Code.InvalidArgument,
  Unavailable: Code.Unavailable,
  Unimplemented: Code.Unimplemented,
};

/** The ttrpc form of anything a handler threw. Unknown errors keep their message (the server says Unknown). */
export function wireError(e: unknown): Error {
  if (e instanceof TtrpcError) return e;
  if (e instanceof ShimError) return new TtrpcError(WIRE[e.kind], e.message);
  const invalidInput = e instanceof ConfigError || e instanceof OciSpecError || e instanceof CgroupError || e instanceof InvalidIdError;
  if (invalidInput) return new TtrpcError(Code.InvalidArgument, e.message);
  if (e instanceof TimeoutError) return new TtrpcError(Code.DeadlineExceeded, e.message);
  return e instanceof Error ? e : new Error(String(e));
}

type Handler = (req: never, ctx: never) => unknown;

/** Wraps every handler of a service implementation so that its errors leave as wire errors. */
export function withWireErrors<T extends { [K in keyof T]?: Handler }>(impl: T): T {
  const out: Record<string, Handler> = {};
  for (const [name, fn] of Object.entries(impl) as Array<[string, Handler | undefined]>) {
    if (!fn) continue;
    out[name] = (async (req: never, ctx: never) => {
      try {
        return await fn(req, ctx);
      } catch (e) {
        throw wireError(e);
      }
    }) as Handler;
  }
  return out as T;
}
