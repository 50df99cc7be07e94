// A ttrpc client: many calls multiplexed on one connection by odd stream ids. With a dialer it
// reconnects on the next call after the connection drops (an agent that restarted, a shim that
// came back), and calls in flight on the dead connection fail with Unavailable.
import { randomInt } from 'node:crypto';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Channel } from './channel.js';
import { type Frame, type FrameHeader, FrameType, DEFAULT_MAX_MESSAGE_SIZE } from './frame.js';
import { type Metadata, decodeResponse, encodeRequest } from './envelope.js';
import { Code, TtrpcError } from './status.js';
import { silentLogger } from './log.js';

export type Dialer = () => Promise<Duplex> | Duplex;

export interface ClientOptions {
  maxMessageSize?: number;
  logger?: Logger;
  /**
   * Start each connection's stream ids at a random odd number instead of 1. For byte streams that
   * outlive one connection, such as a virtio-serial agent port: the guest cannot always tell two
   * host connections apart, so answers meant for an earlier connection can arrive on this one,
   * and they must not match the ids of this connection's calls.
   */
  randomStreamIds?: boolean;
  /** Unsent output (bytes) from which callers wait for the peer to read before sending (default 1 MiB). */
  highWaterBytes?: number;
}

export interface CallOptions {
  /** Sent as timeout_nano and enforced locally: the call fails with DeadlineExceeded when it passes. */
  timeoutMs?: number;
  metadata?: Metadata | Record<string, string | string[]>;
  signal?: AbortSignal;
}

interface Pending {
  name: string;
  resolve: (payload: Buffer) => void;
  reject: (e: Error) => void;
  cleanup: () => void;
}

/** A call waiting for its turn to send (the peer is not reading fast enough); not on the wire yet. */
interface Waiting {
  name: string;
  fail: (e: TtrpcError) => void;
}

const MAX_STREAM_ID = 0xffffffff;

export class Client {
  private channel: Channel | undefined;
  private connecting: Promise<Channel> | undefined;
  private readonly pending = new Map<number, Pending>();
  private readonly waiting = new Set<Waiting>();
  private nextStreamId: number;
  private userClosed = false;
  readonly maxMessageSize: number;
  private readonly log: Logger;
  private readonly closeWaiters: Array<() => void> = [];

  /** From a connected stream (no reconnect) or a dialer (reconnects on demand). */
  constructor(
    source: Duplex | Dialer,
    opts: ClientOptions = {},
  ) {
    this.maxMessageSize = opts.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    this.log = opts.logger ?? silentLogger;
    this.randomStreamIds = opts.randomStreamIds ?? false;
    this.highWaterBytes = opts.highWaterBytes;
    this.nextStreamId = this.firstStreamId();
    if (typeof source === 'function') this.dialer = source;
    else this.channel = this.attach(source);
  }

  private readonly dialer: Dialer | undefined;
  private readonly randomStreamIds: boolean;
  private readonly highWaterBytes: number | undefined;

  private firstStreamId(): number {
    // Below 2^31: leaves two billion calls before the wrap-around.
    return this.randomStreamIds ? (randomInt(0, 0x40000000) << 1) + 1 : 1;
  }

  /** Dials a unix socket and resolves once connected. */
  static async connect(path: string, opts: ClientOptions = {}): Promise<Client> {
    const c = new Client(() => dialUnix(path), opts);
    await c.ensureChannel();
    return c;
  }

  get connected(): boolean {
    return this.channel !== undefined && !this.channel.closed;
  }

  /** Calls sent and not answered, plus calls waiting to be sent. */
  get inFlight(): number {
    return this.pending.size + this.waiting.size;
  }

  /** Output the peer has not taken yet (bytes). */
  get bufferedBytes(): number {
    return this.channel && !this.channel.closed ? this.channel.bufferedBytes : 0;
  }

