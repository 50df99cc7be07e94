// Our ttrpc against Go's containerd/ttrpc 1.1.1 (Debian's sources): each side as client and server.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, Code } from '../../proto/ttrpc/index.js';
import { buildGoPeer, goCall, startGoServer, type GoServer } from './go-peer.js';
import { PEER_SERVICE, bytesValue, fromBytesValue, peerServer } from './ts-peer.js';
import { tempDir } from '../support/tmp.js';
import type { Server } from '../../proto/ttrpc/index.js';

const SIZES = [0, 100, 3 << 20];

let bin: string;
const tmp = tempDir('katats-interop-');
beforeAll(async () => {
  bin = await buildGoPeer();
}, 180_000);
afterAll(() => tmp.cleanup());

describe('Go ttrpc client -> TypeScript server', () => {
  const sock = path.join(tmp.dir, 'ts.sock');
  let server: Server;
  beforeAll(async () => {
    server = peerServer();
    await server.listen(sock);
  });
  afterAll(() => server.close());

  it.each(SIZES)('echoes %i bytes', async (n) => {
    const payload = Buffer.alloc(n, 0x5a);
    payload[0 % Math.max(n, 1)] = 1;
    const res = await goCall(bin, sock, PEER_SERVICE, 'Echo', { payload });
    expect(res.ok).toBe(true);
    if (res.ok) expect(res.payload.equals(payload)).toBe(true);
  });

  it('returns errors with code and message', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'Fail', { payload: Buffer.from(JSON.stringify({ code: Code.FailedPrecondition, message: 'sandbox not running' })) });
    expect(res).toMatchObject({ ok: false, code: Code.FailedPrecondition, message: 'sandbox not running', local: false });
  });

  it('answers an unknown method with Unimplemented', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'NoSuchMethod');
    expect(res).toMatchObject({ ok: false, code: Code.Unimplemented });
  });

  it('receives metadata, repeated values in order', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'Metadata', {
      payload: Buffer.from('containerd-namespace'),
      metadata: { 'containerd-namespace': ['k8s.io'], other: ['1', '2'] },
    });
    expect(res.ok && res.payload.toString()).toBe('k8s.io');
    const multi = await goCall(bin, sock, PEER_SERVICE, 'Metadata', { payload: Buffer.from('other'), metadata: { other: ['1', '2'] } });
    expect(multi.ok && multi.payload.toString()).toBe('1,2');
  });

  it('gets the Go client deadline as timeout_nano', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'Deadline', { timeoutMs: 5000 });
    expect(res.ok).toBe(true);
    if (res.ok) {
      const left = Number(res.payload.toString());
      expect(left).toBeGreaterThan(3000);
      expect(left).toBeLessThanOrEqual(5000);
    }
    const none = await goCall(bin, sock, PEER_SERVICE, 'Deadline');
    expect(none.ok && none.payload.toString()).toBe('none');
  });

  it('a call past its deadline fails with DeadlineExceeded', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'Sleep', { payload: Buffer.from('3000'), timeoutMs: 200 });
    expect(res).toMatchObject({ ok: false, code: Code.DeadlineExceeded });
  });

  it('refuses a request over 4 MiB with ResourceExhausted', async () => {
    const res = await goCall(bin, sock, PEER_SERVICE, 'Echo', { payload: Buffer.alloc(5 << 20) });
    expect(res).toMatchObject({ ok: false, code: Code.ResourceExhausted });
  });
});

describe('TypeScript ttrpc client -> Go server', () => {
  const sock = path.join(tmp.dir, 'go.sock');
  let go: GoServer;
  let client: Client;
  beforeAll(async () => {
    go = await startGoServer(bin, sock);
    client = await Client.connect(sock);
  });
  afterAll(async () => {
    await client.close();
    await go.close();
  });

  it.each(SIZES)('echoes %i bytes', async (n) => {
    const payload = Buffer.alloc(n, 0xa5);
    const out = fromBytesValue(await client.call(PEER_SERVICE, 'Echo', bytesValue(payload)));
    expect(out.equals(payload)).toBe(true);
  });

  it('many calls in flight on one connection', async () => {
    const outs = await Promise.all(Array.from({ length: 64 }, (_, i) => client.call(PEER_SERVICE, 'Echo', bytesValue(Buffer.from(`m${i}`)))));
    outs.forEach((o, i) => expect(fromBytesValue(o).toString()).toBe(`m${i}`));
  });

  it('decodes Go status errors', async () => {
    const err = await client
      .call(PEER_SERVICE, 'Fail', bytesValue(Buffer.from(JSON.stringify({ code: Code.NotFound, message: 'exec e1 not found' }))))
      .catch((e) => e);
    expect(err).toMatchObject({ code: Code.NotFound, message: 'exec e1 not found' });
    const unimpl = await client.call(PEER_SERVICE, 'Nope', new Uint8Array(0)).catch((e) => e);
    expect(unimpl.code).toBe(Code.Unimplemented);
  });

  it('sends metadata the Go server reads', async () => {
    const out = await client.call(PEER_SERVICE, 'Metadata', bytesValue(Buffer.from('containerd-namespace')), {
      metadata: { 'containerd-namespace': 'default' },
    });
    expect(fromBytesValue(out).toString()).toBe('default');
  });

  it('sends the deadline the Go server sees, and enforces it locally', async () => {
    const left = Number(fromBytesValue(await client.call(PEER_SERVICE, 'Deadline', bytesValue(new Uint8Array(0)), { timeoutMs: 5000 })).toString());
    expect(left).toBeGreaterThan(3000);
    expect(left).toBeLessThanOrEqual(5000);
    const err = await client.call(PEER_SERVICE, 'Sleep', bytesValue(Buffer.from('3000')), { timeoutMs: 200 }).catch((e) => e);
    expect(err.code).toBe(Code.DeadlineExceeded);
  });

  it('gets ResourceExhausted from the Go server for an oversized request and keeps the connection', async () => {
    // Our client refuses to send past its own limit; raise it to see the Go server's answer.
    const loose = await Client.connect(sock, { maxMessageSize: 8 << 20 });
    try {
      const err = await loose.call(PEER_SERVICE, 'Echo', bytesValue(Buffer.alloc(5 << 20))).catch((e) => e);
      expect(err.code).toBe(Code.ResourceExhausted);
      expect(fromBytesValue(await loose.call(PEER_SERVICE, 'Echo', bytesValue(Buffer.from('ok')))).toString()).toBe('ok');
    } finally {
      await loose.close();
    }
  });
});
