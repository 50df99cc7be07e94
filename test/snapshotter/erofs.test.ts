// The tar-to-EROFS writer against the real tools: every image is checked with bookworm's
// fsck.erofs (--extract reads every file) and mounted with the host kernel's erofs, and the
// mounted tree must equal what GNU tar extracts from the same archive (names as bytes, types,
// modes, owners, mtimes in ns, sizes, contents, symlinks, devices, xattrs, hard links), with OCI
// whiteouts and opaque markers in overlayfs form. The same tar must give the same bytes however it
// is compressed, and bad archives must be refused without leaving a file behind.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTar } from '../../harness/images/tar.js';
import { buildLayerFile, type LayerFile } from '../../snapshotter/layer.js';
import { VERITY_BLOCK, verityFormat } from '../../snapshotter/verity.js';
import { runTool, runToolOk } from '../../sys/exec.js';
import { mount, umount } from '../../sys/mount.js';
import { tempDir } from '../support/tmp.js';
import { asOverlay, diffTrees, snapshotTree } from './fstree.js';

const tmp = tempDir('katats-erofs-');
const T = (...p: string[]) => path.join(tmp.dir, ...p);
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

afterAll(async () => {
  for (const m of fs.readdirSync(tmp.dir).filter((d) => d.startsWith('mnt'))) await umount(T(m)).catch(() => undefined);
  tmp.cleanup();
});

function blob(file: string): AsyncIterable<Buffer> {
  return fs.createReadStream(file, { highWaterMark: 64 * 1024 }) as AsyncIterable<Buffer>;
}

/** A source tree with every kind of thing a layer holds. */
async function makeSource(src: string): Promise<void> {
  const p = (...x: string[]) => path.join(src, ...x);
  fs.mkdirSync(p('dir/sub'), { recursive: true });
  for (const [name, size] of [['empty', 0], ['one', 1], ['b4095', 4095], ['b4096', 4096], ['b4097', 4097], ['b8192', 8192], ['b100000', 100_000], ['big', 3 * 1024 * 1024 + 5]] as const) {
    fs.writeFileSync(p('dir', name), randomBytes(size));
  }
  fs.writeFileSync(p('dir/sub/hello'), 'hello\n');
  // Hard links (three names), symlinks (relative, absolute, dangling, long target).
  fs.linkSync(p('dir/sub/hello'), p('dir/hl1'));
  fs.linkSync(p('dir/sub/hello'), p('hl2'));
  fs.symlinkSync('sub/hello', p('dir/rel'));
  fs.symlinkSync('/etc/passwd', p('abs'));
  fs.symlinkSync('nowhere/at/all', p('dangling'));
  fs.symlinkSync('x/'.repeat(150) + 'end', p('longtarget'));
  // Devices and a fifo; a socket, which tar skips.
  sh('mknod', [p('null'), 'c', '1', '3']);
  sh('mknod', [p('loopdev'), 'b', '7', '0']);
  sh('mknod', [p('bigminor'), 'c', '259', '70000']);
  sh('mkfifo', [p('fifo')]);
  // Modes and owners (70000 needs an extended inode).
  fs.writeFileSync(p('setuid'), '#!/bin/sh\n');
  fs.chmodSync(p('setuid'), 0o4755);
  fs.mkdirSync(p('sticky'));
  fs.chmodSync(p('sticky'), 0o1777);
  fs.mkdirSync(p('private'));
  fs.chmodSync(p('private'), 0o700);
  fs.writeFileSync(p('owned'), 'x');
  fs.chownSync(p('owned'), 1000, 1000);
  fs.writeFileSync(p('bigowner'), 'y');
  fs.chownSync(p('bigowner'), 70000, 80000);
  // Names: bytes that are not UTF-8, UTF-8, spaces, names sorting around "." and "..".
  fs.writeFileSync(Buffer.concat([Buffer.from(src + '/'), Buffer.from([0xff, 0x41, 0x0a])]), 'latin');
  for (const n of ['sp ace', 'ünïcödé', '!bang', '-dash', '.hidden', 'a.b', '..dots', 'Z']) fs.writeFileSync(p('dir', n), n);
  // A long component, a deep path, a directory of many blocks.
  fs.writeFileSync(p('dir', 'L'.repeat(200)), 'long');
  const deep = p(...Array.from({ length: 40 }, (_, i) => `level${i}`));
  fs.mkdirSync(deep, { recursive: true });
  fs.writeFileSync(path.join(deep, 'bottom'), 'deep');
  fs.mkdirSync(p('many'));
  for (let i = 0; i < 700; i++) fs.writeFileSync(p('many', `entry-${String(i).padStart(4, '0')}-${'n'.repeat(i % 37)}`), String(i));
  // xattrs: user (text and binary), trusted (an authored opaque dir), security.capability.
  sh('setfattr', ['-n', 'user.text', '-v', 'some value', p('dir/sub/hello')]);
  sh('setfattr', ['-n', 'user.bin', '-v', '0x00ff10203040', p('dir/sub/hello')]);
  sh('setfattr', ['-n', 'user.on-dir', '-v', 'd', p('dir')]);
  fs.mkdirSync(p('authored-opaque'));
  sh('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', p('authored-opaque')]);
  sh('setfattr', ['-n', 'security.capability', '-v', '0x0100000200200000000000000000000000000000', p('setuid')]);
  sh('setfattr', ['-n', 'user.big', '-v', '0x' + 'ab'.repeat(3000), p('dir/b4097')]); // tail cannot go inline with this
  // OCI whiteouts: a deleted file and an opaque directory.
  fs.mkdirSync(p('wh/opq'), { recursive: true });
  fs.writeFileSync(p('wh/.wh.gone'), '');
  fs.chownSync(p('wh/.wh.gone'), 12, 34);
  fs.writeFileSync(p('wh/opq/.wh..wh..opq'), '');
  fs.writeFileSync(p('wh/opq/kept'), 'kept');
  // mtimes: nanoseconds, one before the epoch; set last, deepest first.
  sh('touch', ['-h', '-d', '@-100', p('dir/one')]);
  sh('touch', ['-h', '-d', '@1234567890.123456789', p('dir/rel')]);
  const all = sh('find', [src, '-depth', '-print0']).toString('latin1').split('\0').filter(Boolean);
  for (const [i, f] of all.entries()) {
    if (f.endsWith('/dir/one') || f.endsWith('/dir/rel')) continue;
    const sec = 1_600_000_000 + (i % 5) * 1000;
    const bytes = Buffer.from(f, 'latin1');
    // touch takes ns but only names that survive as UTF-8 arguments; lutimes takes any name.
    if (Buffer.from(bytes.toString('utf8')).equals(bytes)) sh('touch', ['-h', '-d', `@${sec}.${String(i * 7919).padStart(9, '0').slice(0, 9)}`, bytes.toString('utf8')]);
    else fs.lutimesSync(bytes, sec, sec);
  }
}

