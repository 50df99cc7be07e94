// The QMP client against a scripted fake QEMU on a unix socket.
import net from 'node:net';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { QMP_TIMEOUT, QmpClient, QmpError } from '../../vmm/qmp.js';
import { TimeoutError, withTimeout } from '../../sys/timeout.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-qmp-');
afterAll(() => tmp.cleanup());

function fakeQemu(sock: string, onCommand: (cmd: { execute: string; arguments?: Record<string, unknown> }, send: (o: unknown) => void) => void) {
  const received: string[] = [];
  const server = net.createServer((c) => {
    const send = (o: unknown) => c.write(JSON.stringify(o) + '\r\n');
    send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 } }, capabilities: [] } });
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        received.push(cmd.execute);
        onCommand(cmd, send);
      }
    });
  });
  server.listen(sock);
  return { server, received };
}

describe('QMP client', () => {
  it('negotiates, runs commands in order, maps errors and delivers events', async () => {
    const sock = path.join(tmp.dir, 'q1.sock');
    const fake = fakeQemu(sock, (cmd, send) => {
      if (cmd.execute === 'qmp_capabilities') send({ return: {} });
      else if (cmd.execute === 'query-status') {
        send({ event: 'RESUME', timestamp: { seconds: 1, microseconds: 0 } });
        send({ return: { status: 'running', running: true } });
      } else if (cmd.execute === 'device_del') {
        send({ return: {} });
        setTimeout(() => send({ event: 'DEVICE_DELETED', data: { device: cmd.arguments?.id } }), 20);
      } else send({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` } });
    });
    // connect retries until the socket is there
    const c = await QmpClient.connect(sock, { timeoutMs: 2000 });
    expect(c.greeting).toHaveProperty('QMP');
    const events: string[] = [];
    c.on('event', (e) => events.push(e.event));
    const [st, bad] = await Promise.all([c.execute('query-status'), c.execute('nope').catch((e: unknown) => e)]);
    expect(st).toEqual({ status: 'running', running: true });
    expect(bad).toBeInstanceOf(QmpError);
    expect((bad as QmpError).errorClass).toBe('CommandNotFound');
    const deleted = c.waitEvent('DEVICE_DELETED', (e) => e.data?.device === 'disk1', 2000);
    await c.execute('device_del', { id: 'disk1' });
    expect((await deleted).data).toEqual({ device: 'disk1' });
    expect(events).toEqual(['RESUME', 'DEVICE_DELETED']);
    expect(fake.received).toEqual(['qmp_capabilities', 'query-status', 'nope', 'device_del']);

    // the peer goes away: pending and later commands fail, waiters are told
    const pendingWait = c.waitEvent('SHUTDOWN', () => true, 5000);
    c.close();
    await expect(pendingWait).rejects.toThrow(/SHUTDOWN/);
    await expect(c.execute('query-status')).rejects.toThrow(/closed|destroyed|QMP/);
    fake.server.close();
  });

  it('gives up connecting when aborted', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('qemu exited')), 50);
    await expect(QmpClient.connect(path.join(tmp.dir, 'missing.sock'), { timeoutMs: 5000, abort: ac.signal })).rejects.toThrow(/aborted/);
  });

  it('a QEMU that stops answering costs a TimeoutError with its code, and a late answer is not taken for the next one', async () => {
    // Stands in for a wedged QEMU (one that is stopped cannot be made to greet first): it greets,
    // negotiates, then answers query-status only after 1 s and nothing else at all.
    const sock = path.join(tmp.dir, 'q2.sock');
    const fake = fakeQemu(sock, (cmd, send) => {
      if (cmd.execute === 'qmp_capabilities') send({ return: {} });
      else if (cmd.execute === 'query-status') setTimeout(() => send({ return: { status: 'late' }, id: (cmd as { id?: string }).id }), 1000);
      else if (cmd.execute === 'query-version') send({ return: { qemu: { major: 7 } }, id: (cmd as { id?: string }).id });
    });
    const c = await QmpClient.connect(sock, { timeoutMs: 2000, commandTimeoutMs: 300 });
    try {
      // The test's own limit: on code without command timeouts this fails instead of hanging.
      const guard = { code: 'TEST_GUARD', what: 'the QMP client giving up by itself' };
      const t0 = Date.now();
      const silent = await withTimeout(c.execute('quit'), 5000, guard).catch((e: unknown) => e);
      expect(silent).toBeInstanceOf(TimeoutError);
      expect((silent as TimeoutError).code).toBe(QMP_TIMEOUT);
      expect((silent as Error).message).toContain('QMP quit');
      expect(Date.now() - t0).toBeLessThan(3000);
      const slow = await withTimeout(c.execute('query-status', undefined, { timeoutMs: 200 }), 5000, guard).catch((e: unknown) => e);
      expect((slow as TimeoutError).code).toBe(QMP_TIMEOUT);
      // query-status's answer arrives while query-version waits: each gets its own.
      await new Promise((r) => setTimeout(r, 600));
      expect(await c.execute('query-version', undefined, { timeoutMs: 2000 })).toEqual({ qemu: { major: 7 } });
      expect(fake.received).toEqual(['qmp_capabilities', 'quit', 'query-status', 'query-version']);
    } finally {
      c.close();
      fake.server.close();
    }
  });

  it('a socket that never greets costs a TimeoutError naming the connect wait', async () => {
    const sock = path.join(tmp.dir, 'q3.sock');
    const conns: net.Socket[] = [];
    const server = net.createServer((s) => conns.push(s));
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const err = await withTimeout(QmpClient.connect(sock, { timeoutMs: 1500 }), 10_000, { code: 'TEST_GUARD', what: 'connect' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TimeoutError);
      expect((err as TimeoutError).code).toBe('KATATS_QMP_CONNECT_TIMEOUT');
    } finally {
      for (const s of conns) s.destroy();
      server.close();
    }
  });
});
