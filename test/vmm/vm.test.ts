// Boots the guest image under QEMU (TCG here; KVM where the probe proves it works) with the test
// fixture agent, and exercises the driver: ready, launch data, hotplug, exit, deadlines, KVM.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildGuestImage, type GuestImage } from '../../guest/build.js';
import { KvmUnavailableError, probeKvm, resolveAccel } from '../../vmm/accel.js';
import type { VmConfig } from '../../vmm/config.js';
import { DEFAULT_VMM_CACHE_DIR, QemuVm, VmError } from '../../vmm/vm.js';
import { FixtureClient, pingProbe } from '../guest/fixture-client.js';
import { tempDir } from '../support/tmp.js';

const FIXTURE_AGENT = path.resolve(__dirname, '../guest/fixtures/agent.js');
const tag = `vt${process.pid}`;
const tmp = tempDir('katats-vmm-');
const logger = pino({ level: process.env.KATATS_TEST_LOG ?? 'warn' }, pino.destination(2));
let image: GuestImage;

function config(name: string, extra: Partial<VmConfig> = {}): VmConfig {
  const runDir = path.join(tmp.dir, name);
  return {
    id: `${tag}-${name}`,
    vcpus: 1,
    memoryMiB: 512,
    kernel: image.kernel,
    initrd: image.initrd,
    rootfs: image.rootfs,
    baseCmdline: image.manifest.cmdline,
    agentSocket: path.join(runDir, 'agent.sock'),
    agentLogFile: path.join(runDir, 'agent.log'),
    accel: 'tcg',
    runDir,
    ...extra,
  };
}

function ourQemus(): string[] {
  try {
    return execFileSync('pgrep', ['-af', `katats-${tag}`], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.includes('qemu-system'));
  } catch {
    return [];
  }
}

beforeAll(async () => {
  image = await buildGuestImage({ agentBundle: FIXTURE_AGENT });
}, 600_000);

afterAll(() => {
  tmp.cleanup();
});

