// The agent channel's session hello, guest side: hello frames are found at frame boundaries
// however the reads cut the stream, everything else passes through byte for byte.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { FrameType } from '../../proto/ttrpc/index.js';
import { encodeFrame } from '../../proto/ttrpc/frame.js';
import { SESSION_FRAME_TYPE, SessionSplitter, ackFrame, helloFrame } from '../../proto/agent-session.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

describe('SessionSplitter', () => {
  it('finds every hello at a frame boundary and passes all other bytes through, whatever the read sizes', () => {
    const r = rng(7);
    for (let round = 0; round < 200; round++) {
      // A stream of requests (some of them big) with hellos between them.
      const parts: Buffer[] = [];
      const expected: (Buffer | string)[] = [];
      let data: Buffer[] = [];
      const flush = () => {
        if (data.length) expected.push(Buffer.concat(data));
        data = [];
      };
      for (let i = 0; i < 20; i++) {
        if (r() < 0.2) {
          const nonce = randomBytes(16);
          parts.push(helloFrame(nonce));
          flush();
          expected.push(nonce.toString('hex'));
        } else {
          const size = r() < 0.1 ? Math.floor(r() * 200_000) : Math.floor(r() * 300);
          // Payloads may even contain hello bytes: only a hello at a boundary counts.
          const payload = r() < 0.2 ? Buffer.concat([helloFrame(randomBytes(16)), Buffer.alloc(size, i)]) : Buffer.alloc(size, i);
          const f = encodeFrame(2 * i + 1, FrameType.Request, 0, payload);
          parts.push(f);
          data.push(f);
        }
      }
      flush();
      const stream = Buffer.concat(parts);
      const s = new SessionSplitter();
      const got: (Buffer | string)[] = [];
      let pending: Buffer[] = [];
      for (let off = 0; off < stream.length; ) {
        const n = 1 + Math.floor(r() * (r() < 0.5 ? 20 : 70_000));
        for (const p of s.split(stream.subarray(off, off + n))) {
          if ('hello' in p) {
            if (pending.length) got.push(Buffer.concat(pending));
            pending = [];
            got.push(p.hello.toString('hex'));
          } else pending.push(p.data);
        }
        off += n;
      }
      if (pending.length) got.push(Buffer.concat(pending));
      expect(got.map((g) => (typeof g === 'string' ? g : g.toString('hex')))).toEqual(expected.map((g) => (typeof g === 'string' ? g : g.toString('hex'))));
    }
  });

  it('an ack or another session frame is not a hello; reset forgets a frame cut short', () => {
    const s = new SessionSplitter();
    const ack = ackFrame(randomBytes(16));
    expect(ack[8]).toBe(SESSION_FRAME_TYPE);
    expect(s.split(ack)).toEqual([{ data: ack }]);
    // A request announcing 1 MiB whose sender left after 5 bytes of it.
    const cut = encodeFrame(1, FrameType.Request, 0, Buffer.alloc(1 << 20)).subarray(0, 15);
    expect(s.split(cut).every((p) => 'data' in p)).toBe(true);
    const nonce = randomBytes(16);
    // Without a reset the hello is payload of the cut frame; after one it is seen.
    expect(s.split(helloFrame(nonce)).every((p) => 'data' in p)).toBe(true);
    s.reset();
    expect(s.split(helloFrame(nonce))).toEqual([{ hello: nonce }]);
  });
});
