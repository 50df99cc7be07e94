// The Task service through its launcher seam: the real agent in local mode stands in for the VM
// (local-guest.ts), so every lifecycle case runs in seconds without QEMU or containerd.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskHarness } from './task-harness.js';

const STOPPED = 3;
const RUNNING = 2;

describe('TaskService through the local agent', () => {
  let h: TaskHarness;
  beforeAll(async () => {
    h = await TaskHarness.start('ts-basic');
  });
  afterAll(async () => {
    await h?.close();
  });

  it('creates the sandbox container (booting one guest), runs it, passes its output and exit code, and deletes it', async () => {
    const io = await h.run('ts-basic', ['sh', '-c', 'echo hello; echo oops >&2; exit 3']);
    expect(h.launcher.guests.length).toBe(1);
    const w = await h.call('Wait', { id: 'ts-basic' });
    expect(w.exit_status).toBe(3);
    await io.out.waitFor('hello\n');
    await io.err.waitFor('oops\n');
    expect((await h.call('State', { id: 'ts-basic' })).status).toBe(STOPPED);
    const d = await h.call('Delete', { id: 'ts-basic' });
    expect(d.exit_status).toBe(3);
    expect(await h.topics('ts-basic')).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    // The pod's last container is gone: so is its guest.
    await h.launcher.guests[0]!.handle.exited;
  });

});

describe('execs', () => {
  let h: TaskHarness;
  beforeAll(async () => {
    h = await TaskHarness.start('ts-exec');
  });
  afterAll(async () => {
    await h?.close();
  });

  it('execs into a running container, with its own output and exit code', async () => {
    await h.run('ts-exec', ['sh', '-c', 'while :; do sleep 0.1; done']);
    expect((await h.call('State', { id: 'ts-exec' })).status).toBe(RUNNING);
    const io = await h.exec('ts-exec', 'e1', ['sh', '-c', 'echo from-exec; exit 7']);
    expect((await h.call('Wait', { id: 'ts-exec', exec_id: 'e1' })).exit_status).toBe(7);
    await io.out.waitFor('from-exec\n');
    await h.call('Delete', { id: 'ts-exec', exec_id: 'e1' });
    await h.remove('ts-exec');
  });
});
