// katats through Debian's containerd, unmodified: ctr drives the shim, the shim boots a QEMU guest
// (TCG unless a probe proved KVM), the agent inside runs the container with crun.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { sandboxCgroups, startEvents, until } from './shim-helpers.js';
import { describePodSurface } from '../security/pod-surface.js';
import { DAEMON_V8_FLAGS } from '../../shim/start.js';

const INDEX = 'katats.local/busybox:index';
const CYCLES = 8;
/** Pods running at once: overlap is where cleanup races live; three cold TCG boots beside another suite's VMs starved the guests (a 64 s boot in CI). */
const AT_ONCE = 2;
let env: KatatsEnv;
let c: Containerd;
let image: string;
const qemuProcs = (sandbox?: string) => helpers.qemuProcs(env.stateDir, sandbox);
const shimProcs = (id?: string) => helpers.shimProcs(c.address, id);
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, c.logFile);

beforeAll(async () => {
  env = await katatsEnv();
  c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, INDEX);
  image = img.name;
}, 600_000);

afterAll(() => helpers.endKatatsSuite(c, env), 120_000);

describe('ctr run with io.containerd.katats.v2', () => {
  it('runs the container in a VM with its own kernel, and passes the exit code', async () => {
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'uname1', 'uname', '-r'], { timeoutMs: 240_000 });
    expect(r.stderr, logsOf('uname1')).toBe('');
    expect(r.code, logsOf('uname1')).toBe(0);
    expect(r.stdout.trim()).toBe(env.image.manifest.kernel.release);
    expect(r.stdout.trim()).not.toBe(os.release());
    const e = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'exit3', 'sh', '-c', 'echo out; echo err >&2; exit 3'], { timeoutMs: 300_000 });
    expect(e.code).toBe(3);
    expect(e.stdout).toBe('out\n');
    expect(e.stderr).toContain('err');
    expect(qemuProcs()).toEqual([]);
  }, 600_000);

  it('copies stdin into the container', async () => {
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'stdin1', 'sh', '-c', 'tr a-z A-Z; echo done'], { timeoutMs: 180_000, input: 'hello katats\n' });
    expect(r.code, logsOf('stdin1')).toBe(0);
    expect(r.stdout).toBe('HELLO KATATS\ndone\n');
  }, 600_000);

  it('exec, ps, pause/resume, metrics, kill and delete on a running task, with events in order', async () => {
    const ev = startEvents(c);
    try {
      await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'long1', 'sh', '-c', 'i=0; while true; do i=$((i+1)); sleep 0.2; done'], { timeoutMs: 300_000 });
      const ex = await c.ctr(['task', 'exec', '--exec-id', 'e1', 'long1', 'sh', '-c', 'echo from-exec; exit 7']);
      expect(ex.stdout).toBe('from-exec\n');
      expect(ex.code).toBe(7);
      // ps lists the task's process: the pid `task ls` reports, and only pids.
      const lsPid = /long1\s+(\d+)\s+RUNNING/.exec((await c.ctrOk(['task', 'ls'])).stdout)?.[1];
      expect(Number(lsPid)).toBeGreaterThan(0);
      const ps = await c.ctrOk(['task', 'ps', 'long1']);
      const psRows = ps.stdout.trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/)[0]);
      expect(psRows.length, ps.stdout).toBeGreaterThan(0);
      expect(psRows.every((p) => /^\d+$/.test(p ?? '')), ps.stdout).toBe(true);
      expect(psRows, ps.stdout).toContain(lsPid);
      await c.ctrOk(['task', 'pause', 'long1']);
      expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/long1\s+\d+\s+PAUSED/);
      await c.ctrOk(['task', 'resume', 'long1']);
      expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/long1\s+\d+\s+RUNNING/);
      // The guest's cgroup figures for the container: memory in use, and its processes.
      const m = await c.ctrOk(['task', 'metrics', 'long1']);
      const metric = (name: string) => Number(new RegExp(`^${name.replace(/\./g, '\\.')}\\s+(\\d+)\\s*$`, 'm').exec(m.stdout)?.[1] ?? NaN);
      expect(metric('memory.usage_in_bytes'), m.stdout).toBeGreaterThan(0);
      expect(metric('pids.current'), m.stdout).toBeGreaterThanOrEqual(1);
      await c.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'long1']);
      const st = await until(() => c.ctr(['task', 'ls']), (r) => /long1\s+\d+\s+STOPPED/.test(r.stdout));
      expect(st.stdout).toMatch(/long1\s+\d+\s+STOPPED/);
      await c.ctrOk(['task', 'rm', 'long1']);
      await c.ctrOk(['container', 'rm', 'long1']);
      await until(() => ev.lines.filter((l) => l.includes('long1')).length, (n) => n >= 9, 10_000);
      const topics = ev.lines.filter((l) => l.includes('long1')).map((l) => /\s(\/tasks\/[a-z-]+)\s/.exec(l)?.[1] ?? '');
      const order = ['/tasks/create', '/tasks/start', '/tasks/exec-added', '/tasks/exec-started', '/tasks/paused', '/tasks/resumed', '/tasks/exit', '/tasks/delete'];
      for (const t of order) expect(topics, `event ${t}`).toContain(t);
      // create < start < exec-added < exec-started, paused < resumed, exit(init) before delete.
      const at = (t: string) => topics.indexOf(t);
      expect(at('/tasks/create')).toBeLessThan(at('/tasks/start'));
      expect(at('/tasks/start')).toBeLessThan(at('/tasks/exec-added'));
      expect(at('/tasks/exec-added')).toBeLessThan(at('/tasks/exec-started'));
      expect(at('/tasks/paused')).toBeLessThan(at('/tasks/resumed'));
      expect(topics.lastIndexOf('/tasks/exit')).toBeLessThan(at('/tasks/delete'));
    } finally {
      ev.child.kill();
    }
    await until(() => qemuProcs(), (p) => p.length === 0, 30_000);
    expect(qemuProcs()).toEqual([]);
  }, 600_000);

  it('QEMU killed under a running container: the task exits with an error status and events say so', async () => {
    const ev = startEvents(c);
    try {
      await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'victim', 'sleep', '1000'], { timeoutMs: 300_000 });
      const [vm] = qemuProcs('victim');
      expect(vm).toBeDefined();
      process.kill(vm!, 'SIGKILL');
      const st = await until(() => c.ctr(['task', 'ls']), (r) => /victim\s+\d+\s+STOPPED/.test(r.stdout), 30_000);
      expect(st.stdout, logsOf('victim')).toMatch(/victim\s+\d+\s+STOPPED/);
      await until(() => ev.lines.some((l) => l.includes('/tasks/exit') && l.includes('victim')), Boolean, 10_000);
      expect(ev.lines.some((l) => l.includes('/tasks/exit') && l.includes('victim'))).toBe(true);
      await c.ctrOk(['task', 'rm', 'victim']);
      await c.ctrOk(['container', 'rm', 'victim']);
    } finally {
      ev.child.kill();
    }
    await until(() => shimProcs(), (p) => p.length === 0, 30_000);
    expect(shimProcs()).toEqual([]);
  }, 600_000);

  it('kill -9 of the shim: containerd cleans up through `shim delete`, leaving no QEMU, mount or socket', async () => {
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'orphan', 'sleep', '1000'], { timeoutMs: 300_000 });
    const shims = shimProcs('orphan');
    expect(shims.length).toBe(1);
    expect(qemuProcs('orphan').length).toBe(1);
    // The daemon runs with the V8 flags that keep an idle one small (shim/start.ts).
    const daemonArgv = fs.readFileSync(`/proc/${shims[0]}/cmdline`, 'utf8').split('\0');
    expect(daemonArgv.slice(1, 1 + DAEMON_V8_FLAGS.length)).toEqual(DAEMON_V8_FLAGS);
    process.kill(shims[0]!, 'SIGKILL');
    // containerd notices the dead shim, runs `shim delete` and marks the task stopped.
    await until(() => qemuProcs(), (p) => p.length === 0, 60_000);
    expect(qemuProcs()).toEqual([]);
    await c.ctr(['task', 'rm', '-f', 'orphan']);
    await c.ctrOk(['container', 'rm', 'orphan']);
    // The dead shim's host cgroups too (ctr's cgroupsPath is /<namespace>/<id>).
    expect(await until(() => sandboxCgroups('orphan', c.namespace), (d) => d.length === 0, 10_000)).toEqual([]);
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(env.stateDir));
    expect(mounts).toEqual([]);
    const sockets = fs.existsSync(path.join(env.stateDir, 's')) ? fs.readdirSync(path.join(env.stateDir, 's')) : [];
    expect(sockets).toEqual([]);
  }, 600_000);

  it('kill -9 of the shim of a container in a network namespace: `shim delete` also removes its TAPs and tc filters', async () => {
    // A namespace of the test's own with a veth, named in the spec as CNI's is (ctr --with-ns):
    // unlike CRI's, it outlives the container, so what is left in it is what the shim left.
    const ns = `katats-kill-${process.pid}`;
    const host = `kk${process.pid % 100000}h`;
    const ipn = (...a: string[]) => execFileSync('ip', ['-n', ns, ...a], { encoding: 'utf8' });
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      execFileSync('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      ipn('addr', 'add', '10.226.1.5/24', 'dev', 'eth0');
      ipn('link', 'set', 'eth0', 'up');
      await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), '--with-ns', `network:/run/netns/${ns}`, image, 'netorphan', 'sleep', '1000'], { timeoutMs: 300_000 });
      expect(ipn('-o', 'link', 'show'), logsOf('netorphan')).toMatch(/tap0_kata/);
      expect(execFileSync('tc', ['-n', ns, 'filter', 'show', 'dev', 'eth0', 'ingress'], { encoding: 'utf8' })).toMatch(/mirred/);
      // The guest has the namespace's address.
      const ex = await c.ctr(['task', 'exec', '--exec-id', 'ip1', 'netorphan', 'ip', '-o', 'addr', 'show', 'eth0']);
      expect(ex.stdout, logsOf('netorphan')).toContain('inet 10.226.1.5/24');
      const shims = shimProcs('netorphan');
      expect(shims.length).toBe(1);
      process.kill(shims[0]!, 'SIGKILL');
      await until(() => qemuProcs('netorphan'), (p) => p.length === 0, 60_000);
      await until(() => ipn('-o', 'link', 'show'), (l) => !l.includes('tap0_kata'), 30_000);
      expect(ipn('-o', 'link', 'show')).not.toMatch(/tap\d+_kata/);
      expect(execFileSync('tc', ['-n', ns, 'qdisc', 'show', 'dev', 'eth0'], { encoding: 'utf8' })).not.toMatch(/ingress/);
      await c.ctr(['task', 'rm', '-f', 'netorphan']);
      await c.ctrOk(['container', 'rm', 'netorphan']);
    } finally {
      try {
        execFileSync('ip', ['link', 'del', host], { stdio: 'ignore' });
      } catch {
        /* never made */
      }
      execFileSync('ip', ['netns', 'del', ns]);
    }
  }, 600_000);

  it('containerd restarted while a katats container runs: it reconnects and the container survives', async () => {
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'survivor', 'sh', '-c', 'while true; do sleep 0.5; done'], { timeoutMs: 300_000 });
    const vmBefore = qemuProcs('survivor');
    expect(vmBefore.length).toBe(1);
    await c.restart();
    expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/survivor\s+\d+\s+RUNNING/);
    const ex = await c.ctr(['task', 'exec', '--exec-id', 'after-restart', 'survivor', 'echo', 'still here']);
    expect(ex.stdout, logsOf('survivor')).toBe('still here\n');
    expect(qemuProcs('survivor')).toEqual(vmBefore);
    await c.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'survivor']);
    await until(() => c.ctr(['task', 'ls']), (r) => /survivor\s+\d+\s+STOPPED/.test(r.stdout));
    await c.ctrOk(['task', 'rm', 'survivor']);
    await c.ctrOk(['container', 'rm', 'survivor']);
    await until(() => qemuProcs('survivor'), (p) => p.length === 0, 30_000);
    expect(qemuProcs('survivor')).toEqual([]);
  }, 600_000);

  it('a bad spec is refused with a clear error and the shim serves the next container', async () => {
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), '--env', 'X=1', '--cwd', 'relative/dir', image, 'badcwd', 'true'], { timeoutMs: 300_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cwd|relative|absolute/i);
    await c.ctr(['container', 'rm', 'badcwd']);
    const ok = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'after-bad', 'echo', 'fine'], { timeoutMs: 300_000 });
    expect(ok.stdout).toBe('fine\n');
  }, 600_000);
});

