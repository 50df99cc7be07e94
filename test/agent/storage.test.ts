// Storages and devices of CreateContainer: local dirs, tmpfs, shared dirs, block devices by
// /dev name and by PCI path (a fake sysfs pointing at a real loop device), device nodes.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, crunContainers, readAll, runnerProcesses, startAgent, type SpecOpts, type TestAgent } from './helpers.js';
import { blockDeviceByPciPath, parsePciPath, pciDeviceDir } from '../../agent/devices.js';
import { isMounted } from '../../sys/mount.js';

describe('storages and devices', () => {
  let t: TestAgent;
  let loop = '';
  let sysfs = '';
  beforeAll(async () => {
    t = await startAgent();
    const img = path.join(t.dir, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 16 << 20);
    execFileSync('mkfs.ext4', ['-q', '-F', img]);
    loop = execFileSync('losetup', ['-f', '--show', img]).toString().trim();
    // A fake sysfs: root bus -> bridge at slot 02 -> bus 01 -> disk at slot 03 -> virtio -> block/<loop>.
    sysfs = path.join(t.dir, 'sysfs');
    const bridge = path.join(sysfs, 'devices/pci0000:00/0000:00:02.0');
    fs.mkdirSync(path.join(bridge, 'pci_bus/0000:01'), { recursive: true });
    fs.mkdirSync(path.join(bridge, '0000:01:03.0/virtio4/block', path.basename(loop)), { recursive: true });
    (t.agent.sandbox.config as { sysfsRoot: string }).sysfsRoot = sysfs;
  });
  afterAll(async () => {
    const dir = t?.dir;
    await t?.close();
    if (loop) execFileSync('losetup', ['-d', loop]);
    expect(crunContainers('st-')).toEqual([]);
    if (dir) expect(runnerProcesses(dir)).toEqual([]);
    if (dir) expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(dir)).toBe(false);
  });

  const run = async (cid: string, script: string, extra: Record<string, unknown>, mounts: { destination: string; source: string }[] = [], devices: SpecOpts['devices'] = undefined) => {
    await t.svc.CreateContainer({
      container_id: cid,
      ...extra,
      OCI: containerSpec(t.rootfs, ['sh', '-c', script], {
        mounts: mounts.map((m) => ({ ...m, type: 'bind', options: ['rbind', 'rw'] })),
        devices,
      }),
    });
    await t.svc.StartContainer({ container_id: cid });
    const out = (await readAll(t, cid)).toString();
    const err = (await readAll(t, cid, '', 'ReadStderr')).toString();
    const { status } = await t.svc.WaitProcess({ container_id: cid, exec_id: '' });
    return { out, err, status };
  };

  it('mounts local, ephemeral and shared-directory storages for the container and removes them with it', async () => {
    const local = path.join(t.stateDir, 'sandbox', 'local', 'vol1');
    const eph = path.join(t.stateDir, 'sandbox', 'ephemeral', 'cache');
    const hostShare = path.join(t.dir, 'host-share');
    fs.mkdirSync(hostShare);
    fs.writeFileSync(path.join(hostShare, 'from-host'), 'shared bytes\n');
    const share = path.join(t.stateDir, 'shared', 'containers', 'st-vol');
    const r = await run(
      'st-vol',
      'echo l > /local/f && echo e > /eph/f && cat /share/from-host && grep " /eph " /proc/mounts | cut -d" " -f3',
      {
        storages: [
          { driver: 'local', source: 'local', mount_point: local, options: ['mode=0777'] },
          { driver: 'ephemeral', source: 'tmpfs', fstype: 'tmpfs', mount_point: eph, options: ['size=1m'] },
          { driver: 'virtio-fs', source: hostShare, fstype: 'bind', mount_point: share, options: ['ro'] },
        ],
      },
      [
        { destination: '/local', source: local },
        { destination: '/eph', source: eph },
        { destination: '/share', source: share },
      ],
    );
    expect(r).toEqual({ out: 'shared bytes\ntmpfs\n', err: '', status: 0 });
    expect(fs.readFileSync(path.join(local, 'f'), 'utf8')).toBe('l\n');
    expect(fs.readFileSync(path.join(eph, 'f'), 'utf8')).toBe('e\n');
    expect(isMounted(eph)).toBe(true);
    expect(isMounted(share)).toBe(true);
    await t.svc.RemoveContainer({ container_id: 'st-vol' });
    expect(isMounted(eph)).toBe(false);
    expect(isMounted(share)).toBe(false);
    expect(fs.existsSync(share)).toBe(false);
    expect(fs.readFileSync(path.join(hostShare, 'from-host'), 'utf8')).toBe('shared bytes\n');
  });

  it('shares one mount between containers naming the same mount point until the last goes', async () => {
    const eph = path.join(t.stateDir, 'sandbox', 'ephemeral', 'shm2');
    const st = { driver: 'ephemeral', source: 'tmpfs', fstype: 'tmpfs', mount_point: eph, options: [] };
    await t.svc.CreateContainer({ container_id: 'st-a', storages: [st], OCI: containerSpec(t.rootfs, ['true']) });
    await t.svc.CreateContainer({ container_id: 'st-b', storages: [st], OCI: containerSpec(t.rootfs, ['true']) });
    await t.svc.RemoveContainer({ container_id: 'st-a' });
    expect(isMounted(eph)).toBe(true);
    await t.svc.RemoveContainer({ container_id: 'st-b' });
    expect(isMounted(eph)).toBe(false);
  });

  it('mounts a blk storage by device name and by PCI path (ext4 on a loop device)', async () => {
    for (const [cid, source] of [['st-blkdev', loop], ['st-blkpci', '02/03']] as const) {
      const mp = path.join(t.stateDir, 'sandbox', 'storage', cid);
      const r = await run(
        cid,
        `echo ${cid} > /disk/${cid}; ls /disk | grep -v lost; grep " /disk " /proc/mounts | cut -d" " -f3`,
        { storages: [{ driver: 'blk', source, fstype: 'ext4', mount_point: mp, options: [] }] },
        [{ destination: '/disk', source: mp }],
      );
      expect(r.status).toBe(0);
      expect(r.out).toContain(`${cid}\n`);
      expect(r.out.trim().endsWith('ext4')).toBe(true);
      await t.svc.RemoveContainer({ container_id: cid });
      expect(isMounted(mp)).toBe(false);
    }
  });

  it('resolves PCI paths through sysfs and rejects malformed ones', async () => {
    expect(parsePciPath('02/03')).toEqual([2, 3]);
    expect(() => parsePciPath('2/zz')).toThrow(/PCI path/);
    expect(() => parsePciPath('20/00')).toThrow(/slot above 1f/);
    expect(pciDeviceDir(sysfs, '02/03')).toBe(path.join(sysfs, 'devices/pci0000:00/0000:00:02.0/0000:01:03.0'));
    expect(await blockDeviceByPciPath(sysfs, '02/03', 100)).toBe(loop);
    const missing = await blockDeviceByPciPath(sysfs, '05', 100).catch((e) => e);
    expect(missing.code).toBe(Code.NotFound);
  });

  it('gives a container a guest block device at its spec path with the guest major:minor', async () => {
    const st = fs.statSync(loop);
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = st.rdev & 0xff;
    const r = await run(
      'st-dev',
      'stat -c "%t:%T" /dev/xvdb',
      { devices: [{ id: '02/03', type: 'blk', vm_path: '', container_path: '/dev/xvdb', options: [] }] },
      [],
      [{ Path: '/dev/xvdb', Type: 'b', Major: 0, Minor: 0, FileMode: 0o660, UID: 0, GID: 0 }],
    );
    expect(r.err).toBe('');
    expect(r.out.trim()).toBe(`${major.toString(16)}:${minor.toString(16)}`);
    await t.svc.RemoveContainer({ container_id: 'st-dev' });
  });

  it('refuses an unknown storage driver or device type with InvalidArgument naming it, leaving nothing mounted', async () => {
    const eph = path.join(t.stateDir, 'sandbox', 'ephemeral', 'first');
    const bad = await t.svc
      .CreateContainer({
        container_id: 'st-bad',
        storages: [
          { driver: 'ephemeral', source: 'tmpfs', fstype: 'tmpfs', mount_point: eph },
          { driver: 'nfs-magic', source: 'x', mount_point: path.join(t.stateDir, 'x') },
        ],
        OCI: containerSpec(t.rootfs, ['true']),
      })
      .catch((e) => e);
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.message).toContain('nfs-magic');
    expect(isMounted(eph)).toBe(false);
    const badDev = await t.svc
      .CreateContainer({ container_id: 'st-bad2', devices: [{ id: 'x', type: 'gpu-magic', container_path: '/dev/x' }], OCI: containerSpec(t.rootfs, ['true']) })
      .catch((e) => e);
    expect(badDev.code).toBe(Code.InvalidArgument);
    expect(badDev.message).toContain('gpu-magic');
    const relMp = await t.svc
      .CreateContainer({ container_id: 'st-bad3', storages: [{ driver: 'local', mount_point: 'relative/dir' }], OCI: containerSpec(t.rootfs, ['true']) })
      .catch((e) => e);
    expect(relMp.code).toBe(Code.InvalidArgument);
    expect(crunContainers('st-bad')).toEqual([]);
  });
});
