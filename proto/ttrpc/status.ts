// Errors travel as google.rpc.Status with gRPC codes, exactly as Go's ttrpc sends them.

export const Code = {
  OK: 0,
  Canceled: 1,
  Unknown: 2,
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  PermissionDenied: 7,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  Aborted: 10,
  OutOfRange: 11,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14,
  DataLoss: 15,
  Unauthenticated: 16,
} as const;
export type Code = (typeof Code)[keyof typeof Code];

const codeNames = new Map<number, string>(Object.entries(Code).map(([k, v]) => [v, k]));

export function codeName(code: number): string {
  return codeNames.get(code) ?? `Code(${code})`;
}

export interface StatusDetail {
  type_url: string;
  value: Uint8Array;
}

export class TtrpcError extends Error {
  override readonly name = 'TtrpcError';
  constructor(
    readonly code: number,
    message: string,
    readonly details: StatusDetail[] = [],
  ) {
    super(message);
  }

  override toString(): string {
    return `ttrpc: ${codeName(this.code)}: ${this.message}`;
  }
}

/** Maps anything a handler throws onto a status, keeping the message a peer can act on. */
export function toStatus(e: unknown): { code: number; message: string; details: StatusDetail[] } {
  if (e instanceof TtrpcError) return { code: e.code, message: e.message, details: e.details };
  if (e instanceof Error) {
    const errno = (e as NodeJS.ErrnoException).code;
    if (errno === 'ENOENT') return { code: Code.NotFound, message: e.message, details: [] };
    if (errno === 'EEXIST') return { code: Code.AlreadyExists, message: e.message, details: [] };
    if (errno === 'EACCES' || errno === 'EPERM') return { code: Code.PermissionDenied, message: e.message, details: [] };
    return { code: Code.Unknown, message: e.message, details: [] };
  }
  return { code: Code.Unknown, message: String(e), details: [] };
}