async function tarOf(src: string, out: string, format: 'posix' | 'gnu'): Promise<void> {
  // A socket in the tree while tar runs: tar skips it, and so must the image.
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(path.join(src, 'sock'), r));
  try {
    // GNU format holds no xattrs (and whole-second mtimes): the extraction it is compared with has none either.
    const xattrs = format === 'posix' ? ['--xattrs', '--xattrs-include=*'] : [];
    const r = await runTool('tar', [...xattrs, '--numeric-owner', `--format=${format}`, '-C', src, '-cf', out, '.'], {
      timeoutMs: 120_000,
      timeoutCode: 'TEST_TAR_TIMEOUT',
    });
    if (r.code !== 0 && !/socket ignored/.test(r.stderr)) throw new Error(`tar: ${r.stderr}`);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
}

async function extract(archive: string, dir: string): Promise<void> {
  fs.mkdirSync(dir);
  await runToolOk('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', archive, '-C', dir], { timeoutMs: 120_000, timeoutCode: 'TEST_TAR_TIMEOUT' });
}

let mounts = 0;
/** Checks the image with fsck.erofs, mounts it read-only and returns the mounted tree. */
async function checkImage(layer: string, info: LayerFile): Promise<{ tree: Awaited<ReturnType<typeof snapshotTree>>; fsck: string }> {
  // The EROFS part alone for fsck (it would not mind the tree after it, but be exact).
  const img = `${layer}.erofs`;
  fs.copyFileSync(layer, img);
  fs.truncateSync(img, info.erofsBytes);
  const fsck = await runTool('fsck.erofs', ['--extract', img], { timeoutMs: 120_000, timeoutCode: 'TEST_FSCK_TIMEOUT' });
  fs.rmSync(img);
  expect(fsck.code, `fsck.erofs: ${fsck.stderr}${fsck.stdout}`).toBe(0);
  const mnt = T(`mnt${mounts++}`);
  fs.mkdirSync(mnt);
  await mount(layer, mnt, 'erofs', ['ro']);
  try {
    return { tree: await snapshotTree(mnt), fsck: fsck.stdout + fsck.stderr };
  } finally {
    await umount(mnt);
    fs.rmdirSync(mnt);
  }
}

