// ttrpc framing: every message is a 10-byte header (length u32 BE, stream id u32 BE, type u8,
// flags u8) followed by `length` bytes of protobuf. The decoder is incremental and copies only
// when a frame straddles socket chunks.

export const HEADER_LENGTH = 10;
export const DEFAULT_MAX_MESSAGE_SIZE = 4 << 20;

export const FrameType = {
  Request: 0x1,
  Response: 0x2,
  Data: 0x3,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

// Flags of ttrpc's streaming extension (ttrpc >= 1.2); unary peers send 0.
export const FrameFlag = {
  RemoteClosed: 0x1,
  RemoteOpen: 0x2,
  NoData: 0x4,
} as const;

export interface FrameHeader {
  length: number;
  streamId: number;
  type: number;
  flags: number;
}

export interface Frame extends FrameHeader {
  payload: Buffer;
}

export function encodeHeader(h: FrameHeader, target: Buffer = Buffer.allocUnsafe(HEADER_LENGTH), offset = 0): Buffer {
  target.writeUInt32BE(h.length, offset);
  target.writeUInt32BE(h.streamId, offset + 4);
  target[offset + 8] = h.type;
  target[offset + 9] = h.flags;
  return target;
}

/** One buffer holding header and payload: cheaper than two writes for small messages. */
export function encodeFrame(streamId: number, type: number, flags: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_LENGTH + payload.length);
  encodeHeader({ length: payload.length, streamId, type, flags }, out, 0);
  out.set(payload, HEADER_LENGTH);
  return out;
}

export interface FrameSink {
  frame(f: Frame): void;
  /** A header announced more than the size limit; its payload was skipped without buffering. */
  oversized(h: FrameHeader): void;
}

export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header: FrameHeader | null = null;
  private skipping = 0;

  constructor(
    private readonly sink: FrameSink,
    private readonly maxMessageSize = DEFAULT_MAX_MESSAGE_SIZE,
  ) {}

  /** Bytes held while waiting for the rest of a frame (tests use it to check nothing piles up). */
  get pendingBytes(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, chunk.length);
      this.skipping -= n;
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    if (this.buffered === 0) {
      chunk = this.drainDirect(chunk);
      if (chunk.length === 0) return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.drainBuffered();
  }

  // Fast path: frames wholly inside one chunk are sliced out without copying.
  private drainDirect(chunk: Buffer): Buffer {
    let off = 0;
    for (;;) {
      if (this.header === null) {
        if (chunk.length - off < HEADER_LENGTH) break;
        const h = readHeader(chunk, off);
        off += HEADER_LENGTH;
        if (h.length > this.maxMessageSize) {
          this.sink.oversized(h);
          const n = Math.min(h.length, chunk.length - off);
          off += n;
          this.skipping = h.length - n;
          if (this.skipping > 0) return chunk.subarray(chunk.length);
          continue;
        }
        this.header = h;
      }
      const h = this.header;
      if (chunk.length - off < h.length) break;
      this.header = null;
      const payload = chunk.subarray(off, off + h.length);
      off += h.length;
      this.sink.frame({ ...h, payload });
    }
    return chunk.subarray(off);
  }

  private drainBuffered(): void {
    for (;;) {
      if (this.header === null) {
        if (this.buffered < HEADER_LENGTH) return;
        const h = readHeader(this.take(HEADER_LENGTH), 0);
        if (h.length > this.maxMessageSize) {
          this.sink.oversized(h);
          const n = Math.min(h.length, this.buffered);
          this.take(n);
          this.skipping = h.length - n;
          if (this.skipping > 0) return;
          continue;
        }
        this.header = h;
      }
      const h = this.header;
      if (this.buffered < h.length) return;
      this.header = null;
      this.sink.frame({ ...h, payload: this.take(h.length) });
      if (this.buffered === 0) return;
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      this.buffered -= n;
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const want = n - filled;
      if (c.length <= want) {
        c.copy(out, filled);
        filled += c.length;
        this.chunks.shift();
      } else {
        c.copy(out, filled, 0, want);
        this.chunks[0] = c.subarray(want);
        filled += want;
      }
    }
    this.buffered -= n;
    return out;
  }
}

function readHeader(b: Buffer, off: number): FrameHeader {
  return {
    length: b.readUInt32BE(off),
    streamId: b.readUInt32BE(off + 4),
    type: b[off + 8]!,
    flags: b[off + 9]!,
  };
}
