// Exact-length reads over an async stream of buffers, without copying what passes through: the
// tar reader asks for 512-byte headers and streams file bodies on to the image writer.

export class TruncatedError extends Error {
  override readonly name = 'TruncatedError';
}

export class ChunkReader {
  private queue: Buffer[] = [];
  private queued = 0;
  private done = false;
  /** Bytes handed out so far (the offset of the next byte). */
  position = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(): Promise<boolean> {
    if (this.done) return false;
    const r = await this.source.next();
    if (r.done) {
      this.done = true;
      return false;
    }
    const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
    if (b.length) {
      this.queue.push(b);
      this.queued += b.length;
    }
    return true;
  }

  /** Exactly n bytes, or null when the stream ends before the first of them; TruncatedError in between. */
  async read(n: number): Promise<Buffer | null> {
    while (this.queued < n) {
      if (!(await this.fill())) {
        if (this.queued === 0) return null;
        throw new TruncatedError(`stream ends ${this.queued} bytes into a ${n}-byte read at offset ${this.position}`);
      }
    }
    let out: Buffer;
    const head = this.queue[0]!;
    if (head.length >= n) {
      out = head.subarray(0, n);
      if (head.length === n) this.queue.shift();
      else this.queue[0] = head.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const b = this.queue[0]!;
        const take = Math.min(b.length, n - at);
        b.copy(out, at, 0, take);
        at += take;
        if (take === b.length) this.queue.shift();
        else this.queue[0] = b.subarray(take);
      }
    }
    this.queued -= n;
    this.position += n;
    return out;
  }

  /** Passes the next n bytes to `sink` in the pieces they arrive in; TruncatedError if the stream ends first. */
  async stream(n: number, sink: (piece: Buffer) => void | Promise<void>): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.queued === 0 && !(await this.fill())) throw new TruncatedError(`stream ends ${left} bytes short of a ${n}-byte body at offset ${this.position}`);
      while (left > 0 && this.queue.length) {
        const b = this.queue[0]!;
        const take = Math.min(b.length, left);
        const piece = take === b.length ? b : b.subarray(0, take);
        if (take === b.length) this.queue.shift();
        else this.queue[0] = b.subarray(take);
        this.queued -= take;
        this.position += take;
        left -= take;
        await sink(piece);
      }
    }
  }

  async skip(n: number): Promise<void> {
    await this.stream(n, () => undefined);
  }

  /** Reads to the end of the stream, discarding; returns how many bytes there were. */
  async drain(): Promise<number> {
    let n = this.queued;
    this.position += this.queued;
    this.queue = [];
    this.queued = 0;
    while (await this.fill()) {
      for (const b of this.queue) n += b.length;
      this.position += this.queued;
      this.queue = [];
      this.queued = 0;
    }
    return n;
  }
}