  async call(service: string, method: string, payload: Uint8Array, opts: CallOptions = {}): Promise<Buffer> {
    const name = `${service}/${method}`;
    if (this.userClosed) throw new TtrpcError(Code.Unavailable, `${name}: client is closed`);
    if (opts.signal?.aborted) throw new TtrpcError(Code.Canceled, `${name}: canceled before it was sent`);
    if (payload.length > this.maxMessageSize) throw this.tooBig(name, payload.length);
    const timeoutNano = opts.timeoutMs !== undefined && opts.timeoutMs > 0 ? Math.round(opts.timeoutMs * 1e6) : 0;
    const ch = this.channel && !this.channel.closed ? this.channel : await this.ensureChannel();
    return new Promise<Buffer>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let streamId = 0;
      let done = false;
      let cancelWait: (() => void) | undefined;
      const stopWaiting = () => {
        if (!cancelWait) return;
        cancelWait();
        cancelWait = undefined;
        this.waiting.delete(waiting);
      };
      const cleanup = () => {
        done = true;
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        stopWaiting();
      };
      const waiting: Waiting = {
        name,
        fail: (e) => {
          cleanup();
          reject(e);
        },
      };
      // Before the request is on the wire it is only ours to drop; after, the answer is awaited by id.
      const end = (e: TtrpcError) => (streamId ? this.settle(streamId, e) : waiting.fail(e));
      const onAbort = () => end(new TtrpcError(Code.Canceled, `${name}: canceled`));
      if (timeoutNano > 0) {
        timer = setTimeout(
          () => end(new TtrpcError(Code.DeadlineExceeded, `${name}: deadline exceeded after ${opts.timeoutMs} ms`)),
          Math.min(Math.ceil(opts.timeoutMs!), 2 ** 31 - 1),
        );
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      // Encoded only when it is its turn: callers held back by a slow peer keep no copies.
      const send = () => {
        stopWaiting();
        if (done) return;
        if (ch.closed) {
          waiting.fail(new TtrpcError(Code.Unavailable, `${name}: ttrpc: connection closed`));
          return;
        }
        const msg = encodeRequest({ service, method, payload, timeoutNano, metadata: toMetadata(opts.metadata) });
        if (msg.length > this.maxMessageSize) {
          waiting.fail(this.tooBig(name, msg.length));
          return;
        }
        streamId = this.allocStreamId();
        this.pending.set(streamId, { name, resolve, reject, cleanup });
        ch.send(streamId, FrameType.Request, 0, msg);
      };
      cancelWait = ch.whenWritable(send);
      if (cancelWait) this.waiting.add(waiting);
    });
  }

  private tooBig(name: string, n: number): TtrpcError {
    return new TtrpcError(Code.ResourceExhausted, `${name}: request of ${n} bytes exceeds maximum message size of ${this.maxMessageSize}`);
  }

  /** Closes the connection; calls in flight fail with Unavailable. */
  close(): Promise<void> {
    this.userClosed = true;
    const ch = this.channel;
    if (!ch || ch.closed) {
      this.failAll(new TtrpcError(Code.Unavailable, 'ttrpc: client closed'));
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve);
      ch.end();
    });
  }

  private allocStreamId(): number {
    const id = this.nextStreamId;
    this.nextStreamId += 2;
    // Wrap before the u32 runs out; ids in use are long gone by then.
    if (this.nextStreamId > MAX_STREAM_ID) this.nextStreamId = 1;
    return id;
  }

  private async ensureChannel(): Promise<Channel> {
    if (this.channel && !this.channel.closed) return this.channel;
    if (!this.dialer) throw new TtrpcError(Code.Unavailable, 'ttrpc: connection closed');
    if (!this.connecting) {
      const dial = this.dialer;
      this.connecting = (async () => {
        try {
          const stream = await dial();
          this.nextStreamId = this.firstStreamId();
          this.channel = this.attach(stream);
          return this.channel;
        } catch (e) {
          throw new TtrpcError(Code.Unavailable, `ttrpc: dial failed: ${(e as Error).message}`);
        } finally {
          this.connecting = undefined;
        }
      })();
    }
    return this.connecting;
  }

  private attach(stream: Duplex): Channel {
    const ch: Channel = new Channel(
      stream,
      {
        frame: (f) => this.onFrame(f),
        oversized: (h) => this.onOversized(h),
        closed: (err) => {
          if (this.channel === ch) this.channel = undefined;
          this.failAll(new TtrpcError(Code.Unavailable, `ttrpc: connection closed${err ? `: ${err.message}` : ''}`));
          for (const w of this.closeWaiters.splice(0)) w();
        },
      },
      { maxMessageSize: this.maxMessageSize, highWaterBytes: this.highWaterBytes },
    );
    return ch;
  }

  private onFrame(f: Frame): void {
    if (f.type !== FrameType.Response) {
      this.log.debug({ type: f.type, streamId: f.streamId }, 'ttrpc client: ignoring non-response frame');
      return;
    }
    const p = this.pending.get(f.streamId);
    if (!p) return; // late answer to a call that already timed out or was canceled
    let res;
    try {
      res = decodeResponse(f.payload);
    } catch (e) {
      this.settle(f.streamId, new TtrpcError(Code.Internal, `${p.name}: malformed response: ${(e as Error).message}`));
      return;
    }
    if (res.status && res.status.code !== Code.OK) {
      this.settle(f.streamId, new TtrpcError(res.status.code, res.status.message, res.status.details));
      return;
    }
    this.settle(f.streamId, undefined, Buffer.from(res.payload.buffer, res.payload.byteOffset, res.payload.length));
  }

  private onOversized(h: FrameHeader): void {
    const p = this.pending.get(h.streamId);
    if (!p) return;
    this.settle(
      h.streamId,
      new TtrpcError(Code.ResourceExhausted, `${p.name}: response of ${h.length} bytes exceeds maximum message size of ${this.maxMessageSize}`),
    );
  }

  private settle(streamId: number, err: Error | undefined, payload?: Buffer): void {
    const p = this.pending.get(streamId);
    if (!p) return;
    this.pending.delete(streamId);
    p.cleanup();
    if (err) p.reject(err);
    else p.resolve(payload!);
  }

  private failAll(err: TtrpcError): void {
    for (const [id, p] of [...this.pending]) {
      this.settle(id, new TtrpcError(err.code, `${p.name}: ${err.message}`));
    }
    for (const w of [...this.waiting]) w.fail(new TtrpcError(err.code, `${w.name}: ${err.message}`));
  }
}

function toMetadata(md: CallOptions['metadata']): Metadata {
  if (!md) return new Map();
  if (md instanceof Map) return md;
  const out: Metadata = new Map();
  for (const [k, v] of Object.entries(md)) out.set(k, Array.isArray(v) ? v : [v]);
  return out;
}

export function dialUnix(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}
