// stdin between containerd's FIFO and the agent, through the Task service and the local agent:
// a failed write spoils nothing after it, and a process that does not read its stdin holds the
// writer back instead of growing the shim.
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../agent/helpers.js';
import { TaskHarness } from './task-harness.js';
import { allowAllPolicy } from '../../policy/allow-all.js';

describe('stdin', () => {
  let h: TaskHarness;
  const denied = () => h.guest.agent.agent.sandbox.policy.timings.denials('WriteStreamRequest');
  beforeAll(async () => {
    h = await TaskHarness.start('ts-stdin', {
      // The guest refusing one write (here its policy, for data starting with "poison"): the copy
      // must go on with the next one.
      agent: {
        defaultPolicy: {
          source: 'test',
          text: `${allowAllPolicy()}\nWriteStreamRequest := false {\n  array.slice(input.data, 0, 6) == [112, 111, 105, 115, 111, 110]\n}\n`,
        },
      },
    });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('one failed WriteStdin does not stop the writes after it', async () => {
    const io = await h.run('ts-stdin', ['cat'], { stdin: true });
    const w = await io.openStdin();
    await w.write('first\n');
    await io.out.waitFor('first\n');
    await w.write('poison\n');
    for (let i = 0; i < 100 && denied() === 0; i++) await sleep(20);
    expect(denied()).toBe(1);
    await w.write('after\n');
    await io.out.waitFor('after\n');
    expect(io.out.text).toBe('first\nafter\n');
    await w.close();
    // End of input reaches cat: it exits by itself.
    expect((await h.call('Wait', { id: 'ts-stdin' })).exit_status).toBe(0);
    await h.call('Delete', { id: 'ts-stdin' });
  });

});

describe('stdin of a process that does not read it', () => {
  let h: TaskHarness;
  beforeAll(async () => {
    h = await TaskHarness.start('ts-stdin-full');
  });
  afterAll(async () => {
    await h?.close();
  });

  it('a process that does not read its stdin holds the writer back (the shim buffers a bounded amount), and its exit lets go', async () => {
    await h.run('ts-stdin-full', ['sleep', '1000'], { stdin: true });
    const fifo = (await h.call('State', { id: 'ts-stdin-full' })).stdin;
    const w = await fs.promises.open(fifo, 'w');
    const total = 16 << 20;
    let written = 0;
    const chunk = Buffer.alloc(64 << 10, 'y');
    const writing = (async () => {
      while (written < total) written += (await w.write(chunk)).bytesWritten;
    })().catch((e: NodeJS.ErrnoException) => e.code);
    // Until the writer stalls: the FIFO, the shim's bound, the agent's pipe and one call in flight are full.
    let before = -1;
    for (let i = 0; i < 100 && written !== before; i++) {
      before = written;
      await sleep(300);
    }
    expect(written).toBeLessThan(6 << 20);
    expect(written).toBeGreaterThan(1 << 20);
    await h.call('Kill', { id: 'ts-stdin-full', signal: 9 });
    expect((await h.call('Wait', { id: 'ts-stdin-full' })).exit_status).toBe(137);
    // The copy stopped with the process: the writer sees its reader gone rather than waiting forever.
    expect(await writing).toBe('EPIPE');
    await w.close();
    await h.call('Delete', { id: 'ts-stdin-full' });
  });
});
