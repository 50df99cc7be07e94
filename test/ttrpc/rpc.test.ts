import net from 'node:net';
import path from 'node:path';
import { PassThrough, Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, Code, Server, TtrpcError, FrameType, FrameFlag } from '../../proto/ttrpc/index.js';
import { FrameDecoder, encodeFrame } from '../../proto/ttrpc/frame.js';
import { decodeResponse, encodeRequest, encodeResponse } from '../../proto/ttrpc/envelope.js';
import { registerService, serviceClient } from '../../proto/rpc.js';
import { tempDir } from '../support/tmp.js';

const SVC = 'katats.test.v1.Echo';

function makeServer(opts: ConstructorParameters<typeof Server>[0] = {}): Server {
  const s = new Server(opts);
  s.registerRaw(SVC, {
    Echo: (p) => p,
    Fail: (p) => {
      const { code, message } = JSON.parse(Buffer.from(p).toString()) as { code: number; message: string };
      throw new TtrpcError(code, message);
    },
    Throw: () => {
      throw new Error('plain failure');
    },
    Meta: (p, ctx) => Buffer.from(JSON.stringify(ctx.metadata.get(Buffer.from(p).toString()) ?? null)),
    Sleep: (p, ctx) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => resolve(Buffer.from('slept')), Number(Buffer.from(p).toString()));
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(t);
          reject(ctx.signal.reason);
        });
      }),
    Deadline: (_p, ctx) => Buffer.from(ctx.deadline === undefined ? 'none' : String(Math.round(ctx.deadline - Date.now()))),
    Big: (p) => Buffer.alloc(Number(Buffer.from(p).toString()), 7),
  });
  return s;
}

/** Sends raw bytes on a fresh connection and collects whole response frames until `count` arrive or the peer closes. */
function rawExchange(sock: string, bytes: Buffer, count: number): Promise<{ streamId: number; code: number; message: string }[]> {
  return new Promise((resolve, reject) => {
    const c = net.connect(sock);
    let buf = Buffer.alloc(0);
    const out: { streamId: number; code: number; message: string }[] = [];
    const done = () => {
      c.destroy();
      resolve(out);
    };
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 10 && buf.length >= 10 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        const res = decodeResponse(buf.subarray(10, 10 + len));
        out.push({ streamId: buf.readUInt32BE(4), code: res.status?.code ?? 0, message: res.status?.message ?? '' });
        buf = buf.subarray(10 + len);
      }
      if (out.length >= count) done();
    });
    c.on('close', done);
    c.on('error', reject);
    c.write(bytes);
  });
}

function req(streamId: number, service: string, method: string, payload: Buffer, flags = 0): Buffer {
  return encodeFrame(streamId, FrameType.Request, flags, encodeRequest({ service, method, payload, timeoutNano: 0, metadata: new Map() }));
}

