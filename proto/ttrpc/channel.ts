// One ttrpc connection's byte plumbing, shared by client and server: frames in through the
// decoder, frames out through a writer that batches everything queued in one tick into a single
// corked write (one writev syscall on a socket instead of one per frame).
//
// Output is bounded. Past the high-water mark the channel is congested until the stream drains:
// a client's senders wait their turn (whenWritable), a server stops reading requests (nothing new
// to answer while the peer does not take its answers). Past maxBufferedBytes the peer counts as
// not reading at all and the connection is dropped.
import type { Duplex } from 'node:stream';
import { FrameDecoder, type Frame, type FrameHeader, HEADER_LENGTH, encodeFrame, encodeHeader } from './frame.js';

// Above this size the payload is written as its own buffer instead of being copied behind the header.
const COPY_LIMIT = 16 * 1024;

/** Output bytes (queued here or inside the stream) from which a channel counts as congested. */
export const DEFAULT_HIGH_WATER_BYTES = 1 << 20;

export interface ChannelHandler {
  frame(f: Frame): void;
  oversized(h: FrameHeader): void;
  closed(err: Error | undefined): void;
}

export interface ChannelOptions {
  maxMessageSize: number;
  highWaterBytes?: number;
  /** Output bytes beyond which the connection is destroyed (the peer is not reading); none when unset. */
  maxBufferedBytes?: number;
  /** Stop reading input while congested, resume on drain. */
  pauseInputWhenCongested?: boolean;
}

export class OutputOverflowError extends Error {
  override readonly name = 'OutputOverflowError';
  readonly code = 'KATATS_TTRPC_OUTPUT_OVERFLOW';
  constructor(
    readonly bufferedBytes: number,
    readonly limit: number,
  ) {
    super(`the peer is not reading: ${bufferedBytes} bytes of output queued (limit ${limit})`);
  }
}

export class Channel {
  private readonly decoder: FrameDecoder;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private flushScheduled = false;
  private isClosed = false;
  private closeError: Error | undefined;
  private congested = false;
  private readonly highWater: number;
  private readonly maxBuffered: number;
  private readonly pauseInput: boolean;
  private readonly waiters: Array<() => void> = [];

  constructor(
    readonly stream: Duplex,
    private readonly handler: ChannelHandler,
    opts: ChannelOptions,
  ) {
    this.decoder = new FrameDecoder(handler, opts.maxMessageSize);
    this.highWater = opts.highWaterBytes ?? DEFAULT_HIGH_WATER_BYTES;
    this.maxBuffered = opts.maxBufferedBytes ?? Infinity;
    this.pauseInput = opts.pauseInputWhenCongested ?? false;
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
    stream.on('drain', () => this.onDrain());
    // A dialer may hand over a stream paused, with bytes put back (the agent channel's handshake).
    if (stream.isPaused()) stream.resume();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get pendingInputBytes(): number {
    return this.decoder.pendingBytes;
  }

  /** Output not yet taken by the peer: queued here plus buffered inside the stream. */
  get bufferedBytes(): number {
    return this.queuedBytes + this.stream.writableLength;
  }

  /** Whether input is held back because the peer does not take its output. */
  get inputPaused(): boolean {
    return this.pauseInput && this.congested;
  }

  send(streamId: number, type: number, flags: number, payload: Uint8Array): void {
    if (this.isClosed) return;
    if (payload.length <= COPY_LIMIT) {
      this.queue.push(encodeFrame(streamId, type, flags, payload));
    } else {
      this.queue.push(encodeHeader({ length: payload.length, streamId, type, flags }, Buffer.allocUnsafe(HEADER_LENGTH)));
      this.queue.push(Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.length));
    }
    this.queuedBytes += HEADER_LENGTH + payload.length;
    if (this.queuedBytes + this.stream.writableLength > this.maxBuffered) {
      this.destroy(new OutputOverflowError(this.bufferedBytes, this.maxBuffered));
      return;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Runs `send` at once when the output is below the high-water mark and nobody waits before it,
   * else in turn once the peer has taken enough. Returns a cancel function while it waits.
   */
  whenWritable(send: () => void): (() => void) | undefined {
    if (this.waiters.length === 0 && !this.full()) {
      send();
      return undefined;
    }
    this.waiters.push(send);
    return () => {
      const i = this.waiters.indexOf(send);
      if (i >= 0) this.waiters.splice(i, 1);
    };
  }

  /** At or over the high-water mark: senders should wait (whenWritable). */
  full(): boolean {
    // What the stream holds counts once it has asked for a drain (congested): only then does a
    // 'drain' come to say it is over.
    return this.congested || this.queuedBytes >= this.highWater;
  }

  private wake(): void {
    while (this.waiters.length > 0 && !this.isClosed && !this.full()) this.waiters.shift()!();
  }

  private flush(): void {
    this.flushScheduled = false;
    const q = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    if (this.isClosed || q.length === 0) return;
    if (q.length === 1) {
      this.stream.write(q[0]);
    } else {
      this.stream.cork();
      for (const b of q) this.stream.write(b);
      this.stream.uncork();
    }
    // 'drain' comes only after a write() said "enough" (writableNeedDrain), so only then can we wait for it.
    if (this.stream.writableNeedDrain && this.stream.writableLength >= this.highWater) {
      if (!this.congested) {
        this.congested = true;
        if (this.pauseInput) this.stream.pause();
      }
    } else {
      this.wake();
    }
  }

  private onDrain(): void {
    if (!this.congested || this.isClosed) return;
    this.congested = false;
    if (this.pauseInput) this.stream.resume();
    this.wake();
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
    this.queuedBytes = 0;
    this.handler.closed(this.closeError);
    // Senders still waiting learn of the close from their own call's failure; let them run out.
    for (const w of this.waiters.splice(0)) w();
  }
}
