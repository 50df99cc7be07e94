// katats through containerd 2.x: Debian sid's containerd 2.1.9, unpacked from its .deb (never
// installed), drives the same shim and guest as the 1.6 suite (containerd.test.ts). 2.1.9 passes
// MAX_SHIM_VERSION=2, so the shim bootstraps as version 2 and containerd calls
// containerd.task.v2.Task; the `katats3` runtime wraps the shim with MAX_SHIM_VERSION=3, as a
// containerd announcing 3 would, so that 2.1.9's own v3 client calls containerd.task.v3.Task.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { containerdBinaries, startContainerd, type Containerd, type ContainerdBinaries } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { startEvents, until } from './shim-helpers.js';

const INDEX = 'katats.local/busybox:index';
const RUN_MS = 300_000;
let env: KatatsEnv;
let c: Containerd;
let image: string;
const qemuProcs = (sandbox?: string) => helpers.qemuProcs(env.stateDir, sandbox);
const shimProcs = (id?: string) => helpers.shimProcs(c.address, id);
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, c.logFile);

/** containerd's own record of how it connected to a shim: `connecting to shim <id>` with protocol and version. */
function connectLine(id: string): string {
  return (
    fs
      .readFileSync(c.logFile, 'utf8')
      .split('\n')
      .find((l) => l.includes(`msg="connecting to shim ${id}"`)) ?? ''
  );
}

beforeAll(async () => {
  let bins: ContainerdBinaries;
  try {
    bins = await containerdBinaries('sid');
  } catch (e) {
    // No silent skip: this suite exists to prove 2.x works, so an unreachable archive is a failure.
    throw new Error(`containerd 2.x: Debian sid's containerd could not be fetched or unpacked (harness/debs.ts, cache .cache/debs/sid): ${(e as Error).message}`);
  }
  env = await katatsEnv();
  const v3Wrapper = path.join(env.dir, 'containerd-shim-katats3-v2');
  fs.writeFileSync(v3Wrapper, `#!/bin/sh\nMAX_SHIM_VERSION=3 exec ${env.shimWrapper} "$@"\n`, { mode: 0o755 });
  c = await startContainerd({
    binaries: bins,
    // debug: containerd then passes -debug to the shim, as a node with debug logs would.
    logLevel: 'debug',
    runtimes: [env.runtime, { name: 'katats3', runtimeType: 'io.containerd.katats3.v2', shimBinary: v3Wrapper }],
  });
  const img = await busyboxImage();
  await c.importImage(img.archive, INDEX);
  image = img.name;
}, 900_000);

afterAll(async () => {
  const report = await helpers.endKatatsSuite(c, env);
  expect(report?.unmounted ?? []).toEqual([]);
}, 120_000);

