// crun under a time limit: a crun that blocks (here on a state file that is a FIFO, as a dead
// mount or a frozen cgroup would make it) is killed past the limit and the agent answers
// DeadlineExceeded naming the wait, instead of one request hanging forever.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { CRUN_TIMEOUT, Crun } from '../../agent/runtime/crun.js';
import { Keeper } from '../../agent/keeper.js';
import type { OciSpec } from '../../agent/spec.js';
import { findRunner } from '../../agent/runtime/runner.js';
import { Code, TtrpcError } from '../../proto/ttrpc/index.js';
import { withTimeout } from '../../sys/timeout.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-crun-');

/** The parent pid of a live process. */
function parentOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function processesNaming(s: string): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(s)) out.push(`${pid} ${cmd}`);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
afterAll(() => tmp.cleanup());

describe('crun with a time limit', () => {
  it('a crun that blocks is killed and reported as DeadlineExceeded with KATATS_CRUN_TIMEOUT', async () => {
    const root = path.join(tmp.dir, 'root');
    fs.mkdirSync(path.join(root, 'wedged'), { recursive: true });
    execFileSync('mkfifo', [path.join(root, 'wedged', 'status')]);
    const crun = new Crun({ crun: 'crun', runner: findRunner(), root, hideUnified: false, timeoutMs: 1000 });
    const t0 = Date.now();
    // The test's own limit, so code without one fails here instead of hanging the suite.
    const err = await withTimeout(crun.kill('wedged', 9), 15_000, { code: 'TEST_GUARD', what: 'crun kill' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TtrpcError);
    expect((err as TtrpcError).code).toBe(Code.DeadlineExceeded);
    expect((err as Error).message).toContain(CRUN_TIMEOUT);
    expect(Date.now() - t0).toBeLessThan(10_000);
    // Killed, not left behind.
    expect(processesNaming(root)).toEqual([]);
  }, 30_000);

  it('forked by the keeper, the same: crun is the keeper\'s child, killed past the limit and reaped', async () => {
    const root = path.join(tmp.dir, 'root-keeper');
    fs.mkdirSync(path.join(root, 'wedged'), { recursive: true });
    execFileSync('mkfifo', [path.join(root, 'wedged', 'status')]);
    const keeper = Keeper.start(findRunner(), pino({ level: 'silent' }));
    try {
      const crun = new Crun({ crun: 'crun', runner: findRunner(), root, hideUnified: false, timeoutMs: 3000, keeper, outputDir: path.join(tmp.dir, 'out') });
      const killing = withTimeout(crun.kill('wedged', 9), 15_000, { code: 'TEST_GUARD', what: 'crun kill' }).catch((e: unknown) => e);
      let parents: number[] = [];
      for (let i = 0; i < 40 && !parents.length; i++) {
        await new Promise((r) => setTimeout(r, 50));
        parents = processesNaming(root).map((l) => parentOf(Number(l.split(' ')[0])));
      }
      expect(parents).toEqual([keeper.pid]);
      const err = await killing;
      expect((err as TtrpcError).code).toBe(Code.DeadlineExceeded);
      expect((err as Error).message).toContain(CRUN_TIMEOUT);
      expect(processesNaming(root)).toEqual([]);
      // Its output comes back as a spawned one's does, and no output file is left.
      expect(await crun.state('no-such-container')).toBeUndefined();
      const r = await crun.run(['--version']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^crun version/);
      expect(fs.readdirSync(path.join(tmp.dir, 'out'))).toEqual([]);
      expect(keeper.alive).toBe(true);
    } finally {
      keeper.stop();
    }
  }, 30_000);
});

describe('crun at fixed addresses (fixedAddresses: TCG translates code again at every new address)', () => {
  // A stand-in for crun that says which persona it was exec'd with: ADDR_NO_RANDOMIZE is 0x0040000.
  const fake = path.join(tmp.dir, 'persona-crun');
  fs.writeFileSync(fake, '#!/bin/sh\necho "persona $(cat /proc/$$/personality)" >&2\nexit 3\n', { mode: 0o755 });
  const persona = async (p: Promise<unknown>) => /persona (\w+)/.exec(String(await p.then(() => 'no error', (e: Error) => e.message)))?.[1];

  for (const how of ['spawned', 'forked by the keeper'] as const) {
    it(`${how}: start, kill and delete without hooks run with ASLR off; with hooks, or without the option, with it on`, async () => {
      const keeper = how === 'spawned' ? undefined : Keeper.start(findRunner(), pino({ level: 'silent' }));
      try {
        const byKeeper = keeper ? { keeper, outputDir: path.join(tmp.dir, `out-${how.length}`) } : {};
        const fixed = new Crun({ crun: fake, runner: findRunner(), hideUnified: false, fixedAddresses: true, ...byKeeper });
        expect(await persona(fixed.start('c1'))).toBe('00040000');
        expect(await persona(fixed.kill('c1', 15))).toBe('00040000');
        expect(await persona(fixed.delete('c1'))).toBe('00040000');
        // A poststart or poststop hook is a process crun starts: it keeps ASLR, so crun does.
        expect(await persona(fixed.start('c1', { runsHooks: true }))).toBe('00000000');
        expect(await persona(fixed.delete('c1', true, { runsHooks: true }))).toBe('00000000');
        // A command that starts a process never runs fixed, whoever asks.
        expect((await fixed.run(['exec', 'c1'])).stderr).toBe('persona 00000000');
        const randomized = new Crun({ crun: fake, runner: findRunner(), hideUnified: false, ...byKeeper });
        expect(await persona(randomized.start('c1'))).toBe('00000000');
        // create too, with a persona for the container's init to apply before its exec (the host
        // never sends one); not with a hook create runs, nor for exec (runnerPrefix).
        const spec = { ociVersion: '1.0.2' } as OciSpec;
        expect(fixed.createFlags(spec)).toEqual(['--no-aslr']);
        expect(spec.linux?.personality).toEqual({ domain: 'LINUX' });
        const hooked = { ociVersion: '1.0.2' } as OciSpec;
        expect(fixed.createFlags(hooked, { runsHooks: true })).toEqual([]);
        expect(hooked.linux?.personality).toBeUndefined();
        expect(randomized.createFlags(hooked)).toEqual([]);
        expect(fixed.runnerPrefix()).toEqual([]);
      } finally {
        keeper?.stop();
      }
    }, 30_000);
  }
});
