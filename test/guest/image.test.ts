// The guest image builder: reproducible, measured, cached.
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import { writeCpio } from '../../guest/cpio.js';
import { stripModuleSignature } from '../../guest/initrd.js';
import { launchMeasurement, measurementFor } from '../../guest/manifest.js';
import { canonical, type ModuleIndex, planModules } from '../../guest/modules.js';
import { parseDepends } from '../../guest/packages.js';
import { sha256File } from '../../guest/packages.js';

const progress: string[] = [];

describe('guest image builder: units', () => {
  it('orders modules dependencies first, softdeps before, builtins and optional ones skipped', () => {
    const idx: ModuleIndex = {
      kernelVersion: 't',
      moduleDir: '/x',
      paths: new Map([
        ['virtio_pci', 'k/virtio_pci.ko'],
        ['virtio', 'k/virtio.ko'],
        ['virtio_ring', 'k/virtio_ring.ko'],
        ['libcrc32c', 'k/libcrc32c.ko'],
        ['crc32c_generic', 'k/crc32c_generic.ko'],
        ['crc32c_intel', 'k/crc32c-intel.ko'],
        ['erofs', 'k/erofs.ko'],
      ]),
      deps: new Map([
        ['virtio_pci', ['virtio', 'virtio_ring']],
        ['virtio', ['virtio_ring']],
        ['erofs', ['libcrc32c']],
      ]),
      softPre: new Map([['libcrc32c', ['crc32c']]]),
      aliases: new Map([['crc32c', ['crc32c_intel', 'crc32c_generic']]]),
      builtin: new Set(['unix']),
    };
    const plan = planModules(idx, ['virtio_pci', 'erofs', 'unix', 'vsock?']);
    expect(plan.order).toEqual(['k/virtio_ring.ko', 'k/virtio.ko', 'k/virtio_pci.ko', 'k/crc32c_generic.ko', 'k/libcrc32c.ko', 'k/erofs.ko']);
    expect(plan.builtin).toEqual(['unix']);
    expect(plan.absent).toEqual(['vsock']);
    expect(() => planModules(idx, ['nope'])).toThrow(/no module nope/);
    expect(canonical('kernel/drivers/md/dm-verity.ko')).toBe('dm_verity');
  });

  it('parses Depends with alternatives and version constraints', () => {
    expect(parseDepends('libc6 (>= 2.34), libsystemd0 | libelogind0, foo:any')).toEqual([['libc6'], ['libsystemd0', 'libelogind0'], ['foo']]);
  });

  it('writes a deterministic sorted newc cpio', () => {
    const a = writeCpio([{ path: 'b', type: 'file', data: Buffer.from('x') }, { path: 'a', type: 'dir' }], 1);
    const b = writeCpio([{ path: 'a', type: 'dir' }, { path: 'b', type: 'file', data: Buffer.from('x') }], 1);
    expect(a.equals(b)).toBe(true);
    expect(a.subarray(0, 6).toString()).toBe('070701');
    expect(a.includes(Buffer.from('TRAILER!!!'))).toBe(true);
  });

  it('strips an appended module signature', () => {
    const body = Buffer.from('ELFDATA');
    const sig = Buffer.alloc(10, 1);
    const info = Buffer.alloc(12);
    info[2] = 2;
    info.writeUInt32BE(sig.length, 8);
    const signed = Buffer.concat([body, sig, info, Buffer.from('~Module signature appended~\n')]);
    expect(stripModuleSignature(signed).equals(body)).toBe(true);
    expect(stripModuleSignature(body).equals(body)).toBe(true);
  });

  it('measures kernel, initrd, rootfs and command line in a fixed order', () => {
    const d = { kernel: 'a'.repeat(64), initrd: 'b'.repeat(64), rootfs: 'c'.repeat(64), cmdline: 'console=ttyS0' };
    expect(launchMeasurement(d)).toMatch(/^[0-9a-f]{64}$/);
    expect(launchMeasurement(d)).not.toBe(launchMeasurement({ ...d, cmdline: 'console=ttyS1' }));
    expect(launchMeasurement(d)).not.toBe(launchMeasurement({ ...d, kernel: d.initrd, initrd: d.kernel }));
  });
});

describe('guest image builder: Debian packages -> kernel, initrd, rootfs', () => {
  it(
    'builds a measured image, and a forced rebuild is bit-identical',
    async () => {
      // The image every VM test boots: the real agent bundle and its native helper.
      const first = await buildFullGuestImage((m) => progress.push(m));
      const m = first.manifest;
      expect(m.kernel.release).toMatch(/^6\.1\.0-\d+-amd64$/);
      expect(m.kernel.package).toMatch(/^linux-image-6\.1\.0-\d+-amd64=6\.1\./);
      expect(m.packages.map((p) => p.name)).toEqual(expect.arrayContaining(['busybox-static', 'crun', 'nodejs', 'libnode108', 'libc6']));
      expect(m.agent.path).toBe('/agent/agent.js');
      expect(m.initrd.modules).toEqual(expect.arrayContaining(['virtio_pci.ko', 'virtio_blk.ko', 'virtio_console.ko', '9pnet_virtio.ko', 'overlay.ko', 'dm-verity.ko', 'erofs.ko', 'qemu_fw_cfg.ko']));
      expect(m.initrd.modules.indexOf('virtio_ring.ko')).toBeLessThan(m.initrd.modules.indexOf('virtio.ko'));
      // big files stay out of the initrd
      expect(m.initrd.size).toBeLessThan(4 * 1024 * 1024);
      expect(await sha256File(first.kernel)).toBe(m.kernel.sha256);
      expect(await sha256File(first.initrd)).toBe(m.initrd.sha256);
      expect(await sha256File(first.rootfs)).toBe(m.rootfs.sha256);
      expect(m.measurement).toBe(measurementFor(m, m.cmdline));
      expect(JSON.parse(await readFile(first.manifestPath, 'utf8'))).toEqual(m);

      // cached: same inputs, no rebuild
      const cached = await buildFullGuestImage(() => {});
      expect(cached.cached).toBe(true);
      expect(cached.manifest.measurement).toBe(m.measurement);

      // forced rebuild from the same packages: bit-identical artifacts
      const again = await buildFullGuestImage((s) => progress.push(s), { force: true });
      expect(again.cached).toBe(false);
      expect(again.manifest.kernel.sha256).toBe(m.kernel.sha256);
      expect(again.manifest.initrd.sha256).toBe(m.initrd.sha256);
      expect(again.manifest.rootfs.sha256).toBe(m.rootfs.sha256);
      expect(again.manifest.measurement).toBe(m.measurement);
      expect(progress.some((p) => /bit-identical/.test(p))).toBe(true);
    },
    600_000,
  );
});
