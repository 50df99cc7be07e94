// The shim's host mounts under the shared dir (rootfs overlays, bind sources): nosuid and nodev,
// submounts of a recursive bind included, so a setuid binary or a device node planted through them
// cannot act as one on the host; `rbind` binds recursively; host paths are classified by whole
// segments (/devdata is not /dev).
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bindMount, isHostSystemPath, mount } from '../../shim/mounts.js';
import { mountInfo, unmountAll } from '../../sys/mount.js';
import { tempDir } from '../support/tmp.js';

const flagsOf = (mp: string) => mountInfo().filter((m) => m.mountPoint === mp).at(-1)?.options ?? [];
/** Runs `file -u` (id's own flag) as nobody: prints the effective uid it ran with. */
const euidAsNobody = (file: string) => spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', file, '-u'], { encoding: 'utf8' }).stdout.trim();

describe('shim host mounts', () => {
  const t = tempDir('kt-hm-');
  let src: string;
  beforeAll(async () => {
    src = path.join(t.dir, 'src');
    fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(src, 'top'), 'top');
    // A submount with the kernel's defaults (suid, dev allowed), as under a kubelet volume.
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', path.join(src, 'sub')]);
    fs.writeFileSync(path.join(src, 'sub', 'inner'), 'inner');
  });
  afterAll(async () => {
    await unmountAll(t.dir);
    t.cleanup();
  });

  it('a recursive bind takes its submounts along, and every mount of it is nosuid,nodev', async () => {
    const tgt = path.join(t.dir, 'shared', 'rbind');
    await bindMount(src, tgt, { recursive: true });
    expect(fs.readFileSync(path.join(tgt, 'sub', 'inner'), 'utf8')).toBe('inner');
    for (const mp of [tgt, path.join(tgt, 'sub')]) expect(flagsOf(mp), mp).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
  });

  it('a plain bind does not', async () => {
    const tgt = path.join(t.dir, 'shared', 'bind');
    await bindMount(src, tgt);
    expect(fs.readFileSync(path.join(tgt, 'top'), 'utf8')).toBe('top');
    expect(fs.existsSync(path.join(tgt, 'sub', 'inner'))).toBe(false);
    expect(flagsOf(tgt)).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    const ro = path.join(t.dir, 'shared', 'ro');
    await bindMount(src, ro, { readonly: true });
    expect(flagsOf(ro)).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    const file = path.join(t.dir, 'shared', 'file');
    await bindMount(path.join(src, 'top'), file);
    expect(flagsOf(file)).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
  });

  it('a setuid-root binary and a device node planted through a shared mount do not act as such', async () => {
    const tgt = path.join(t.dir, 'shared', 'plant');
    await bindMount(src, tgt, { recursive: true });
    for (const dir of ['', 'sub']) {
      const suid = path.join(tgt, dir, 'suid-id');
      fs.copyFileSync('/usr/bin/id', suid);
      fs.chownSync(suid, 0, 0);
      fs.chmodSync(suid, 0o4755);
      // The same file through the source path (no nosuid there): the attack works...
      expect(euidAsNobody(path.join(src, dir, 'suid-id'))).toBe('0');
      // ...and through the shim's mount it does not.
      expect(euidAsNobody(suid)).toBe('65534');
      const node = path.join(tgt, dir, 'null');
      execFileSync('mknod', [node, 'c', '1', '3']);
      expect(() => fs.writeFileSync(node, 'x')).toThrow(/EACCES/);
    }
  });

  it('an overlay rootfs is nosuid,nodev, and options asking for suid or dev are dropped', async () => {
    const o = path.join(t.dir, 'ovl');
    for (const d of ['lower', 'upper', 'work']) fs.mkdirSync(path.join(o, d), { recursive: true });
    const tgt = path.join(t.dir, 'shared', 'rootfs');
    await mount({ type: 'overlay', source: 'overlay', options: [`lowerdir=${o}/lower`, `upperdir=${o}/upper`, `workdir=${o}/work`, 'suid', 'dev'] }, tgt);
    expect(flagsOf(tgt)).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
  });

  it('classifies host system paths by whole segments', () => {
    for (const p of ['/dev', '/dev/null', '/dev/shm/x', '/proc/1/ns', '/sys/fs/cgroup', '//dev/x', '/dev/../dev/y']) expect(isHostSystemPath(p), p).toBe(true);
    for (const p of ['/devdata', '/sysroot', '/procfiles/x', '/data/dev', '/var/lib/sys', '/development']) expect(isHostSystemPath(p), p).toBe(false);
  });
});
