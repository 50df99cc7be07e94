// The TypeScript side of the interop peer: the same katats.interop.v1.Peer service the Go
// ttrpcpeer serves, on our ttrpc Server, so either side can be client or server.
import protobuf from 'protobufjs';
import { Code, Server, TtrpcError, type ServerOptions } from '../../proto/ttrpc/index.js';

export const PEER_SERVICE = 'katats.interop.v1.Peer';

/** google.protobuf.BytesValue: the message both peers use for requests and responses. */
export function bytesValue(b: Uint8Array): Uint8Array {
  const w = protobuf.Writer.create();
  if (b.length) w.uint32(10).bytes(b);
  return w.finish();
}

export function fromBytesValue(msg: Uint8Array): Buffer {
  const r = protobuf.Reader.create(msg);
  let out: Uint8Array = new Uint8Array(0);
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === 10) out = r.bytes();
    else r.skipType(tag & 7);
  }
  return Buffer.from(out.buffer, out.byteOffset, out.length);
}

export function peerServer(opts: ServerOptions = {}): Server {
  const s = new Server(opts);
  s.registerRaw(PEER_SERVICE, {
    Echo: (p) => bytesValue(fromBytesValue(p)),
    Fail: (p) => {
      const { code, message } = JSON.parse(fromBytesValue(p).toString()) as { code: number; message: string };
      throw new TtrpcError(code, message);
    },
    Metadata: (p, ctx) => {
      const key = fromBytesValue(p).toString();
      const v = ctx.metadata.get(key);
      if (!v) throw new TtrpcError(Code.NotFound, `metadata key ${key} not found`);
      return bytesValue(Buffer.from(v.join(',')));
    },
    Sleep: (p, ctx) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => resolve(bytesValue(Buffer.alloc(0))), Number(fromBytesValue(p).toString()));
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(t);
          reject(ctx.signal.reason);
        });
      }),
    Deadline: (_p, ctx) =>
      bytesValue(Buffer.from(ctx.deadline === undefined ? 'none' : String(Math.round(ctx.deadline - Date.now())))),
  });
  return s;
}
