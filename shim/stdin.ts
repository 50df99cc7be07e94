// Copies a process's stdin from containerd's FIFO to the agent's WriteStdin calls: in order, one
// call at a time, and bounded. A failed write is logged and the next chunk still goes (one failure
// must not reject every later write, nor escape as an unhandled rejection); the FIFO is paused
// while more than STDIN_HIGH_WATER bytes wait, so a process that reads slowly (or not at all: `head
// -c1`) holds the writer in the FIFO instead of growing the shim. Once the process is gone the
// copy stops and what still waits is dropped.
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';

/** Bytes read from the FIFO but not yet taken by the agent, beyond which reading pauses. */
export const STDIN_HIGH_WATER = 1 << 20;

export class StdinCopy {
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private stopped = false;
  private src: Readable | undefined;

  constructor(
    private readonly write: (b: Uint8Array) => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** Starts copying from `src`; `onEnd` runs after its end of file, once every chunk was written. */
  attach(src: Readable, onEnd: () => Promise<void>): void {
    this.src = src;
    src.on('data', (b: Buffer) => this.push(b));
    src.on('end', () => {
      this.drained()
        .then(() => (this.stopped ? undefined : onEnd()))
        .catch((err: unknown) => this.log.debug({ err }, 'closing stdin failed'));
    });
    src.on('error', (err) => this.log.debug({ err }, 'stdin FIFO error'));
  }

  /** Queues one chunk behind the others. Never rejects. */
  push(b: Uint8Array): void {
    if (this.stopped || b.length === 0) return;
    this.queued += b.length;
    if (this.queued > STDIN_HIGH_WATER) this.src?.pause();
    this.tail = this.tail.then(async () => {
      try {
        if (!this.stopped) await this.write(b);
      } catch (err) {
        this.log.debug({ err, bytes: b.length }, 'WriteStdin failed');
      } finally {
        this.queued -= b.length;
        if (this.queued <= STDIN_HIGH_WATER / 2 && !this.stopped) this.src?.resume();
      }
    });
  }

  /** The source's own buffer, for a closing reader: chunks it read but has not emitted (paused). */
  takeBuffered(): void {
    const src = this.src;
    if (!src || src.destroyed) return;
    // read() hands each buffered chunk to the 'data' listener, which queues it.
    let more = true;
    while (more) more = src.read() !== null;
  }

  /** Resolves once every queued chunk was written or dropped. */
  drained(): Promise<void> {
    return this.tail;
  }

  /** Detaches from the FIFO without ending the process's stdin (CloseIO drains the FIFO itself). */
  detach(): void {
    this.src?.removeAllListeners('end');
    this.src?.destroy();
  }

  /** The process is gone: stop reading and drop what waits. */
  stop(): void {
    this.stopped = true;
    this.detach();
  }
}
