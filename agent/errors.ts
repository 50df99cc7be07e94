// Errors the agent answers with: a ttrpc status code and a message that names the object.
import { Code, TtrpcError } from '../proto/ttrpc/index.js';

export { Code, TtrpcError };

export const notFound = (what: string): TtrpcError => new TtrpcError(Code.NotFound, `${what} not found`);
export const alreadyExists = (what: string): TtrpcError => new TtrpcError(Code.AlreadyExists, `${what} already exists`);
export const invalid = (msg: string): TtrpcError => new TtrpcError(Code.InvalidArgument, msg);
export const precondition = (msg: string): TtrpcError => new TtrpcError(Code.FailedPrecondition, msg);
export const denied = (msg: string): TtrpcError => new TtrpcError(Code.PermissionDenied, msg);
export const internal = (msg: string): TtrpcError => new TtrpcError(Code.Internal, msg);
export const unavailable = (msg: string): TtrpcError => new TtrpcError(Code.Unavailable, msg);

/** Wraps any failure as a ttrpc error whose message starts with `context`, keeping a code we chose. */
export function withContext(context: string, e: unknown): TtrpcError {
  if (e instanceof TtrpcError) return new TtrpcError(e.code, `${context}: ${e.message}`, e.details);
  const err = e as NodeJS.ErrnoException;
  const msg = err?.message ?? String(e);
  switch (err?.code) {
    case 'ENOENT':
      return new TtrpcError(Code.NotFound, `${context}: ${msg}`);
    case 'EEXIST':
      return new TtrpcError(Code.AlreadyExists, `${context}: ${msg}`);
    case 'EACCES':
    case 'EPERM':
      return new TtrpcError(Code.PermissionDenied, `${context}: ${msg}`);
    case 'EINVAL':
      return new TtrpcError(Code.InvalidArgument, `${context}: ${msg}`);
    default:
      return new TtrpcError(Code.Internal, `${context}: ${msg}`);
  }
}
