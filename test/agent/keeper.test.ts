// The runner's keeper (the real binary): requests answered in order on one long-lived process,
// bad requests refused without ending it. Run on the host, so only requests that leave the host
// as it was: seeds (credited entropy), refused clock values (never a real clock change), and a
// tmpfs mounted on a temp dir of the test's and unmounted again.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { Keeper } from '../../agent/keeper.js';
import { isMounted, mountFlags, mountInfo, umount } from '../../sys/mount.js';
import { runner } from './helpers.js';

const log = pino({ level: 'silent' });
const keepers: Keeper[] = [];
afterAll(() => keepers.forEach((k) => k.stop()));

/** The keeper's raw answers to raw request lines (what a broken or hostile caller could send). */
function raw(input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(runner(), ['keeper'], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('exit', () => resolve(out));
    p.stdin.end(input);
  });
}

describe('katats-runner keeper', () => {
  it('credits seeds to the kernel and reseeds its CRNG, answering each request in order on one process', async () => {
    const k = Keeper.start(runner(), log);
    keepers.push(k);
    await Promise.all([k.seed(Buffer.alloc(64, 1)), k.seed(Buffer.alloc(512, 2)), k.seed(Buffer.from([3]))]);
    await expect(k.seed(Buffer.alloc(513))).rejects.toThrow('seed wants 1..512 bytes, got 513');
    await expect(k.setTime(-1, 0)).rejects.toThrow('time wants SEC USEC');
    await expect(k.setTime(1, 1_000_000)).rejects.toThrow('time wants SEC USEC');
    // Still serving after refusals.
    await k.seed(Buffer.alloc(8, 4));
    expect(k.alive).toBe(true);
  });

  it('refuses malformed, unknown and over-long requests and keeps reading', async () => {
    const out = await raw(`seed zz\nseed 123\nbogus\ntime 1 2 3\nseed ${'ab'.repeat(600)}\nseed ${'a'.repeat(17000)}\nseed 00ff\n`);
    expect(out.split('\n')).toEqual([
      'error seed is not hex',
      'error seed wants 1..512 bytes as hex',
      'error unknown request',
      'error time wants SEC USEC',
      'error seed wants 1..512 bytes as hex',
      'error request longer than 16384 bytes',
      'ok',
      '',
    ]);
  });
});

describe('katats-runner keeper mounts', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-keeper-'));
  afterAll(async () => {
    if (isMounted(dir)) await umount(dir, true);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('makes one mount(2) per request with the flags and data mount(8) would pass, and a bind remount read-only', async () => {
    const k = Keeper.start(runner(), log);
    keepers.push(k);
    const opts = mountFlags(['noexec', 'nosuid', 'nodev', 'mode=0700', 'size=1048576']);
    expect(opts).toEqual({ flags: 0x8 | 0x2 | 0x4, data: 'mode=0700,size=1048576' });
    expect(await k.mount('ktkeeper', dir, 'tmpfs', opts.flags, opts.data)).toBe(true);
    const m = mountInfo().find((x) => x.mountPoint === dir)!;
    expect(m).toMatchObject({ fstype: 'tmpfs', source: 'ktkeeper' });
    expect(m.options).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'noexec']));
    expect(m.superOptions).toEqual(expect.arrayContaining(['size=1024k', 'mode=700']));
    const ro = mountFlags(['remount', 'bind', 'ro', 'nosuid']);
    expect(await k.mount('none', dir, undefined, ro.flags, ro.data)).toBe(true);
    expect(mountInfo().find((x) => x.mountPoint === dir)!.options).toEqual(expect.arrayContaining(['ro', 'nosuid']));
    expect(() => fs.writeFileSync(path.join(dir, 'f'), 'x')).toThrow(/EROFS/);
    // The kernel's refusal comes back as the error, and the keeper goes on.
    await expect(k.mount('none', path.join(dir, 'missing'), 'tmpfs', 0, '')).rejects.toThrow(/^mount .*missing: No such file or directory$/);
    // Too long for one request line: mount(8) is to do it.
    expect(await k.mount('none', dir, 'overlay', 0, `lowerdir=${'x'.repeat(1100)}`)).toBe(false);
    await umount(dir);
    expect(k.alive).toBe(true);
  });

  it('makes the pod\'s ipc and uts namespaces in a forked child, the host\'s hostname untouched', async () => {
    const k = Keeper.start(runner(), log);
    keepers.push(k);
    const ns = fs.mkdtempSync(path.join(dir, '..', 'kt-keeper-ns-'));
    try {
      expect(await k.sharedNamespaces(ns, 'kt-keeper-pod', 30_000)).toBe(true);
      const mounted = mountInfo().filter((m) => m.mountPoint.startsWith(`${ns}/`));
      expect(mounted.map((m) => [path.basename(m.mountPoint), m.fstype]).sort()).toEqual([['ipc', 'nsfs'], ['uts', 'nsfs']]);
      expect(execFileSync('nsenter', [`--uts=${ns}/uts`, 'hostname'], { encoding: 'utf8' }).trim()).toBe('kt-keeper-pod');
      expect(os.hostname()).not.toBe('kt-keeper-pod');
      await expect(k.sharedNamespaces(path.join(ns, 'missing'), 'x', 30_000)).rejects.toThrow(/^ns failed/);
      expect(k.alive).toBe(true);
    } finally {
      for (const n of ['ipc', 'uts']) if (isMounted(path.join(ns, n))) await umount(path.join(ns, n));
      fs.rmSync(ns, { recursive: true, force: true });
    }
  });

  it('refuses malformed mount requests and keeps reading', async () => {
    const hex = (s: string) => Buffer.from(s).toString('hex');
    const out = await raw(`mount zz ${hex('/x')} - 0 -\nmount ${hex('a')} ${hex('/x')} - 0\nmount - ${hex('/x')} - 0 -\nmount ${hex('a')} ${hex('/x')} - 1x -\nmount ${hex('a')} ${hex('a\0b')} - 0 -\nseed 00ff\n`);
    expect(out.split('\n')).toEqual([
      'error mount: bad hex',
      'error mount wants SRC TARGET FSTYPE FLAGS DATA',
      'error mount wants SRC TARGET FSTYPE FLAGS DATA',
      'error mount wants SRC TARGET FSTYPE FLAGS DATA',
      'error mount: bad hex',
      'ok',
      '',
    ]);
  });
});