describe('ctr of containerd 2.x with io.containerd.katats.v2', () => {
  it('is containerd 2.x from sid', () => {
    expect(c.binaries.flavor).toBe('sid');
    expect(c.binaries.major).toBe(2);
  });

  it('runs the container in a VM with its own kernel; the shim bootstraps as version 2 over ttrpc', async () => {
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'uname2', 'uname', '-r'], { timeoutMs: RUN_MS });
    expect(r.stderr, logsOf('uname2')).toBe('');
    expect(r.code, logsOf('uname2')).toBe(0);
    expect(r.stdout.trim()).toBe(env.image.manifest.kernel.release);
    expect(r.stdout.trim()).not.toBe(os.release());
    const line = connectLine('uname2');
    expect(line).toMatch(/protocol=ttrpc/);
    expect(line).toMatch(/version=2\b/);
    expect(line).toContain(`address="unix://${env.stateDir}/s/`);
  }, RUN_MS);

  it('copies stdin in, stdout and stderr out, and passes exit code 3', async () => {
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'io2', 'sh', '-c', 'tr a-z A-Z; echo err >&2; exit 3'], {
      timeoutMs: RUN_MS,
      input: 'hello katats\n',
    });
    expect(r.code, logsOf('io2')).toBe(3);
    expect(r.stdout).toBe('HELLO KATATS\n');
    expect(r.stderr).toContain('err');
  }, RUN_MS);

  it('over containerd.task.v3.Task: exec, kill and delete on a running task, with events in order', async () => {
    const ev = startEvents(c);
    try {
      await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats3'), image, 'long2', 'sh', '-c', 'while true; do sleep 0.2; done'], { timeoutMs: RUN_MS });
      expect(connectLine('long2'), logsOf('long2')).toMatch(/version=3\b/);
      expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/long2\s+\d+\s+RUNNING/);
      const ex = await c.ctr(['task', 'exec', '--exec-id', 'e1', 'long2', 'sh', '-c', 'echo from-exec; exit 7'], { timeoutMs: 120_000 });
      expect(ex.stdout, logsOf('long2')).toBe('from-exec\n');
      expect(ex.code).toBe(7);
      await c.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'long2']);
      const st = await until(() => c.ctr(['task', 'ls']), (r) => /long2\s+\d+\s+STOPPED/.test(r.stdout));
      expect(st.stdout, logsOf('long2')).toMatch(/long2\s+\d+\s+STOPPED/);
      await c.ctrOk(['task', 'rm', 'long2']);
      await c.ctrOk(['container', 'rm', 'long2']);
      const mine = () => ev.lines.filter((l) => l.includes('long2'));
      await until(mine, (ls) => ls.some((l) => l.includes('/tasks/delete')), 10_000);
      const topics = mine().map((l) => /\s(\/tasks\/[a-z-]+)\s/.exec(l)?.[1] ?? '');
      for (const t of ['/tasks/create', '/tasks/start', '/tasks/exec-added', '/tasks/exec-started', '/tasks/exit', '/tasks/delete']) expect(topics, `event ${t}`).toContain(t);
      const at = (t: string) => topics.indexOf(t);
      expect(at('/tasks/create')).toBeLessThan(at('/tasks/start'));
      expect(at('/tasks/start')).toBeLessThan(at('/tasks/exec-added'));
      expect(at('/tasks/exec-added')).toBeLessThan(at('/tasks/exec-started'));
      expect(topics.lastIndexOf('/tasks/exit')).toBeLessThan(at('/tasks/delete'));
    } finally {
      ev.child.kill();
    }
    await until(() => qemuProcs('long2').length + shimProcs('long2').length, (n) => n === 0, 30_000);
    expect(qemuProcs('long2')).toEqual([]);
    expect(shimProcs('long2')).toEqual([]);
  }, 2 * RUN_MS);

  it('containerd 2.x restarted reconnects from bootstrap.json; after kill -9 of the shim it runs `shim delete` and reports exit 137', async () => {
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'orphan2', 'sleep', '1000'], { timeoutMs: RUN_MS });
    const bootstrap = path.join(c.state, 'io.containerd.runtime.v2.task', c.namespace, 'orphan2', 'bootstrap.json');
    expect(JSON.parse(fs.readFileSync(bootstrap, 'utf8'))).toMatchObject({ version: 2, protocol: 'ttrpc' });
    await c.restart();
    expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/orphan2\s+\d+\s+RUNNING/);
    // Subscribed after the restart (a ctr events stream ends with the containerd it watched); the
    // exec's own events show that the stream is live before the shim is killed.
    const ev = startEvents(c);
    try {
      const ex = await c.ctr(['task', 'exec', '--exec-id', 'after-restart', 'orphan2', 'echo', 'still here'], { timeoutMs: 120_000 });
      expect(ex.stdout, logsOf('orphan2')).toBe('still here\n');
      await until(() => ev.lines.some((l) => l.includes('/tasks/exec-started') && l.includes('after-restart')), Boolean, 10_000);
      const shims = shimProcs('orphan2');
      expect(shims.length).toBe(1);
      expect(qemuProcs('orphan2').length).toBe(1);
      process.kill(shims[0]!, 'SIGKILL');
      await until(() => qemuProcs('orphan2'), (p) => p.length === 0, 60_000);
      expect(qemuProcs('orphan2'), logsOf('orphan2')).toEqual([]);
      const exit = await until(
        () => ev.lines.find((l) => l.includes('/tasks/exit') && l.includes('"id":"orphan2"')),
        Boolean,
        30_000,
      );
      expect(exit, logsOf('orphan2')).toMatch(/"exit_status":137/);
    } finally {
      ev.child.kill();
    }
    // 2.x forgets the task once the dead shim is cleaned up; `rm -f` only makes sure.
    await c.ctr(['task', 'rm', '-f', 'orphan2']);
    await c.ctrOk(['container', 'rm', 'orphan2']);
  }, 2 * RUN_MS);

  it('leaves no QEMU, shim, mount, socket or sandbox state behind', async () => {
    await until(() => qemuProcs().length + shimProcs().length, (n) => n === 0, 30_000);
    expect(qemuProcs()).toEqual([]);
    expect(shimProcs()).toEqual([]);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(env.stateDir) || l.includes(c.dir))).toEqual([]);
    const ls = (d: string) => (fs.existsSync(path.join(env.stateDir, d)) ? fs.readdirSync(path.join(env.stateDir, d)) : []);
    expect(ls('s')).toEqual([]);
    expect(ls('sandboxes')).toEqual([]);
    expect((await c.ctrOk(['task', 'ls', '-q'])).stdout.trim()).toBe('');
  });
});
