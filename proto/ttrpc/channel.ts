// One ttrpc connection's byte plumbing, shared by client and server: frames in through the
// decoder, frames out through a writer that batches everything queued in one tick into a single
// corked write (one writev syscall on a socket instead of one per frame).
import type { Duplex } from 'node:stream';
import { FrameDecoder, type Frame, type FrameHeader, HEADER_LENGTH, encodeFrame, encodeHeader } from './frame.js';

// Above this size the payload is written as its own buffer instead of being copied behind the header.
const COPY_LIMIT = 16 * 1024;

export interface ChannelHandler {
  frame(f: Frame): void;
  oversized(h: FrameHeader): void;
  closed(err: Error | undefined): void;
}

export class Channel {
  private readonly decoder: FrameDecoder;
  private queue: Buffer[] = [];
  private flushScheduled = false;
  private isClosed = false;
  private closeError: Error | undefined;

  constructor(
    readonly stream: Duplex,
    private readonly handler: ChannelHandler,
    readonly maxMessageSize: number,
  ) {
    this.decoder = new FrameDecoder(handler, maxMessageSize);
    stream.on('data', (chunk: Buffer) => {
      if (this.isClosed) return;
      try {
        this.decoder.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      } catch (e) {
        // A sink that throws is a bug in our code, not in the peer's bytes; drop this connection only.
        this.destroy(e instanceof Error ? e : new Error(String(e)));
      }
    });
    stream.on('error', (e: Error) => this.finish(e));
    stream.on('close', () => this.finish(undefined));
    stream.on('end', () => {
      // The peer will send nothing more; ttrpc has no half-close, so the connection is over.
      this.finish(undefined);
      stream.destroy();
    });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get pendingInputBytes(): number {
    return this.decoder.pendingBytes;
  }

  send(streamId: number, type: number, flags: number, payload: Uint8Array): void {
    if (this.isClosed) return;
    if (payload.length <= COPY_LIMIT) {
      this.queue.push(encodeFrame(streamId, type, flags, payload));
    } else {
      this.queue.push(encodeHeader({ length: payload.length, streamId, type, flags }, Buffer.allocUnsafe(HEADER_LENGTH)));
      this.queue.push(Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.length));
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    const q = this.queue;
    this.queue = [];
    if (this.isClosed || q.length === 0) return;
    if (q.length === 1) {
      this.stream.write(q[0]);
      return;
    }
    this.stream.cork();
    for (const b of q) this.stream.write(b);
    this.stream.uncork();
  }

  /** Sends what is queued, then closes. */
  end(): void {
    if (this.isClosed) return;
    this.flush();
    this.stream.end();
    // A peer that never closes its side must not keep the socket (and a server's close) alive.
    setTimeout(() => this.stream.destroy(), 1000).unref();
    this.finish(undefined);
  }

  destroy(err?: Error): void {
    if (!this.stream.destroyed) this.stream.destroy();
    this.finish(err);
  }

  private finish(err: Error | undefined): void {
    if (err && !this.closeError) this.closeError = err;
    if (this.isClosed) return;
    this.isClosed = true;
    this.queue = [];
    this.handler.closed(this.closeError);
  }
}
