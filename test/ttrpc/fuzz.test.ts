// Garbage and mutated frames against a live server: it must answer or drop that one connection,
// never crash, never leak a connection, and serve a well-behaved client afterwards.
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, FrameType, Server } from '../../proto/ttrpc/index.js';
import { FrameDecoder, encodeFrame } from '../../proto/ttrpc/frame.js';
import { decodeRequest, decodeResponse, encodeRequest } from '../../proto/ttrpc/envelope.js';
import { tempDir } from '../support/tmp.js';

// A seeded generator keeps a failing run reproducible.
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

const SVC = 'katats.test.v1.Fuzz';

function validFrames(): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < 16; i++) {
    out.push(
      encodeFrame(
        2 * i + 1,
        FrameType.Request,
        0,
        encodeRequest({
          service: i % 5 ? SVC : 'other.Service',
          method: i % 3 ? 'Echo' : 'Slow',
          payload: Buffer.alloc(i * 37, i),
          timeoutNano: i % 4 ? 0 : 50e6,
          metadata: new Map(i % 2 ? [['containerd-namespace', ['default']]] : []),
        }),
      ),
    );
  }
  return out;
}

function mutate(frame: Buffer, r: () => number): Buffer {
  const b = Buffer.from(frame);
  switch (Math.floor(r() * 9)) {
    case 0: // flip bits anywhere
      for (let i = 0, n = 1 + Math.floor(r() * 4); i < n; i++) b[Math.floor(r() * b.length)]! ^= 1 << Math.floor(r() * 8);
      return b;
    case 1: // truncate
      return b.subarray(0, Math.floor(r() * b.length));
    case 2: // lie about the length (bounded so the stream resynchronises within the test)
      b.writeUInt32BE(Math.floor(r() * 4096), 0);
      return b;
    case 3: // even, zero or huge stream id
      b.writeUInt32BE([0, 2, 0xfffffffe, Math.floor(r() * 0xffffffff)][Math.floor(r() * 4)]!, 4);
      return b;
    case 4: // unknown frame type or flags
      b[8] = Math.floor(r() * 256);
      b[9] = Math.floor(r() * 256);
      return b;
    case 5: // payload that is not protobuf
      for (let i = 10; i < b.length; i++) b[i] = Math.floor(r() * 256);
      return b;
    case 6: // pure garbage
      return Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256)));
    case 7: // an oversized announcement
      b.writeUInt32BE(0xffffffff - Math.floor(r() * 1000), 0);
      return b.subarray(0, 10 + Math.floor(r() * 20));
    default: // valid, to keep real calls mixed in
      return b;
  }
}

describe('ttrpc fuzzing', () => {
  const tmp = tempDir('katats-fuzz-');
  const sock = path.join(tmp.dir, 'fuzz.sock');
  let server: Server;

  beforeAll(async () => {
    server = new Server({ maxConcurrentCalls: 64 });
    server.registerRaw(SVC, {
      Echo: (p) => p,
      Slow: (_p, ctx) => new Promise((resolve, reject) => {
        const t = setTimeout(() => resolve(new Uint8Array(0)), 20);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(t);
          reject(ctx.signal.reason);
        });
      }),
    });
    await server.listen(sock);
  });
  afterAll(async () => {
    await server.close({ graceful: false });
    tmp.cleanup();
  });

  it('the decoders never throw anything but an Error on 100,000 mutated inputs', () => {
    const r = rng(1);
    const frames = validFrames();
    let decoded = 0;
    for (let i = 0; i < 100_000; i++) {
      const m = mutate(frames[i % frames.length]!, r);
      const dec = new FrameDecoder({ frame: () => decoded++, oversized: () => {} }, 1 << 16);
      dec.push(m);
      for (const f of [decodeRequest, decodeResponse]) {
        try {
          f(m.subarray(10));
        } catch (e) {
          expect(e).toBeInstanceOf(Error);
        }
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });

  it('a live server survives 100,000 mutated frames over 200 connections and still serves', async () => {
    const r = rng(42);
    const frames = validFrames();
    const CONNS = 200;
    const PER_CONN = 500;
    let bytesBack = 0;
    for (let batch = 0; batch < CONNS; batch += 20) {
      await Promise.all(
        Array.from({ length: 20 }, () => {
          const parts: Buffer[] = [];
          for (let i = 0; i < PER_CONN; i++) parts.push(mutate(frames[Math.floor(r() * frames.length)]!, r));
          // Some connections end abruptly in the middle of a frame: half-open streams.
          const data = Buffer.concat(parts);
          const cut = r() < 0.3 ? Math.floor(r() * data.length) : data.length;
          return new Promise<void>((resolve) => {
            const c = net.connect(sock);
            c.on('data', (d) => (bytesBack += d.length));
            c.on('error', () => resolve());
            c.on('close', () => resolve());
            c.end(data.subarray(0, cut));
            // A frame whose announced length never arrives keeps the connection waiting: the
            // client gives up after a while, as a real one would.
            setTimeout(() => c.destroy(), 3000).unref();
          });
        }),
      );
    }
    expect(bytesBack).toBeGreaterThan(0);
    // Every fuzzing connection is gone on the server side too.
    for (let i = 0; i < 50 && server.connectionCount > 0; i++) await new Promise((res) => setTimeout(res, 100));
    expect(server.connectionCount).toBe(0);

    const client = await Client.connect(sock);
    try {
      expect((await client.call(SVC, 'Echo', Buffer.from('still serving'))).toString()).toBe('still serving');
    } finally {
      await client.close();
    }
  }, 120_000);
});
