// The one protobuf Root of the process, built once from the generated descriptor.
import protobuf from 'protobufjs';
import { descriptor } from './gen/descriptor.js';
import type { Messages } from './gen/types.js';

// 64-bit fields become JS numbers instead of Long objects: our values (byte counts, nanosecond
// timeouts, pids, timestamps in seconds) stay far below 2^53. Must run before any type is built.
protobuf.util.Long = undefined as unknown as typeof protobuf.util.Long;
protobuf.configure();

export const root: protobuf.Root = protobuf.Root.fromJSON(descriptor as protobuf.INamespace);
root.resolveAll();

export type MessageName = keyof Messages;

/** What a caller may pass where a message is encoded: any subset of its fields, nested too. */
export type Init<T> = T extends Uint8Array
  ? Uint8Array
  : T extends Array<infer E>
    ? Array<Init<E>>
    : T extends object
      ? { [K in keyof T]?: Init<NonNullable<T[K]>> | null }
      : T;

const types = new Map<string, protobuf.Type>();

export function messageType(name: MessageName | string): protobuf.Type {
  let t = types.get(name);
  if (!t) {
    t = root.lookupType(name);
    types.set(name, t);
  }
  return t;
}

export function encode<N extends MessageName>(name: N, msg: Init<Messages[N]>): Uint8Array {
  return messageType(name).encode(msg as protobuf.Message).finish();
}

export function decode<N extends MessageName>(name: N, bytes: Uint8Array): Messages[N] {
  return messageType(name).decode(bytes) as unknown as Messages[N];
}

/**
 * Packs a message into google.protobuf.Any. containerd names packed types by their bare full
 * name (typeurl's convention), without the type.googleapis.com/ prefix.
 */
export function packAny<N extends MessageName>(name: N, msg: Init<Messages[N]>, typeUrl: string = name): Messages['google.protobuf.Any'] {
  return { type_url: typeUrl, value: encode(name, msg) };
}

/** google.protobuf.Timestamp of a Date (now by default). */
export function timestamp(d: Date = new Date()): { seconds: number; nanos: number } {
  const ms = d.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

export function unpackAny(any: { type_url: string; value: Uint8Array }): { name: string; message: unknown } {
  const name = any.type_url.replace(/^.*\//, '');
  return { name, message: messageType(name).decode(any.value) };
}
