// The output copy (shim/stdio.ts pump) from the agent's reads to containerd's FIFO: it stays the
// same size however often a slow reader pushes back.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openOutput, pump } from '../../shim/stdio.js';
import { sleep } from '../agent/helpers.js';
import { tempDir } from '../support/tmp.js';

describe('the output copy', () => {
  let tmp: { dir: string; cleanup: () => void };
  beforeAll(() => {
    tmp = tempDir('katats-pump-');
  });
  afterAll(() => tmp?.cleanup());

  it('keeps one set of listeners on its sink however many times a slow reader pushes back', async () => {
    const fifo = path.join(tmp.dir, 'out');
    execFileSync('mkfifo', [fifo]);
    const reader = new net.Socket({ fd: fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK), readable: true, writable: false });
    let got = 0;
    reader.on('data', (d: Buffer) => {
      got += d.length;
      // A slow reader: a pause after every read, so the writer meets back-pressure again and again.
      reader.pause();
      setTimeout(() => reader.resume(), 2);
    });
    const sink = await openOutput(fifo);
    const base = { close: sink.stream.listenerCount('close'), error: sink.stream.listenerCount('error'), drain: sink.stream.listenerCount('drain') };
    let most = { ...base };
    const chunks = 300;
    let n = 0;
    const sent = await pump(async () => {
      most = {
        close: Math.max(most.close, sink.stream.listenerCount('close')),
        error: Math.max(most.error, sink.stream.listenerCount('error')),
        drain: Math.max(most.drain, sink.stream.listenerCount('drain')),
      };
      return n++ < chunks ? Buffer.alloc(128 << 10, 'z') : null;
    }, sink.stream);
    await sink.close();
    for (let i = 0; i < 200 && got < sent; i++) await sleep(20);
    reader.destroy();
    expect(sent).toBe(chunks * (128 << 10));
    expect(got).toBe(sent);
    expect(most.close - base.close).toBeLessThanOrEqual(1);
    expect(most.error - base.error).toBeLessThanOrEqual(1);
    expect(most.drain - base.drain).toBeLessThanOrEqual(1);
  });
});