describe('tar to EROFS', () => {
  const src = T('src');
  const posix = T('layer.posix.tar');
  const gnu = T('layer.gnu.tar');
  let posixLayer: LayerFile;

  beforeAll(async () => {
    fs.mkdirSync(src);
    await makeSource(src);
    await tarOf(src, posix, 'posix');
    await tarOf(src, gnu, 'gnu');
  });

  for (const format of ['posix', 'gnu'] as const) {
    it(`a ${format} tar: fsck.erofs passes and the mounted tree is the tar's`, async () => {
      const archive = format === 'posix' ? posix : gnu;
      const out = T(`${format}.layer`);
      const info = await buildLayerFile(blob(archive), out);
      if (format === 'posix') posixLayer = info;
      expect(info.compression).toBe('none');
      expect(info.erofsBytes % VERITY_BLOCK).toBe(0);
      expect(fs.statSync(out).size).toBe(info.fileBytes);
      const ref = T(`ref-${format}`);
      await extract(archive, ref);
      const want = asOverlay(await snapshotTree(ref));
      expect(want.has('sock')).toBe(false);
      const { tree } = await checkImage(out, info);
      expect(diffTrees(want, tree)).toEqual([]);
      // Things the comparison must have seen.
      expect(tree.get('wh/gone')).toMatchObject({ type: 'char', rdev: [0, 0], perm: 0, uid: 12, gid: 34 });
      expect(tree.get('wh/opq')?.xattrs['trusted.overlay.opaque']).toBe('79');
      expect(tree.has('wh/opq/kept')).toBe(true);
      expect(tree.get('bigminor')?.rdev).toEqual([259, 70000]);
      if (format === 'posix') {
        expect(tree.get('dir/one')?.mtimeNs).toBe(-100_000_000_000n);
        expect(tree.get('dir/rel')?.mtimeNs).toBe(1_234_567_890_123_456_789n);
        expect(tree.get('setuid')?.xattrs['security.capability']).toBe('0100000200200000000000000000000000000000');
      }
    });
  }

  it('the tree after the image is veritysetup-verifiable with the root hash', async () => {
    const out = T('posix.layer');
    const dataBlocks = posixLayer.erofsBytes / VERITY_BLOCK;
    await runToolOk(
      'veritysetup',
      ['verify', '--no-superblock', '--hash-offset', String(posixLayer.erofsBytes), '--data-blocks', String(dataBlocks), '--salt', '00'.repeat(32), out, out, posixLayer.rootHash],
      { timeoutMs: 60_000, timeoutCode: 'TEST_VERITYSETUP_TIMEOUT' },
    );
    const again = await verityFormat(out, { dataBytes: posixLayer.erofsBytes });
    expect(again.rootHash).toBe(posixLayer.rootHash);
  });

  it('the same tar gives the same bytes: twice, gzip-compressed, zstd-compressed', async () => {
    const a = fs.readFileSync(T('posix.layer'));
    const again = await buildLayerFile(blob(posix), T('again.layer'));
    expect(fs.readFileSync(T('again.layer')).equals(a)).toBe(true);
    fs.writeFileSync(T('layer.tar.gz'), gzipSync(fs.readFileSync(posix)));
    const gz = await buildLayerFile(blob(T('layer.tar.gz')), T('gz.layer'), { expectDiffId: again.diffId });
    expect(gz.compression).toBe('gzip');
    expect(gz.rootHash).toBe(again.rootHash);
    expect(fs.readFileSync(T('gz.layer')).equals(a)).toBe(true);
    await runToolOk('zstd', ['-q', '-f', posix, '-o', T('layer.tar.zst')], { timeoutMs: 60_000, timeoutCode: 'TEST_ZSTD_TIMEOUT' });
    const zst = await buildLayerFile(blob(T('layer.tar.zst')), T('zst.layer'));
    expect(zst.compression).toBe('zstd');
    expect(zst.rootHash).toBe(again.rootHash);
    expect(zst.digest).not.toBe(zst.diffId);
    expect(zst.diffId).toBe(again.diffId);
  });
});

