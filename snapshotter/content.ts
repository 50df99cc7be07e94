// containerd's content service over its gRPC socket (@grpc/grpc-js, messages from the project's
// protobuf registry): Info, List and Read (streamed), each in a containerd namespace
// (the `containerd-namespace` header), each wait bounded: unary calls by a deadline, streams by an
// idle limit (no data for that long cancels the call) and, for whole-blob reads, a size limit.
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { root } from '../proto/registry.js';
import type { containerd } from '../proto/gen/types.js';
import { TimeoutError } from '../sys/timeout.js';

const SERVICE = 'containerd.services.content.v1.Content';
export const CONTENT_IDLE_TIMEOUT = 'KATATS_CONTENT_IDLE_TIMEOUT';

export type ContentInfo = containerd.services.content.v1.Info;

export class ContentError extends Error {
  override readonly name = 'ContentError';
  constructor(
    readonly rpc: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`content ${rpc}: ${grpc.status[code] ?? code}: ${details}`);
  }
}

export interface ContentClientOptions {
  /** Deadline of Info and the start of a stream (default 30 s). */
  callTimeoutMs?: number;
  /** A stream that delivers nothing for this long is cancelled (default 60 s). */
  idleTimeoutMs?: number;
}

function method(name: string): { path: string; req: protobuf.Type; res: protobuf.Type } {
  const m = root.lookupService(SERVICE).methods[name]!;
  return { path: `/${SERVICE}/${name}`, req: m.resolvedRequestType!, res: m.resolvedResponseType! };
}

const NS = /^[A-Za-z0-9][A-Za-z0-9._-]{0,75}$/;

export class ContentClient {
  private readonly client: grpc.Client;
  private readonly callTimeoutMs: number;
  private readonly idleTimeoutMs: number;

  constructor(
    readonly socket: string,
    o: ContentClientOptions = {},
  ) {
    this.client = new grpc.Client(socket.startsWith('unix:') ? socket : `unix://${socket}`, grpc.credentials.createInsecure(), {
      'grpc.default_authority': 'localhost',
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
    this.callTimeoutMs = o.callTimeoutMs ?? 30_000;
    this.idleTimeoutMs = o.idleTimeoutMs ?? 60_000;
  }

  close(): void {
    this.client.close();
  }

  private meta(namespace: string): grpc.Metadata {
    if (!NS.test(namespace)) throw new Error(`content: invalid namespace ${JSON.stringify(namespace)}`);
    const md = new grpc.Metadata();
    md.set('containerd-namespace', namespace);
    return md;
  }

  info(namespace: string, digest: string): Promise<ContentInfo> {
    const m = method('Info');
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        m.path,
        (x: object) => Buffer.from(m.req.encode(m.req.fromObject(x)).finish()),
        (b: Buffer) => m.res.decode(b) as unknown as { info: ContentInfo },
        { digest },
        this.meta(namespace),
        { deadline: new Date(Date.now() + this.callTimeoutMs) },
        (err, res) => (err ? reject(new ContentError('Info', err.code, err.details)) : resolve(res!.info)),
      );
    });
  }

  /** A server stream as an async iterable, cancelled when idle too long or when the consumer stops. */
  private async *stream<T>(name: string, req: object, namespace: string): AsyncGenerator<T> {
    const m = method(name);
    const call = this.client.makeServerStreamRequest(
      m.path,
      (x: object) => Buffer.from(m.req.encode(m.req.fromObject(x)).finish()),
      (b: Buffer) => m.res.decode(b) as unknown as T,
      req,
      this.meta(namespace),
      {},
    );
    let idle: NodeJS.Timeout | undefined;
    let timedOut = false;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        timedOut = true;
        call.cancel();
      }, this.idleTimeoutMs);
      idle.unref();
    };
    arm();
    try {
      for await (const msg of call as AsyncIterable<T>) {
        arm();
        yield msg;
      }
    } catch (e) {
      if (timedOut) throw new TimeoutError(CONTENT_IDLE_TIMEOUT, `content ${name}: no data from containerd`, this.idleTimeoutMs);
      const ge = e as grpc.ServiceError;
      throw new ContentError(name, ge.code ?? grpc.status.UNKNOWN, ge.details ?? String(e));
    } finally {
      clearTimeout(idle);
      call.cancel();
    }
  }

  /** Every content info matching any of the filters (containerd's filter syntax). */
  async list(namespace: string, filters: string[], max = 100_000): Promise<ContentInfo[]> {
    const out: ContentInfo[] = [];
    for await (const r of this.stream<{ info: ContentInfo[] }>('List', { filters }, namespace)) {
      out.push(...r.info);
      if (out.length > max) throw new Error(`content List: more than ${max} blobs`);
    }
    return out;
  }

  /** The blob's bytes as they arrive (in offset order; containerd sends them so). */
  async *read(namespace: string, digest: string): AsyncGenerator<Buffer> {
    let expect = 0;
    for await (const r of this.stream<{ offset: number; data: Uint8Array }>('Read', { digest, offset: 0, size: 0 }, namespace)) {
      if (Number(r.offset) !== expect) throw new ContentError('Read', grpc.status.DATA_LOSS, `${digest}: chunk at offset ${r.offset}, expected ${expect}`);
      expect += r.data.length;
      yield Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    }
  }

  /** A whole (small) blob, refused past `max` bytes. */
  async readAll(namespace: string, digest: string, max: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const b of this.read(namespace, digest)) {
      n += b.length;
      if (n > max) throw new Error(`content ${digest}: larger than ${max} bytes`);
      parts.push(b);
    }
    return Buffer.concat(parts);
  }
}