// The attacks through a real pod (test/security/pod-surface.ts) share this suite's containerd.
describePodSurface(() => ({ env, c, image, logsOf }));

describe('create/delete cycles', () => {
  it('pods boot, run and go away, two at a time, and nothing piles up', async () => {
    // Only this suite's mounts: other suites' containerd instances and VMs may run at the same time.
    const ours = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(env.stateDir) || l.includes(c.dir));
    const cgroupsOf = () => Array.from({ length: CYCLES }, (_, i) => sandboxCgroups(`cycle${i}`, c.namespace)).flat();
    // A killed earlier run on this machine may have left empty cgroups of these names: not ours to judge.
    const before = { mounts: ours(), cgroups: cgroupsOf() };
    // Eight pods, two at a time: leaks show after one cycle; overlapping pods (shims, VMs, the
    // shared katats_overhead cgroup) are where the cleanup races live, and it keeps CI time down.
    for (let round = 0; round < CYCLES / AT_ONCE; round++) {
      // allSettled: a pod that fails must not end the test while its two neighbours still run.
      const runs = await Promise.allSettled(
        Array.from({ length: AT_ONCE }, async (_, k) => {
          const i = round * AT_ONCE + k;
          const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, `cycle${i}`, 'echo', `cycle ${i}`], { timeoutMs: 300_000 });
          expect(r.stdout, `ctr exit ${r.code}: ${r.stderr}\n${logsOf(`cycle${i}`)}`).toBe(`cycle ${i}\n`);
        }),
      );
      for (const r of runs) if (r.status === 'rejected') throw r.reason;
    }
    await until(() => qemuProcs().length + shimProcs().length, (n) => n === 0, 30_000);
    expect(qemuProcs()).toEqual([]);
    expect(shimProcs()).toEqual([]);
    expect(ours()).toEqual(before.mounts);
    expect(fs.existsSync(path.join(env.stateDir, 'sandboxes')) ? fs.readdirSync(path.join(env.stateDir, 'sandboxes')) : []).toEqual([]);
    expect(fs.existsSync(path.join(env.stateDir, 's')) ? fs.readdirSync(path.join(env.stateDir, 's')) : []).toEqual([]);
    expect(cgroupsOf()).toEqual(before.cgroups);
  }, 1_800_000);
});

describe('cleanliness', () => {
  it('leaves no process, mount or socket of katats behind', () => {
    expect(qemuProcs()).toEqual([]);
    expect(shimProcs()).toEqual([]);
    const mounts = execFileSync('sh', ['-c', `grep -c ${env.stateDir} /proc/self/mountinfo || true`]).toString().trim();
    expect(mounts).toBe('0');
  });
});
