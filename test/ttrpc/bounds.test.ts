// What a peer can make a ttrpc connection hold: handlers past their deadline still count toward
// the in-flight limit, a server stops reading requests from a peer that does not read its
// answers (and drops it past a hard limit), and a client's callers wait instead of queueing
// without bound when the server does not read.
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, Code, FrameType, Server, TtrpcError } from '../../proto/ttrpc/index.js';
import { FrameDecoder, encodeFrame } from '../../proto/ttrpc/frame.js';
import { decodeResponse, encodeRequest } from '../../proto/ttrpc/envelope.js';
import { tempDir } from '../support/tmp.js';

const SVC = 'katats.test.v1.Bounds';
const tmp = tempDir('katats-ttrpc-bounds-');
afterAll(() => tmp.cleanup());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function request(streamId: number, method: string, payload: Buffer, timeoutNano = 0): Buffer {
  return encodeFrame(streamId, FrameType.Request, 0, encodeRequest({ service: SVC, method, payload, timeoutNano, metadata: new Map() }));
}

/** A raw peer: writes frames, and collects the status codes of answers by stream id while it reads. */
function rawPeer(sock: string): Promise<{ s: net.Socket; answers: Map<number, number> }> {
  return new Promise((resolve, reject) => {
    const answers = new Map<number, number>();
    const dec = new FrameDecoder({ frame: (f) => answers.set(f.streamId, decodeResponse(f.payload).status?.code ?? 0), oversized: () => {} }, 64 << 20);
    const s = net.connect(sock, () => resolve({ s, answers }));
    s.on('data', (d: Buffer) => dec.push(d));
    s.on('error', reject);
  });
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('ttrpc: handlers past their deadline', () => {
  const sock = path.join(tmp.dir, 'deadline.sock');
  const LIMIT = 8;
  let server: Server;
  let entered = 0;
  let release: () => void = () => {};
  let released = new Promise<void>((r) => (release = r));

  beforeAll(async () => {
    server = new Server({ maxConcurrentCalls: LIMIT });
    server.registerRaw(SVC, {
      // Ignores ctx.signal: the kind of handler a deadline cannot stop (a crun that hangs, say).
      Block: async () => {
        entered++;
        await released;
        return Buffer.from('late');
      },
      Echo: (p) => p,
    });
    await server.listen(sock);
  });
  afterAll(() => server.close({ graceful: false }));

  it('answer DeadlineExceeded but count toward the limit until they settle: tiny deadlines cannot pile up handlers', async () => {
    const { s, answers } = await rawPeer(sock);
    try {
      // Waves of calls with a 1 ms deadline, each sent after the previous wave was answered.
      let id = 1;
      for (let wave = 0; wave < 4; wave++) {
        const ids: number[] = [];
        const frames: Buffer[] = [];
        for (let i = 0; i < LIMIT; i++, id += 2) {
          ids.push(id);
          frames.push(request(id, 'Block', Buffer.alloc(0), 1e6));
        }
        s.write(Buffer.concat(frames));
        await until(`wave ${wave} answered`, () => ids.every((i) => answers.has(i)));
        const codes = ids.map((i) => answers.get(i));
        if (wave === 0) expect(codes).toEqual(Array(LIMIT).fill(Code.DeadlineExceeded));
        else expect(codes).toEqual(Array(LIMIT).fill(Code.ResourceExhausted));
      }
      expect(entered).toBe(LIMIT);
      // Once the handlers have really stopped their places are free again.
      release();
      await sleep(20);
      s.write(request(id, 'Echo', Buffer.from('again')));
      await until('the call after the handlers settled', () => answers.has(id));
      expect(answers.get(id)).toBe(Code.OK);
    } finally {
      s.destroy();
      release();
    }
  });

  it('handlers left running by a closed connection still count: redialing does not reset the limit', async () => {
    entered = 0;
    released = new Promise<void>((r) => (release = r));
    for (let round = 0; round < 3; round++) {
      const { s, answers } = await rawPeer(sock);
      const frames = Array.from({ length: LIMIT }, (_, i) => request(2 * i + 1, 'Block', Buffer.alloc(0)));
      s.write(Buffer.concat(frames));
      if (round > 0) await until('refusals', () => answers.size === LIMIT);
      else await until('handlers entered', () => entered === LIMIT);
      if (round > 0) expect([...answers.values()]).toEqual(Array(LIMIT).fill(Code.ResourceExhausted));
      s.destroy();
      await until('the server saw the close', () => server.connectionCount === 0);
    }
    expect(entered).toBe(LIMIT);
    expect(server.orphanedHandlers).toBe(LIMIT);
    release();
    await until('orphans settled', () => server.orphanedHandlers === 0);
  });
});

describe('ttrpc: a peer that does not read', () => {
  const sock = path.join(tmp.dir, 'reader.sock');
  let server: Server;
  let bigCalls = 0;
  const bodies = new Map<number, Buffer>();

  beforeAll(async () => {
    server = new Server({ maxMessageSize: 4 << 20 });
    server.registerRaw(SVC, {
      // One shared answer body: what grows is then only what ttrpc itself holds.
      Big: (p) => {
        bigCalls++;
        const n = Number(p.toString());
        if (bodies.get(n) === undefined) bodies.set(n, Buffer.alloc(n, 7));
        return bodies.get(n)!;
      },
      BigLater: async (p) => {
        bigCalls++;
        await sleep(5);
        const n = Number(p.toString());
        if (bodies.get(n) === undefined) bodies.set(n, Buffer.alloc(n, 7));
        return bodies.get(n)!;
      },
      Echo: (p) => p,
    });
    await server.listen(sock);
  });
  afterAll(() => server.close({ graceful: false }));

  it('server: stops reading its requests while its answers pile up, serves others meanwhile, and resumes when it reads', async () => {
    bigCalls = 0;
    const { s, answers } = await rawPeer(sock);
    s.pause();
    const N = 200;
    const SIZE = 256 * 1024;
    try {
      for (let i = 0; i < N; i++) {
        s.write(request(2 * i + 1, 'Big', Buffer.from(String(SIZE))));
        await sleep(2);
      }
      await sleep(200);
      // 200 x 256 KiB = 50 MiB of answers if the server kept reading; it stops after about 1 MiB.
      expect(bigCalls).toBeLessThan(30);
      expect(server.connectionCount).toBe(1);
      const other = await Client.connect(sock);
      try {
        expect((await other.call(SVC, 'Echo', Buffer.from('still here'), { timeoutMs: 10_000 })).toString()).toBe('still here');
      } finally {
        await other.close();
      }
      s.resume();
      await until('every request answered once the peer reads', () => answers.size === N, 30_000);
      expect([...answers.values()].every((c) => c === Code.OK)).toBe(true);
      expect(bigCalls).toBe(N);
    } finally {
      s.destroy();
    }
  });

  it('server: a burst read in one go is served only as fast as the peer takes the answers', async () => {
    bigCalls = 0;
    const { s, answers } = await rawPeer(sock);
    s.pause();
    try {
      // 300 small requests for 1 MiB answers in one write: one read on the server.
      s.write(Buffer.concat(Array.from({ length: 300 }, (_, i) => request(2 * i + 1, 'Big', Buffer.from(String(1 << 20))))));
      await sleep(300);
      expect(bigCalls).toBeLessThan(8);
      const conn = server.liveConnections[0]!;
      expect(conn.inputPaused).toBe(true);
      expect(conn.bufferedOutputBytes).toBeLessThan(6 << 20);
      s.resume();
      await until('all 300 answered', () => answers.size === 300, 60_000);
      expect(bigCalls).toBe(300);
    } finally {
      s.destroy();
    }
  });

  it('server: drops a connection whose unread answers pass the limit, and keeps serving others', async () => {
    bigCalls = 0;
    const { s } = await rawPeer(sock);
    s.pause();
    const before = process.memoryUsage().arrayBuffers;
    // Answers that come later (as an agent's do): all 300 calls are under way before the first
    // answer, so only the limit on unread output stands between them and 300 MiB.
    s.write(Buffer.concat(Array.from({ length: 300 }, (_, i) => request(2 * i + 1, 'BigLater', Buffer.from(String(1 << 20))))));
    await until('the server dropped the connection', () => server.connectionCount === 0);
    expect(bigCalls).toBe(300);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
    s.destroy();
    const other = await Client.connect(sock);
    try {
      expect((await other.call(SVC, 'Echo', Buffer.from('fine'), { timeoutMs: 10_000 })).toString()).toBe('fine');
    } finally {
      await other.close();
    }
  });

  it('client: callers wait for a server that does not read, bounded by their deadlines, and memory stays flat', async () => {
    const stuck = path.join(tmp.dir, 'stuck.sock');
    const conns: net.Socket[] = [];
    const srv = net.createServer((c) => {
      c.pause();
      conns.push(c);
    });
    await new Promise<void>((r) => srv.listen(stuck, r));
    const client = await Client.connect(stuck, { maxMessageSize: 4 << 20 });
    try {
      const payload = Buffer.alloc(1 << 20, 1);
      const before = process.memoryUsage().arrayBuffers;
      const calls = Array.from({ length: 100 }, () => client.call(SVC, 'Echo', payload, { timeoutMs: 1500 }).catch((e: unknown) => e));
      await sleep(300);
      // 100 x 1 MiB if every call were queued; about 1 MiB plus what the socket took.
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(32 << 20);
      expect(client.bufferedBytes).toBeLessThan(4 << 20);
      const errs = await Promise.all(calls);
      expect(errs.every((e) => e instanceof TtrpcError && e.code === Code.DeadlineExceeded)).toBe(true);
      expect(client.inFlight).toBe(0);
    } finally {
      await client.close();
      for (const c of conns) c.destroy();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('client: waiting callers go in order once the server reads, and all are answered', async () => {
    const c = await Client.connect(sock, { maxMessageSize: 4 << 20, highWaterBytes: 256 * 1024 });
    try {
      const payload = Buffer.alloc(512 * 1024, 3);
      const out = await Promise.all(Array.from({ length: 40 }, (_, i) => c.call(SVC, 'Echo', Buffer.concat([Buffer.from([i]), payload]), { timeoutMs: 60_000 })));
      expect(out.map((b) => b[0])).toEqual(Array.from({ length: 40 }, (_, i) => i));
    } finally {
      await c.close();
    }
  });
});
