// Sandbox-level requests: CreateSandbox/DestroySandbox, CopyFile, metrics, guest details,
// CPU/memory onlining (against a fake sysfs), the clock. (The policy: policy.test.ts.)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, crunContainers, readAll, runToEnd, runnerProcesses, startAgent, type TestAgent } from './helpers.js';

function fakeSysfs(root: string): void {
  const cpu = path.join(root, 'devices/system/cpu');
  for (const [n, on] of [[0, '1'], [1, '0'], [2, '0'], [3, '1']] as const) {
    fs.mkdirSync(path.join(cpu, `cpu${n}`), { recursive: true });
    if (n > 0) fs.writeFileSync(path.join(cpu, `cpu${n}`, 'online'), on);
  }
  const mem = path.join(root, 'devices/system/memory');
  for (const [n, on] of [[0, '1'], [1, '0'], [2, '0']] as const) {
    fs.mkdirSync(path.join(mem, `memory${n}`), { recursive: true });
    fs.writeFileSync(path.join(mem, `memory${n}`, 'online'), on);
  }
  fs.writeFileSync(path.join(mem, 'block_size_bytes'), '8000000\n');
  fs.writeFileSync(path.join(mem, 'probe'), '');
}

describe('sandbox requests', () => {
  let t: TestAgent;
  let sysfs: string;
  beforeAll(async () => {
    t = await startAgent();
    sysfs = path.join(t.dir, 'sysfs');
    fakeSysfs(sysfs);
    (t.agent.sandbox.config as { sysfsRoot: string }).sysfsRoot = sysfs;
  });
  afterAll(async () => {
    const dir = t?.dir;
    await t?.close();
    expect(crunContainers('sb-')).toEqual([]);
    if (dir) expect(runnerProcesses(dir)).toEqual([]);
    if (dir) expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(dir)).toBe(false);
  });

  it('CreateSandbox refuses kernel modules it cannot load, naming them, and changes nothing', async () => {
    const err = await t.svc.CreateSandbox({ hostname: 'mods', sandbox_id: 'sb-mods', kernel_modules: [{ name: 'e1000e', parameters: ['EEE=1'] }, { name: 'i915', parameters: [] }] }).catch((e) => e);
    expect(err.code).toBe(Code.Unimplemented);
    expect(err.message).toMatch(/e1000e, i915/);
    expect(t.agent.sandbox.running).toBe(false);
  });

  it('CreateSandbox sets hostname, DNS, storages, guest hooks; containers share its UTS and PID namespaces', async () => {
    const hooks = path.join(t.dir, 'hooks');
    const marker = path.join(t.dir, 'hook-ran');
    fs.mkdirSync(path.join(hooks, 'prestart'), { recursive: true });
    // A hook reads the container state crun writes to its stdin: exiting before that makes crun's
    // write fail with EPIPE, and crun fails the create.
    fs.writeFileSync(path.join(hooks, 'prestart', '10-mark.sh'), `#!/bin/sh\ncat >/dev/null\necho "$0 $1" >> ${marker}\n`, { mode: 0o755 });
    fs.writeFileSync(path.join(hooks, 'prestart', 'not-executable'), 'ignored', { mode: 0o644 });
    const shared = path.join(t.stateDir, 'sandbox', 'local', 'pod-vol');
    await t.svc.CreateSandbox({
      hostname: 'pod-host',
      dns: ['nameserver 10.0.0.10', 'search cluster.local'],
      storages: [{ driver: 'local', source: 'local', mount_point: shared, options: ['mode=0750'] }],
      sandbox_pidns: true,
      sandbox_id: 'sb-1',
      guest_hook_path: hooks,
    });
    expect(fs.readFileSync(path.join(t.stateDir, 'sandbox', 'resolv.conf'), 'utf8')).toBe('nameserver 10.0.0.10\nsearch cluster.local\n');
    expect(fs.statSync(shared).mode & 0o7777).toBe(0o750);
    const dup = await t.svc.CreateSandbox({ hostname: 'x' }).catch((e) => e);
    expect(dup.code).toBe(Code.AlreadyExists);

    // The first container holds the sandbox's PID namespace; a second one joins it.
    await t.svc.CreateContainer({ container_id: 'sb-pause', OCI: containerSpec(t.rootfs, ['sleep', '1000']) });
    await t.svc.StartContainer({ container_id: 'sb-pause' });
    await t.svc.CreateContainer({
      container_id: 'sb-app',
      sandbox_pidns: true,
      OCI: containerSpec(t.rootfs, ['sh', '-c', 'hostname; cat /proc/1/cmdline | tr "\\0" " "; echo']),
    });
    await t.svc.StartContainer({ container_id: 'sb-app' });
    expect((await readAll(t, 'sb-app')).toString()).toBe('pod-host\nsleep 1000 \n');
    expect((await t.svc.WaitProcess({ container_id: 'sb-app', exec_id: '' })).status).toBe(0);
    // Hooks ran once per container with their kind as an argument; the non-executable file did not.
    expect(fs.readFileSync(marker, 'utf8').trim().split('\n')).toEqual([
      `${path.join(hooks, 'prestart', '10-mark.sh')} prestart`,
      `${path.join(hooks, 'prestart', '10-mark.sh')} prestart`,
    ]);
    await t.svc.RemoveContainer({ container_id: 'sb-app' });
  });

  it("a container without a UTS namespace (a host-network pod's) runs with the guest's hostname, its spec's hostname not applied", async () => {
    // Failed before: crun refused "hostname requires the UTS namespace".
    const OCI = containerSpec(t.rootfs, ['hostname']);
    OCI.Linux!.Namespaces = OCI.Linux!.Namespaces!.filter((n) => n.Type !== 'uts');
    OCI.Hostname = 'node-1';
    await t.svc.CreateContainer({ container_id: 'sb-hostnet', OCI });
    await t.svc.StartContainer({ container_id: 'sb-hostnet' });
    expect((await readAll(t, 'sb-hostnet')).toString()).toBe(`${os.hostname()}\n`);
    expect((await t.svc.WaitProcess({ container_id: 'sb-hostnet', exec_id: '' })).status).toBe(0);
    await t.svc.RemoveContainer({ container_id: 'sb-hostnet' });
  });

  it('DestroySandbox removes every container and the sandbox storages, and a new sandbox can follow', async () => {
    const pending = t.svc.GetOOMEvent({});
    await t.svc.DestroySandbox({});
    expect((await pending.catch((e) => e)).code).toBe(Code.Unavailable);
    expect(t.agent.sandbox.containers.size).toBe(0);
    expect(crunContainers('sb-')).toEqual([]);
    expect(fs.existsSync(path.join(t.stateDir, 'sandbox'))).toBe(false);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(t.stateDir)).toBe(false);
    await t.svc.CreateSandbox({ hostname: 'second', sandbox_id: 'sb-2' });
    const r = await runToEnd(t, 'sb-after', ['hostname']);
    expect(r.stdout).toBe('second\n');
    await t.svc.DestroySandbox({});
  });

  it('CopyFile writes chunked files, directories and symlinks with modes and owners under the allowed root', async () => {
    const base = path.join(t.stateDir, 'shared', 'containers', 'c1');
    const file = path.join(base, 'etc', 'hosts');
    const content = Buffer.from('127.0.0.1 localhost\n'.repeat(300));
    const half = 2000;
    const common = { file_size: content.length, file_mode: 0o100640, dir_mode: 0o750, uid: 1000, gid: 1001 };
    await t.svc.CopyFile({ path: file, ...common, offset: 0, data: content.subarray(0, half) });
    expect(fs.existsSync(file)).toBe(false); // not complete yet
    await t.svc.CopyFile({ path: file, ...common, offset: half, data: content.subarray(half) });
    expect(fs.readFileSync(file)).toEqual(content);
    const st = fs.statSync(file);
    expect(st.mode & 0o7777).toBe(0o640);
    expect([st.uid, st.gid]).toEqual([1000, 1001]);
    expect(fs.statSync(path.dirname(file)).mode & 0o7777).toBe(0o750);
    expect(fs.existsSync(`${file}.tmp`)).toBe(false);

    const dir = path.join(base, 'secret');
    await t.svc.CopyFile({ path: dir, file_mode: 0o040711, dir_mode: 0o755, uid: 5, gid: 6 });
    expect(fs.statSync(dir).isDirectory()).toBe(true);
    expect(fs.statSync(dir).mode & 0o7777).toBe(0o711);
    const link = path.join(base, 'secret', '..data');
    await t.svc.CopyFile({ path: link, file_mode: 0o120777, uid: 0, gid: 0, data: Buffer.from('..2024_01_01') });
    expect(fs.readlinkSync(link)).toBe('..2024_01_01');
    await t.svc.CopyFile({ path: link, file_mode: 0o120777, uid: 0, gid: 0, data: Buffer.from('..2024_02_02') });
    expect(fs.readlinkSync(link)).toBe('..2024_02_02');
  });

  it('CopyFile refuses paths outside the allowed root, relative ones, escapes and symlinked ways out', async () => {
    const outside = await t.svc.CopyFile({ path: '/etc/katats-should-not-exist', file_size: 1, file_mode: 0o100644, data: Buffer.from('x') }).catch((e) => e);
    expect(outside.code).toBe(Code.PermissionDenied);
    expect(outside.message).toContain('/etc/katats-should-not-exist');
    expect(fs.existsSync('/etc/katats-should-not-exist')).toBe(false);
    const rel = await t.svc.CopyFile({ path: 'shared/x', file_size: 1, file_mode: 0o100644, data: Buffer.from('x') }).catch((e) => e);
    expect(rel.code).toBe(Code.InvalidArgument);
    const esc = await t.svc.CopyFile({ path: `${t.stateDir}/../escape`, file_size: 1, file_mode: 0o100644, data: Buffer.from('x') }).catch((e) => e);
    expect(esc.code).toBe(Code.InvalidArgument);
    const outDir = path.join(t.dir, 'outside');
    fs.mkdirSync(outDir);
    const copyRoot = t.agent.sandbox.config.copyRoot;
    fs.mkdirSync(copyRoot, { recursive: true });
    fs.symlinkSync(outDir, path.join(copyRoot, 'sneaky'));
    const viaLink = await t.svc.CopyFile({ path: path.join(copyRoot, 'sneaky', 'f'), file_size: 1, file_mode: 0o100644, data: Buffer.from('x') }).catch((e) => e);
    expect(viaLink.code).toBe(Code.PermissionDenied);
    expect(fs.readdirSync(outDir)).toEqual([]);
    // The agent is still serving.
    expect((await t.health.Check({})).status).toBe(1);
  });

  it('GetMetrics answers Prometheus text about the agent process', async () => {
    const m = (await t.svc.GetMetrics({})).metrics;
    expect(m).toMatch(/^# HELP kata_agent_scrape_count /m);
    expect(m).toMatch(/^# TYPE kata_agent_total_rss gauge$/m);
    const rss = Number(/^kata_agent_total_rss (\d+)$/m.exec(m)?.[1]);
    expect(rss).toBeGreaterThan(10 << 20);
    expect(m).toMatch(/^process_cpu_seconds_total [\d.]+$/m);
    expect(m).toMatch(/^process_open_fds \d+$/m);
    // The kernel's memory counters (the host's here, in local mode; the guest's in a VM), in bytes.
    const total = Number(/^kata_guest_meminfo\{item="mem_total"\} (\d+)$/m.exec(m)?.[1]);
    const avail = Number(/^kata_guest_meminfo\{item="mem_available"\} (\d+)$/m.exec(m)?.[1]);
    expect(total).toBe(Number(/^MemTotal:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1]) * 1024);
    expect(avail).toBeGreaterThan(0);
    expect(avail).toBeLessThan(total);
    for (const line of m.trim().split('\n')) expect(line).toMatch(/^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? -?[\d.e+]+)$/);
  });

  it('GetGuestDetails reports memory block size, hotplug probe and agent details', async () => {
    const d = await t.svc.GetGuestDetails({ mem_block_size: true, mem_hotplug_probe: true });
    expect(d.mem_block_size_bytes).toBe(0x8000000);
    expect(d.support_mem_hotplug_probe).toBe(true);
    expect(d.agent_details!.storage_handlers).toEqual(expect.arrayContaining(['local', 'ephemeral', 'virtio-fs', '9p', 'blk']));
    expect(d.agent_details!.init_daemon).toBe(false);
  });

  it('OnlineCPUMem onlines the requested CPUs and all memory blocks, and says when it cannot', async () => {
    await t.svc.OnlineCPUMem({ nb_cpus: 2, cpu_only: false });
    const on = (p: string) => fs.readFileSync(path.join(sysfs, p, 'online'), 'utf8');
    expect([on('devices/system/cpu/cpu1'), on('devices/system/cpu/cpu2')]).toEqual(['1', '1']);
    expect([on('devices/system/memory/memory1'), on('devices/system/memory/memory2')]).toEqual(['1', '1']);
    const err = await t.svc.OnlineCPUMem({ nb_cpus: 1, cpu_only: true }).catch((e) => e);
    expect(err.code).toBe(Code.FailedPrecondition);
  });

  it('SetGuestDateTime validates its input (the clock is left alone in local mode)', async () => {
    const now = Date.now();
    await t.svc.SetGuestDateTime({ Sec: Math.floor(now / 1000), Usec: (now % 1000) * 1000 });
    const bad = await t.svc.SetGuestDateTime({ Sec: 1, Usec: 2_000_000 }).catch((e) => e);
    expect(bad.code).toBe(Code.InvalidArgument);
  });
});

describe('after DestroySandbox', () => {
  it("the agent's next requests are no longer logged under the destroyed sandbox's id (a template's warm-up, then its clone)", async () => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => { lines.push(JSON.parse(l) as Record<string, unknown>); } });
    const t = await startAgent({ log });
    try {
      await t.svc.CreateSandbox({ hostname: 'warm', sandbox_id: 'sb-warm-up' });
      await t.svc.DestroySandbox({});
      const now = Date.now();
      await t.svc.SetGuestDateTime({ Sec: Math.floor(now / 1000), Usec: 0 });
      expect(lines.find((l) => l.msg === 'sandbox destroyed')?.sandbox_id).toBe('sb-warm-up');
      const clock = lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith('guest clock'));
      expect(clock).toBeDefined();
      expect(clock?.sandbox_id).toBeUndefined();
      await t.svc.CreateSandbox({ hostname: 'pod', sandbox_id: 'sb-pod' });
      expect(lines.find((l) => l.msg === 'creating sandbox' && l.hostname === 'pod')?.sandbox_id).toBe('sb-pod');
      await t.svc.DestroySandbox({});
    } finally {
      await t.close();
    }
  });
});
