import { describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrame, type Frame, type FrameHeader } from '../../proto/ttrpc/frame.js';

function collect(max?: number) {
  const frames: Frame[] = [];
  const oversized: FrameHeader[] = [];
  const dec = new FrameDecoder({ frame: (f) => frames.push({ ...f, payload: Buffer.from(f.payload) }), oversized: (h) => oversized.push(h) }, max);
  return { dec, frames, oversized };
}

describe('ttrpc frame header', () => {
  it('is 10 bytes: length and stream id big-endian, then type and flags', () => {
    const b = encodeFrame(0x01020304, 2, 5, Buffer.from('abc'));
    expect([...b.subarray(0, 10)]).toEqual([0, 0, 0, 3, 1, 2, 3, 4, 2, 5]);
    expect(b.subarray(10).toString()).toBe('abc');
  });
});

describe('FrameDecoder', () => {
  const frames = [1, 3, 5, 7].map((id) => encodeFrame(id, 1, 0, Buffer.alloc(id * 100, id)));
  const all = Buffer.concat(frames);

  it('decodes frames split at every possible byte boundary', () => {
    for (let cut = 1; cut < all.length; cut += 7) {
      const { dec, frames: out } = collect();
      dec.push(all.subarray(0, cut));
      dec.push(all.subarray(cut));
      expect(out.map((f) => f.streamId)).toEqual([1, 3, 5, 7]);
      expect(out.map((f) => f.payload.length)).toEqual([100, 300, 500, 700]);
      expect(dec.pendingBytes).toBe(0);
    }
  });

  it('decodes byte by byte', () => {
    const { dec, frames: out } = collect();
    for (const byte of all) dec.push(Buffer.from([byte]));
    expect(out.map((f) => f.streamId)).toEqual([1, 3, 5, 7]);
    expect(out[3]!.payload.equals(Buffer.alloc(700, 7))).toBe(true);
  });

  it('skips an oversized frame without buffering it and goes on with the next one', () => {
    const { dec, frames: out, oversized } = collect(1000);
    const big = encodeFrame(9, 1, 0, Buffer.alloc(5000, 1));
    const next = encodeFrame(11, 1, 0, Buffer.from('ok'));
    dec.push(big.subarray(0, 100));
    expect(oversized).toEqual([{ length: 5000, streamId: 9, type: 1, flags: 0 }]);
    expect(dec.pendingBytes).toBe(0);
    dec.push(Buffer.concat([big.subarray(100), next]));
    expect(out.map((f) => [f.streamId, f.payload.toString()])).toEqual([[11, 'ok']]);
  });

  it('handles an oversized header that arrives split across chunks', () => {
    const { dec, frames: out, oversized } = collect(10);
    const big = encodeFrame(1, 1, 0, Buffer.alloc(64));
    const next = encodeFrame(3, 1, 0, Buffer.from('x'));
    dec.push(big.subarray(0, 4));
    dec.push(Buffer.concat([big.subarray(4), next]));
    expect(oversized).toHaveLength(1);
    expect(out.map((f) => f.streamId)).toEqual([3]);
  });

  it('accepts an empty payload', () => {
    const { dec, frames: out } = collect();
    dec.push(encodeFrame(1, 2, 0, Buffer.alloc(0)));
    expect(out).toHaveLength(1);
    expect(out[0]!.payload.length).toBe(0);
  });
});
