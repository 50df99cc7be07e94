import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { Server } from '../../proto/ttrpc/index.js';
import { registerService } from '../../proto/rpc.js';
import { unpackAny } from '../../proto/registry.js';
import { EventPublisher } from '../../shim/events.js';
import { tempDir } from '../support/tmp.js';

// A stand-in for containerd's ttrpc events endpoint that records what arrives, and can refuse.
async function eventsServer(sock: string, received: { topic: string; ns: string; name: string; event: unknown }[], failFirst = 0) {
  const s = new Server();
  let fails = failFirst;
  registerService(s, 'containerd.services.events.ttrpc.v1.Events', {
    Forward: (req) => {
      if (fails-- > 0) throw new Error('containerd is busy');
      const env = req.envelope!;
      const { name, message } = unpackAny(env.event!);
      received.push({ topic: env.topic, ns: env.namespace, name, event: message });
      return {};
    },
  });
  await s.listen(sock);
  return s;
}

describe('EventPublisher', () => {
  const tmp = tempDir();
  const log = pino({ enabled: false });
  afterAll(() => tmp.cleanup());

  it('delivers events in order with topic, namespace and the packed event', async () => {
    const sock = path.join(tmp.dir, 'a.sock');
    const got: { topic: string; ns: string; name: string; event: unknown }[] = [];
    const srv = await eventsServer(sock, got);
    const pub = new EventPublisher({ address: `unix://${sock}`, namespace: 'k8s.io', logger: log });
    pub.publish('TaskCreate', { container_id: 'c1', pid: 10, bundle: '/b' });
    pub.publish('TaskStart', { container_id: 'c1', pid: 10 });
    pub.publish('TaskExit', { container_id: 'c1', id: 'c1', pid: 10, exit_status: 3, exited_at: { seconds: 1, nanos: 0 } });
    pub.publish('TaskDelete', { container_id: 'c1', pid: 10, exit_status: 3 });
    await pub.flush();
    expect(got.map((e) => e.topic)).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    expect(got.every((e) => e.ns === 'k8s.io')).toBe(true);
    expect(got[2]).toMatchObject({ name: 'containerd.events.TaskExit', event: { container_id: 'c1', exit_status: 3 } });
    await pub.close();
    await srv.close();
  });

  it('retries a refused event at the head of the queue, keeping the order', async () => {
    const sock = path.join(tmp.dir, 'b.sock');
    const got: { topic: string; ns: string; name: string; event: unknown }[] = [];
    const srv = await eventsServer(sock, got, 2);
    const pub = new EventPublisher({ address: sock, namespace: 'default', logger: log, retryDelayMs: 20 });
    pub.publish('TaskCreate', { container_id: 'c2' });
    pub.publish('TaskStart', { container_id: 'c2' });
    await pub.flush();
    expect(got.map((e) => e.topic)).toEqual(['/tasks/create', '/tasks/start']);
    await pub.close();
    await srv.close();
  });

  it('survives containerd being away, then delivers once it is back', async () => {
    const sock = path.join(tmp.dir, 'c.sock');
    const got: { topic: string; ns: string; name: string; event: unknown }[] = [];
    const pub = new EventPublisher({ address: sock, namespace: 'default', logger: log, retryDelayMs: 50, maxAttempts: 10 });
    pub.publish('TaskOOM', { container_id: 'c3' });
    await new Promise((r) => setTimeout(r, 80));
    const srv = await eventsServer(sock, got);
    await pub.flush();
    expect(got.map((e) => e.topic)).toEqual(['/tasks/oom']);
    await pub.close();
    await srv.close();
  });
});
