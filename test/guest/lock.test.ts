// The image builders' cross-process lock: a lock left by a builder that died is taken over,
// whether it names its dead owner or was left empty mid-take.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { withLock } from '../../guest/lock.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-lock-');
afterAll(() => tmp.cleanup());

it('takes over the lock of a dead owner and an empty lock older than 10 s, and waits for a fresh empty one', async () => {
  const lock = path.join(tmp.dir, 'build.lock');
  const deadPid = spawnSync('true').pid!;
  fs.writeFileSync(lock, String(deadPid));
  expect(await withLock(lock, async () => 'dead owner')).toBe('dead owner');
  expect(fs.existsSync(lock)).toBe(false);

  fs.writeFileSync(lock, '');
  const old = new Date(Date.now() - 60_000);
  fs.utimesSync(lock, old, old);
  expect(await withLock(lock, async () => 'empty')).toBe('empty');

  // A fresh empty lock is someone taking it right now: wait.
  fs.writeFileSync(lock, '');
  const result = await Promise.race([withLock(lock, async () => 'taken'), new Promise((r) => setTimeout(() => r('waiting'), 1000))]);
  expect(result).toBe('waiting');
  fs.rmSync(lock);
  await new Promise((r) => setTimeout(r, 400));
}, 30_000);