describe('layer tars the writer refuses, leaving nothing behind', () => {
  async function refused(name: string, data: Buffer, why: RegExp): Promise<void> {
    const file = T(`${name}.in`);
    fs.writeFileSync(file, data);
    const out = T(`${name}.layer`);
    await expect(buildLayerFile(blob(file), out)).rejects.toThrow(why);
    expect(fs.readdirSync(tmp.dir).filter((f) => f.includes(`${name}.layer`))).toEqual([]);
  }

  it('sparse files (GNU and PAX)', async () => {
    const dir = T('sparse-src');
    fs.mkdirSync(dir);
    const fd = fs.openSync(path.join(dir, 'holes'), 'w');
    fs.writeSync(fd, 'start');
    fs.writeSync(fd, 'end', 50 * 1024 * 1024);
    fs.closeSync(fd);
    for (const format of ['gnu', 'posix']) {
      const t = T(`sparse-${format}.tar`);
      await runToolOk('tar', ['--sparse', `--format=${format}`, '-C', dir, '-cf', t, 'holes'], { timeoutMs: 60_000, timeoutCode: 'TEST_TAR_TIMEOUT' });
      await refused(`sparse-${format}`, fs.readFileSync(t), /sparse/);
    }
  });

  it('a corrupt header, a truncated archive, a corrupt gzip stream', async () => {
    const good = writeTar([{ type: 'file', path: 'a', data: randomBytes(5000) }]);
    const bad = Buffer.from(good);
    bad[10] = bad[10]! ^ 0x55;
    await refused('badsum', bad, /checksum/);
    await refused('truncated', good.subarray(0, 512 + 1000), /truncated/);
    const gz = gzipSync(good);
    gz[gz.length - 20] = gz[gz.length - 20]! ^ 0xff;
    await refused('badgzip', gz, /gzip|truncated/);
  });

  it('paths beneath a symlink, hard links to nothing, xattrs EROFS cannot name, digests that differ', async () => {
    await refused(
      'undersymlink',
      writeTar([{ type: 'symlink', path: 'etc', target: '/tmp' }, { type: 'file', path: 'etc/passwd', data: Buffer.from('x') }], { sorted: false }),
      /beneath "etc", which is a symlink/,
    );
    await refused('danglinglink', writeTar([{ type: 'hardlink', path: 'a', target: 'nothere' }], { sorted: false }), /hard link "a" names "nothere"/);
    await refused('badxattr', writeTar([{ type: 'file', path: 'f', data: Buffer.alloc(1), xattrs: { 'system.nfs4_acl': 'x' } }]), /cannot store/);
    const t = T('digest.in');
    fs.writeFileSync(t, writeTar([{ type: 'file', path: 'f', data: Buffer.alloc(1) }]));
    await expect(buildLayerFile(blob(t), T('digest.layer'), { expectDiffId: 'sha256:' + '0'.repeat(64) })).rejects.toThrow(/expected sha256:0+/);
    expect(fs.existsSync(T('digest.layer'))).toBe(false);
  });
});

describe('tar semantics the writer follows (containerd applying onto an overlay upper)', () => {
  it('later entries replace earlier ones, directories merge, hard links follow, parents appear', async () => {
    const tarBytes = writeTar(
      [
        { type: 'file', path: 'x/a', data: Buffer.from('first'), mtime: 5 },
        { type: 'file', path: 'x/a', data: Buffer.from('second'), mtime: 5 },
        { type: 'dir', path: 'd', mode: 0o700, mtime: 5, xattrs: { 'user.k': 'v' } },
        { type: 'file', path: 'd/in', data: Buffer.from('in'), mtime: 5 },
        { type: 'dir', path: 'd', mode: 0o750, mtime: 6 },
        { type: 'hardlink', path: 'x/b', target: './x/a', mtime: 5 },
        { type: 'file', path: 'implicit/parent/f', data: Buffer.from('f'), mtime: 5 },
        { type: 'file', path: '../escape', data: Buffer.from('root'), mtime: 5 },
        { type: 'file', path: 'gone', data: Buffer.from('g'), mtime: 5 },
        { type: 'file', path: '.wh.gone', data: Buffer.alloc(0), mtime: 7 },
        { type: 'file', path: '.wh..wh.plnk', data: Buffer.alloc(0), mtime: 7 },
      ],
      { sorted: false },
    );
    const file = T('semantics.tar');
    fs.writeFileSync(file, tarBytes);
    const info = await buildLayerFile(blob(file), T('semantics.layer'));
    const { tree } = await checkImage(T('semantics.layer'), info);
    expect(tree.get('x/a')?.sha256).toBe(tree.get('x/b')?.sha256);
    expect(tree.get('x/a')?.ino).toBe(tree.get('x/b')?.ino);
    expect(tree.get('d')).toMatchObject({ type: 'dir', perm: 0o750, mtimeNs: 6_000_000_000n, xattrs: { 'user.k': '76' } });
    expect(tree.has('d/in')).toBe(true);
    expect(tree.get('implicit/parent')).toMatchObject({ type: 'dir', perm: 0o755, uid: 0, mtimeNs: 0n });
    expect(tree.get('escape')?.type).toBe('file');
    expect(tree.get('gone')).toMatchObject({ type: 'char', rdev: [0, 0] });
    expect([...tree.keys()].some((k) => k.includes('.wh.'))).toBe(false);
  });
});