describe('QEMU driver with the guest image', () => {
  it(
    'boots to the agent, reports uname and launch data, hotplugs a disk, and notices QEMU dying',
    async () => {
      const hostData = randomBytes(32);
      const cfg = config('main');
      mkdirSync(cfg.runDir, { recursive: true });
      writeFileSync(path.join(cfg.runDir, 'host_data'), hostData);
      const shared = path.join(cfg.runDir, 'shared');
      mkdirSync(shared);
      writeFileSync(path.join(shared, 'hello.txt'), 'hello from the host\n');
      const bootDisk = path.join(cfg.runDir, 'boot0.img');
      writeFileSync(bootDisk, Buffer.alloc(1 << 20));
      const vm = await QemuVm.start(
        {
          ...cfg,
          launchDataFile: path.join(cfg.runDir, 'host_data'),
          // The fixture agent is PID 1 itself, without katats-runner init, which is what starts
          // node again without the startup snapshot when V8 refuses it on this CPU.
          kernelParams: ['agent.log=debug', 'katats.node_snapshot=0'],
          sharedDir: { path: shared, tag: 'kataShared', readonly: true },
          disks: [{ id: 'boot0', path: bootDisk, readonly: true, serial: 'katats-boot0' }],
        },
        { logger },
      );
      const conn: { client?: FixtureClient } = {};
      try {
        expect(vm.accel).toBe('tcg');
        expect((await vm.queryStatus()).status).toBe('running');
        const readyMs = await vm.waitReady(pingProbe(cfg.agentSocket, conn), 120_000);
        expect(readyMs).toBeGreaterThan(0);
        const c = conn.client!;

        const info = await c.request<{ uname: string; hostData: string; env: Record<string, string>; pid: number }>('info');
        expect(info.uname).toBe(image.manifest.kernel.release);
        expect(info.uname).not.toBe(os.release());
        expect(info.hostData).toBe(hostData.toString('hex'));
        expect(info.pid).toBe(1);
        expect(info.env.KATATS_LOG_LEVEL).toBe('debug');
        // the launch data is read-only in the guest
        const hd = await c.request<{ data: string }>('read /run/katats/host_data');
        expect(hd.ok).toBe(true);

        // the rootfs carries a working crun; the init loaded the filesystems the agent needs
        const exec = (argv: string[]) => c.request<{ stdout: string; stderr: string; status: number }>(`exec ${JSON.stringify(argv)}`);
        const crun = await exec(['/usr/bin/crun', '--version']);
        expect(crun.status, crun.stderr).toBe(0);
        expect(crun.stdout).toMatch(/crun version 1\./);
        const fsTypes = (await c.request<{ data: string }>('read /proc/filesystems')).data;
        for (const t of ['erofs', 'overlay', '9p', 'virtiofs', 'cgroup2']) expect(fsTypes).toContain(t);
        const mods = (await c.request<{ data: string }>('read /proc/modules')).data;
        for (const m of ['dm_verity', 'vmw_vsock_virtio_transport', 'qemu_fw_cfg', 'virtio_console']) expect(mods).toContain(m);
        // the 9p shared directory
        const mnt = await exec(['/bin/mount', '-t', '9p', '-o', 'trans=virtio,version=9p2000.L,ro', 'kataShared', '/mnt']);
        expect(mnt.status, mnt.stderr).toBe(0);
        expect((await c.request<{ data: string }>('read /mnt/hello.txt')).data).toBe('hello from the host\n');

        // a disk attached at boot is there (the rootfs was found by serial, whatever its name) and
        // can be unplugged
        const serials = async () => {
          const out: Record<string, string> = {};
          for (const b of (await c.request<{ blocks: string[] }>('blocks')).blocks) {
            out[b] = (await c.request<{ data: string }>(`read /sys/block/${b}/serial`)).data?.trim() ?? '';
          }
          return out;
        };
        expect(Object.values(await serials()).sort()).toEqual(['katats-boot0', 'katats-root']);
        await vm.unplugDisk('boot0');
        expect(Object.values(await serials())).toEqual(['katats-root']);

        // hotplug a small disk image and see it in /sys/block; unplug it again
        const disk = path.join(cfg.runDir, 'disk1.img');
        writeFileSync(disk, Buffer.alloc(1 << 20));
        const before = (await c.request<{ blocks: string[] }>('blocks')).blocks;
        expect(before).toEqual(['vda']);
        await vm.hotplugDisk({ id: 'disk1', path: disk, readonly: true, serial: 'katats-hp1' });
        let blocks: string[] = before;
        for (let i = 0; i < 100 && blocks.length === before.length; i++) {
          await new Promise((r) => setTimeout(r, 100));
          blocks = (await c.request<{ blocks: string[] }>('blocks')).blocks;
        }
        expect(blocks).toEqual(['vda', 'vdb']);
        const serial = await c.request<{ data: string }>('read /sys/block/vdb/serial');
        expect(serial.data.trim()).toBe('katats-hp1');
        await vm.unplugDisk('disk1');
        expect((await c.request<{ blocks: string[] }>('blocks')).blocks).toEqual(['vda']);

        // the agent's log went to its own port, kept per sandbox on the host
        await new Promise((r) => setTimeout(r, 200));
        const { readFileSync } = await import('node:fs');
        expect(readFileSync(cfg.agentLogFile!, 'utf8')).toMatch(/fixture-agent: ready/);
        expect(readFileSync(vm.consoleLogPath, 'utf8')).toMatch(/katats-init: exec agent/);

        // QEMU dies under us: the driver notices at once and says how
        const t0 = Date.now();
        process.kill(vm.pid!, 'SIGKILL');
        const exit = await vm.exited;
        expect(Date.now() - t0).toBeLessThan(2000);
        expect(exit.reason).toBe('crashed');
        expect(exit.signal).toBe('SIGKILL');
        expect(exit.accel).toBe('tcg');
        expect(vm.running).toBe(false);
        await expect(vm.queryStatus()).rejects.toThrow(/not running/);
        expect(existsSync(path.join(cfg.runDir, 'qmp.sock'))).toBe(false);
      } finally {
        conn.client?.close();
        await vm.kill();
      }
    },
    240_000,
  );

  it(
    'kills a boot that misses its deadline and reports the last console lines',
    async () => {
      // loglevel=7 overrides "quiet" so the kernel talks on the console before the deadline.
      const vm = await QemuVm.start(config('deadline', { kernelParams: ['loglevel=7'] }), { logger });
      const t0 = Date.now();
      const err = await vm.waitReady(() => new Promise(() => {}), 4000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmError);
      const e = err as VmError;
      expect(e.message).toMatch(/not ready within 4000 ms; QEMU killed \[vm .*, accel tcg\]/);
      expect(e.message).toMatch(/last console lines/);
      expect(e.lastConsoleLines.length).toBeGreaterThan(0);
      expect(e.exit?.reason).toBe('boot-timeout');
      expect(Date.now() - t0).toBeLessThan(9000);
      expect(vm.running).toBe(false);
    },
    120_000,
  );

  it(
    'a guest that powers off is reported as a shutdown',
    async () => {
      // The init has no agent to run: a missing agent makes it power the VM off.
      const vm = await QemuVm.start(config('poweroff', { kernelParams: ['katats.agent=/nonexistent.js'] }), { logger });
      const exit = await Promise.race([vm.exited, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no exit')), 100_000))]);
      expect(['shutdown', 'panic', 'reset']).toContain(exit.reason);
      expect(exit.lastConsoleLines.join('\n')).toMatch(/nonexistent/);
    },
    120_000,
  );

  it(
    'forced KVM on a host where the probe fails gives a clear error quickly, never a hang',
    async (ctx) => {
      const probe = await probeKvm({ cacheDir: DEFAULT_VMM_CACHE_DIR, kernel: image.kernel });
      // A host with working KVM: forcing it must work, which the boot tests cover.
      if (probe.usable) ctx.skip('KVM is usable on this host');
      const t0 = Date.now();
      const err = await QemuVm.start(config('kvm', { accel: 'kvm' }), { logger }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvmUnavailableError);
      expect((err as Error).message).toMatch(/KVM was requested .* not usable/);
      expect(Date.now() - t0).toBeLessThan(15_000);
      // auto falls back to TCG
      expect((await resolveAccel('auto', { cacheDir: DEFAULT_VMM_CACHE_DIR, kernel: image.kernel })).accel).toBe('tcg');
    },
    60_000,
  );

  it('leaves no QEMU process or socket behind', () => {
    expect(ourQemus()).toEqual([]);
    for (const name of ['main', 'deadline', 'poweroff', 'kvm']) {
      expect(existsSync(path.join(tmp.dir, name, 'qmp.sock'))).toBe(false);
      expect(existsSync(path.join(tmp.dir, name, 'agent.sock'))).toBe(false);
    }
  });
});
