// containerd's error kinds (errdefs), mapped to gRPC status codes at exactly one boundary (the
// server), the way containerd's own services do: its proxy client turns the code back into the
// same errdefs error, so `ctr` and CRI see NotFound, AlreadyExists, ... as from a built-in
// snapshotter.
import { status } from '@grpc/grpc-js';

export type ErrKind = 'NotFound' | 'AlreadyExists' | 'FailedPrecondition' | 'InvalidArgument' | 'NotImplemented' | 'Unavailable' | 'Internal';

export const GRPC_CODE: Record<ErrKind, status> = {
  NotFound: status.NOT_FOUND,
  AlreadyExists: status.ALREADY_EXISTS,
  FailedPrecondition: status.FAILED_PRECONDITION,
  InvalidArgument: status.INVALID_ARGUMENT,
  NotImplemented: status.UNIMPLEMENTED,
  Unavailable: status.UNAVAILABLE,
  Internal: status.INTERNAL,
};

export class SnapshotError extends Error {
  override readonly name = 'SnapshotError';
  constructor(
    readonly kind: ErrKind,
    message: string,
  ) {
    super(message);
  }
}

export const notFound = (m: string) => new SnapshotError('NotFound', m);
export const alreadyExists = (m: string) => new SnapshotError('AlreadyExists', m);
export const failedPrecondition = (m: string) => new SnapshotError('FailedPrecondition', m);
export const invalidArgument = (m: string) => new SnapshotError('InvalidArgument', m);
export const notImplemented = (m: string) => new SnapshotError('NotImplemented', m);
