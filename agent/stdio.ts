// A process's stdio as the agent API exposes it: ReadStdout/ReadStderr pull from a bounded
// buffer (past the bound the FIFO is left unread, so a slow reader stalls the writer, not the
// agent's memory), WriteStdin pushes into a FIFO and answers once the bytes are in the pipe.
import fs from 'node:fs';
import net from 'node:net';
import { TtrpcError, Code } from './errors.js';

const { O_RDONLY, O_RDWR, O_NONBLOCK } = fs.constants;

/** Upstream's agent answers a read at end of stream with an error whose text says "eof". */
export const EOF_MESSAGE = 'read meet eof';

export class OutputBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  private ended = false;
  private paused = false;
  private waiters: Array<() => void> = [];
  private readLock: Promise<unknown> = Promise.resolve();
  private sock: net.Socket | undefined;
  /** total bytes that went through, for logs and tests */
  bytesIn = 0;

  constructor(
    readonly name: string,
    private readonly limit: number,
  ) {}

  /** Starts reading a FIFO (opened non-blocking) whose writer is already open. */
  attachFifo(fd: number): void {
    const sock = new net.Socket({ fd, readable: true, writable: false });
    this.sock = sock;
    sock.on('data', (b: Buffer) => this.push(b));
    sock.on('end', () => this.end());
    sock.on('close', () => this.end());
    sock.on('error', () => this.end());
  }

  /** A stream that will never carry data (stderr of a terminal process). */
  endNow(): void {
    this.end();
  }

  get buffered(): number {
    return this.size;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  get done(): boolean {
    return this.ended && this.size === 0;
  }

  private push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.size += b.length;
    this.bytesIn += b.length;
    if (this.size >= this.limit && !this.paused && this.sock) {
      this.paused = true;
      this.sock.pause();
    }
    this.wake();
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /**
   * Up to `len` bytes, waiting until some arrive. At end of stream (everything already read)
   * it fails as upstream's agent does. Concurrent reads are served one after another.
   */
  read(len: number, signal?: AbortSignal): Promise<Buffer> {
    const run = this.readLock.then(() => this.readOne(len, signal));
    this.readLock = run.catch(() => undefined);
    return run;
  }

  private async readOne(len: number, signal?: AbortSignal): Promise<Buffer> {
    if (len <= 0) throw new TtrpcError(Code.InvalidArgument, `${this.name}: read length must be positive`);
    while (this.size === 0 && !this.ended) {
      if (signal?.aborted) throw signal.reason ?? new TtrpcError(Code.Canceled, `${this.name}: read canceled`);
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        this.waiters.push(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        });
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    }
    if (this.size === 0) throw new TtrpcError(Code.Internal, `${this.name}: ${EOF_MESSAGE}`);
    const parts: Buffer[] = [];
    let want = len;
    while (want > 0 && this.chunks.length) {
      const c = this.chunks[0]!;
      if (c.length <= want) {
        parts.push(c);
        this.chunks.shift();
        want -= c.length;
      } else {
        parts.push(c.subarray(0, want));
        this.chunks[0] = c.subarray(want);
        want = 0;
      }
    }
    const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    this.size -= out.length;
    if (this.paused && this.size < this.limit / 2 && this.sock) {
      this.paused = false;
      this.sock.resume();
    }
    return out;
  }

  /** Drops everything and stops reading: readers see end of stream. */
  close(): void {
    this.chunks = [];
    this.size = 0;
    this.sock?.destroy();
    this.end();
  }
}

export class StdinWriter {
  private sock: net.Socket | undefined;
  private closed = false;
  private aborted = false;
  private writeLock: Promise<unknown> = Promise.resolve();

  constructor(readonly name: string) {}

  /**
   * Opens the agent's end of a stdin FIFO read-write: it never blocks or fails for want of a
   * reader, and closing it is the reader's end of file.
   */
  static openFifo(file: string): number {
    return fs.openSync(file, O_RDWR | O_NONBLOCK);
  }

  attachFd(fd: number): void {
    const sock = new net.Socket({ fd, readable: false, writable: true });
    sock.on('error', () => {
      this.closed = true;
    });
    this.sock = sock;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves with the byte count once the kernel took the bytes (back-pressure for the caller). */
  write(data: Uint8Array): Promise<number> {
    const run = this.writeLock.then(
      () =>
        new Promise<number>((resolve, reject) => {
          if (this.closed || !this.sock || this.sock.destroyed) {
            reject(new TtrpcError(Code.FailedPrecondition, `${this.name}: stdin is closed`));
            return;
          }
          this.sock.write(data, (err) => {
            if (err) reject(new TtrpcError(Code.FailedPrecondition, `${this.name}: stdin write failed: ${err.message}`));
            // The write under way when the socket is destroyed reports no error, but its bytes went nowhere.
            else if (this.aborted) reject(new TtrpcError(Code.FailedPrecondition, `${this.name}: the process exited before it read its stdin`));
            else resolve(data.length);
          });
        }),
    );
    this.writeLock = run.catch(() => undefined);
    return run;
  }

  /**
   * Closes now: writes still waiting for room in the FIFO fail (FailedPrecondition) instead of
   * waiting for a reader that is gone. Idempotent.
   */
  abort(): void {
    this.aborted = true;
    this.closed = true;
    this.sock?.destroy();
  }

  /** Closes after queued writes; the reader sees end of file. Idempotent. */
  close(): Promise<void> {
    const run = this.writeLock.then(() => {
      this.closed = true;
      this.sock?.destroy();
    });
    this.writeLock = run;
    return run;
  }
}

/** The agent's read end of an output FIFO: non-blocking so opening never waits for a writer. */
export function openOutputFifo(file: string): number {
  return fs.openSync(file, O_RDONLY | O_NONBLOCK);
}