describe('ttrpc TypeScript client <-> server', () => {
  const tmp = tempDir();
  const sock = path.join(tmp.dir, 'ttrpc.sock');
  let server: Server;
  let client: Client;

  beforeAll(async () => {
    server = makeServer({ maxMessageSize: 1 << 20 });
    await server.listen(sock);
    client = await Client.connect(sock, { maxMessageSize: 1 << 20 });
  });
  afterAll(async () => {
    await client.close();
    await server.close();
    tmp.cleanup();
  });

  it('echoes 0 B, 100 B and near-limit payloads', async () => {
    for (const n of [0, 100, (1 << 20) - 64]) {
      const p = Buffer.alloc(n, n % 251);
      const out = await client.call(SVC, 'Echo', p);
      expect(out.equals(p)).toBe(true);
    }
  });

  it('multiplexes concurrent calls on one connection and matches answers to callers', async () => {
    const calls = Array.from({ length: 200 }, (_, i) => client.call(SVC, i % 2 ? 'Echo' : 'Sleep', Buffer.from(i % 2 ? `e${i}` : String(i % 20))));
    const out = await Promise.all(calls);
    out.forEach((b, i) => expect(b.toString()).toBe(i % 2 ? `e${i}` : 'slept'));
  });

  it('carries errors as status code and message', async () => {
    const err = await client.call(SVC, 'Fail', Buffer.from(JSON.stringify({ code: Code.NotFound, message: 'container c9 not found' }))).catch((e) => e);
    expect(err).toBeInstanceOf(TtrpcError);
    expect(err.code).toBe(Code.NotFound);
    expect(err.message).toBe('container c9 not found');
    const plain = await client.call(SVC, 'Throw', Buffer.alloc(0)).catch((e) => e);
    expect(plain.code).toBe(Code.Unknown);
    expect(plain.message).toBe('plain failure');
  });

  it('answers an unknown service or method with Unimplemented naming it', async () => {
    const a = await client.call('no.such.Service', 'X', Buffer.alloc(0)).catch((e) => e);
    expect(a.code).toBe(Code.Unimplemented);
    expect(a.message).toContain('no.such.Service');
    const b = await client.call(SVC, 'Nope', Buffer.alloc(0)).catch((e) => e);
    expect(b.code).toBe(Code.Unimplemented);
    expect(b.message).toContain(`${SVC}/Nope`);
  });

  it('passes metadata, repeated keys in order', async () => {
    const out = await client.call(SVC, 'Meta', Buffer.from('containerd-namespace'), {
      metadata: { 'containerd-namespace': 'k8s.io', other: ['1', '2'] },
    });
    expect(JSON.parse(out.toString())).toEqual(['k8s.io']);
    const multi = await client.call(SVC, 'Meta', Buffer.from('other'), { metadata: { other: ['1', '2'] } });
    expect(JSON.parse(multi.toString())).toEqual(['1', '2']);
  });

  it('sends the timeout to the server as a deadline', async () => {
    const out = await client.call(SVC, 'Deadline', Buffer.alloc(0), { timeoutMs: 5000 });
    expect(Number(out.toString())).toBeGreaterThan(4000);
    expect(Number(out.toString())).toBeLessThanOrEqual(5000);
    expect((await client.call(SVC, 'Deadline', Buffer.alloc(0))).toString()).toBe('none');
  });

  it('fails a slow call with DeadlineExceeded on the client and aborts the handler on the server', async () => {
    const t0 = Date.now();
    const err = await client.call(SVC, 'Sleep', Buffer.from('5000'), { timeoutMs: 150 }).catch((e) => e);
    expect(err.code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - t0).toBeLessThan(2000);
    // The connection is still good afterwards.
    expect((await client.call(SVC, 'Echo', Buffer.from('after'))).toString()).toBe('after');
  });

  it('server enforces the deadline even when the client does not', async () => {
    // A raw request with timeout_nano but no client-side timer: the server must answer by itself.
    const frame = encodeFrame(1, FrameType.Request, 0, encodeRequest({ service: SVC, method: 'Sleep', payload: Buffer.from('5000'), timeoutNano: 100e6, metadata: new Map() }));
    const t0 = Date.now();
    const [res] = await rawExchange(sock, frame, 1);
    expect(res!.code).toBe(Code.DeadlineExceeded);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('cancels a call through an AbortSignal', async () => {
    const ac = new AbortController();
    const p = client.call(SVC, 'Sleep', Buffer.from('5000'), { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    expect((await p.catch((e) => e)).code).toBe(Code.Canceled);
  });

  it('refuses an oversized request locally and an oversized response from the server', async () => {
    const big = await client.call(SVC, 'Echo', Buffer.alloc((1 << 20) + 1)).catch((e) => e);
    expect(big.code).toBe(Code.ResourceExhausted);
    const bigRes = await client.call(SVC, 'Big', Buffer.from(String(2 << 20))).catch((e) => e);
    expect(bigRes.code).toBe(Code.ResourceExhausted);
    expect(bigRes.message).toContain('exceeds maximum message size');
    expect((await client.call(SVC, 'Echo', Buffer.from('still'))).toString()).toBe('still');
  });

  it('server refuses an oversized frame on that stream and keeps the connection', async () => {
    const big = encodeFrame(1, FrameType.Request, 0, Buffer.alloc((1 << 20) + 100));
    const ok = req(3, SVC, 'Echo', Buffer.from('hi'));
    const res = await rawExchange(sock, Buffer.concat([big, ok]), 2);
    expect(res[0]).toMatchObject({ streamId: 1, code: Code.ResourceExhausted });
    expect(res[1]).toMatchObject({ streamId: 3, code: 0 });
  });

  it('rejects even stream ids, reused ids, non-protobuf payloads and streaming frames with a status', async () => {
    const bytes = Buffer.concat([
      req(2, SVC, 'Echo', Buffer.from('x')),
      encodeFrame(5, FrameType.Request, 0, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])),
      req(7, SVC, 'Echo', Buffer.from('x'), FrameFlag.RemoteOpen),
      encodeFrame(9, FrameType.Data, 0, Buffer.from('data')),
      encodeFrame(11, 0x7f, 0, Buffer.from('future frame type')),
      req(13, SVC, 'Echo', Buffer.from('fine')),
    ]);
    const res = await rawExchange(sock, bytes, 5);
    const byId = new Map(res.map((r) => [r.streamId, r]));
    expect(byId.get(2)).toMatchObject({ code: Code.InvalidArgument });
    expect(byId.get(2)!.message).toContain('odd');
    expect(byId.get(5)).toMatchObject({ code: Code.InvalidArgument });
    expect(byId.get(7)).toMatchObject({ code: Code.Unimplemented });
    expect(byId.get(9)).toMatchObject({ code: Code.Unimplemented });
    expect(byId.has(11)).toBe(false);
    expect(byId.get(13)).toMatchObject({ code: 0 });
  });

  it('refuses calls beyond the in-flight limit and serves again once they finish', async () => {
    const small = makeServer({ maxConcurrentCalls: 4 });
    const t = tempDir();
    const s = path.join(t.dir, 's.sock');
    await small.listen(s);
    const c = await Client.connect(s);
    try {
      const slow = Array.from({ length: 4 }, () => c.call(SVC, 'Sleep', Buffer.from('300')));
      const refused = await c.call(SVC, 'Echo', Buffer.from('x')).catch((e) => e);
      expect(refused.code).toBe(Code.ResourceExhausted);
      await Promise.all(slow);
      expect((await c.call(SVC, 'Echo', Buffer.from('x'))).toString()).toBe('x');
    } finally {
      await c.close();
      await small.close();
      t.cleanup();
    }
  });

  it('a dead connection fails calls in flight with Unavailable and the client redials', async () => {
    const t = tempDir();
    const s = path.join(t.dir, 'r.sock');
    let srv = makeServer();
    await srv.listen(s);
    const c = await Client.connect(s);
    try {
      const inflight = c.call(SVC, 'Sleep', Buffer.from('2000'));
      await new Promise((r) => setTimeout(r, 50));
      await srv.close({ graceful: false });
      expect((await inflight.catch((e) => e)).code).toBe(Code.Unavailable);
      const down = await c.call(SVC, 'Echo', Buffer.from('x')).catch((e) => e);
      expect(down.code).toBe(Code.Unavailable);
      srv = makeServer();
      await srv.listen(s);
      expect((await c.call(SVC, 'Echo', Buffer.from('back'))).toString()).toBe('back');
    } finally {
      await c.close();
      await srv.close();
      t.cleanup();
    }
  });

  it('graceful close lets a call in flight finish', async () => {
    const t = tempDir();
    const s = path.join(t.dir, 'g.sock');
    const srv = makeServer();
    await srv.listen(s);
    const c = await Client.connect(s);
    const p = c.call(SVC, 'Sleep', Buffer.from('200'));
    await new Promise((r) => setTimeout(r, 30));
    await srv.close({ graceful: true });
    expect((await p).toString()).toBe('slept');
    await c.close();
    t.cleanup();
  });

  it('works over any duplex stream, not only sockets', async () => {
    const a2b = new PassThrough();
    const b2a = new PassThrough();
    const serverSide = Duplex.from({ readable: a2b, writable: b2a });
    const clientSide = Duplex.from({ readable: b2a, writable: a2b });
    const srv = makeServer();
    srv.serve(serverSide);
    const c = new Client(clientSide);
    expect((await c.call(SVC, 'Echo', Buffer.from('pipe'))).toString()).toBe('pipe');
    await c.close();
    await srv.close();
  });

  it('randomStreamIds: ids start at a random odd number, and answers to ids of an earlier connection are dropped', async () => {
    const a2b = new PassThrough();
    const b2a = new PassThrough();
    const c = new Client(Duplex.from({ readable: b2a, writable: a2b }), { randomStreamIds: true });
    const seen: number[] = [];
    const decoder = new FrameDecoder(
      {
        frame: (f) => {
          seen.push(f.streamId);
          // What a byte stream shared with an earlier connection can deliver: its answer on id 1 first.
          b2a.write(encodeFrame(1, FrameType.Response, 0, encodeResponse({ status: null, payload: Buffer.from('stale') })));
          b2a.write(encodeFrame(f.streamId, FrameType.Response, 0, encodeResponse({ status: null, payload: Buffer.from('mine') })));
        },
        oversized: () => {},
      },
      1 << 20,
    );
    a2b.on('data', (d: Buffer) => decoder.push(d));
    expect((await c.call(SVC, 'Echo', Buffer.from('x'))).toString()).toBe('mine');
    expect((await c.call(SVC, 'Echo', Buffer.from('y'))).toString()).toBe('mine');
    expect(seen[0]! % 2).toBe(1);
    expect(seen[0]).not.toBe(1);
    expect(seen[1]).toBe(seen[0]! + 2);
    await c.close();
  });

  it('typed services: a registered implementation and a generated stub', async () => {
    const t = tempDir();
    const s = path.join(t.dir, 'h.sock');
    const srv = new Server();
    registerService(srv, 'grpc.Health', {
      Check: (req) => ({ status: req.service === 'agent' ? 1 : 2 }),
    });
    await srv.listen(s);
    const c = await Client.connect(s);
    try {
      const health = serviceClient(c, 'grpc.Health');
      expect((await health.Check({ service: 'agent' })).status).toBe(1);
      expect((await health.Check({})).status).toBe(2);
      const v = await health.Version({}).catch((e) => e);
      expect(v.code).toBe(Code.Unimplemented);
      expect(v.message).toContain('grpc.Health/Version');
    } finally {
      await c.close();
      await srv.close();
      t.cleanup();
    }
  });
});
