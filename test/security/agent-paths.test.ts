// The host is outside the trust boundary: whatever it plants through one request (a symlink by
// CopyFile, a storage mount point) must not redirect a later request out of the agent's own
// directories. Each test plants with the real agent (local mode), aims a later request through
// the plant at something outside, and checks that the outside thing is untouched: owner, mode,
// content, and that nothing got mounted on it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, readAll, useAgent, type TestAgent } from '../agent/helpers.js';
import { isMounted } from '../../sys/mount.js';

interface Snapshot {
  uid: number;
  gid: number;
  mode: number;
  content: string | string[];
  mounted: boolean;
}

/** What an attack could change about a file or directory. */
function snap(p: string): Snapshot {
  const st = fs.lstatSync(p);
  return {
    uid: st.uid,
    gid: st.gid,
    mode: st.mode,
    content: st.isDirectory() ? fs.readdirSync(p).sort() : fs.readFileSync(p, 'utf8'),
    mounted: isMounted(p),
  };
}

/** A directory and a file outside the agent's state dir, as an attacker would aim at /etc. */
function outsideTargets(t: TestAgent, name: string): { dir: string; file: string; before: () => Record<string, Snapshot> } {
  const dir = path.join(t.dir, 'outside', name);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const file = path.join(dir, 'secret');
  fs.writeFileSync(file, 'root:secret\n', { mode: 0o600 });
  const take = () => ({ dir: snap(dir), file: snap(file) });
  return { dir, file, before: take };
}

const USER = 1234;

function copyClient(t: TestAgent) {
  return {
    symlink: (p: string, target: string) => t.svc.CopyFile({ path: p, file_mode: 0o120777, data: Buffer.from(target), uid: 0, gid: 0 }),
    mkdir: (p: string, mode: number) => t.svc.CopyFile({ path: p, file_mode: 0o040000 | mode, dir_mode: 0o755, uid: USER, gid: USER }),
    write: (p: string, content: string, o: { offset?: number; size?: number; mode?: number } = {}) => {
      const data = Buffer.from(content);
      const file_mode = 0o100000 | (o.mode ?? 0o666);
      return t.svc.CopyFile({ path: p, file_mode, dir_mode: 0o755, uid: USER, gid: USER, offset: o.offset ?? 0, file_size: o.size ?? data.length, data });
    },
  };
}

describe('CopyFile resolves every component beneath its root without following symlinks', () => {
  const agent = useAgent('sec-cf-');
  let t: TestAgent;
  let root: string;
  let cf: ReturnType<typeof copyClient>;
  beforeAll(() => {
    t = agent();
    root = path.join(t.stateDir, 'shared', 'containers');
    cf = copyClient(t);
  });

  it('a directory request on a planted symlink replaces the link and leaves its target (a directory or a file) alone', async () => {
    const out = outsideTargets(t, 'cf-dir');
    const before = out.before();
    await cf.symlink(path.join(root, 'c1', 'to-dir'), out.dir);
    await cf.symlink(path.join(root, 'c1', 'to-file'), out.file);
    await cf.mkdir(path.join(root, 'c1', 'to-dir'), 0o777);
    await cf.mkdir(path.join(root, 'c1', 'to-file'), 0o777);
    expect(out.before()).toEqual(before);
    for (const name of ['to-dir', 'to-file']) {
      const st = fs.lstatSync(path.join(root, 'c1', name));
      expect(st.isDirectory()).toBe(true);
      expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o777, USER, USER]);
    }
  });

  it('a file request through a planted directory symlink is refused; a planted `.tmp` link is replaced, never written through', async () => {
    const out = outsideTargets(t, 'cf-file');
    const before = out.before();
    await cf.symlink(path.join(root, 'c2', 'via'), out.dir);
    const through = await cf.write(path.join(root, 'c2', 'via', 'secret'), 'pwned\n').catch((e) => e);
    expect(through.code).toBe(Code.PermissionDenied);
    // A symlink pointing inside the root is no way through either: no component may be a symlink.
    await cf.mkdir(path.join(root, 'c2', 'real'), 0o755);
    await cf.symlink(path.join(root, 'c2', 'inward'), 'real');
    expect((await cf.write(path.join(root, 'c2', 'inward', 'f'), 'x').catch((e) => e)).code).toBe(Code.PermissionDenied);
    // The upload's temp file planted as a link to the outside file: replaced at offset 0 ...
    await cf.symlink(path.join(root, 'c2', 'hosts.tmp'), out.file);
    await cf.write(path.join(root, 'c2', 'hosts'), 'pwned\n');
    expect(fs.readFileSync(path.join(root, 'c2', 'hosts'), 'utf8')).toBe('pwned\n');
    expect(fs.lstatSync(path.join(root, 'c2', 'hosts')).isFile()).toBe(true);
    // ... and refused for a later chunk, which must not start a new file.
    await cf.symlink(path.join(root, 'c2', 'big.tmp'), out.file);
    const chunk = await cf.write(path.join(root, 'c2', 'big'), 'tail', { offset: 4, size: 8 }).catch((e) => e);
    expect(chunk.code).toBe(Code.PermissionDenied);
    expect(out.before()).toEqual(before);
  });

  it('a file request onto an existing directory replaces the directory (upstream), without following links inside it', async () => {
    const out = outsideTargets(t, 'cf-replace');
    const before = out.before();
    await cf.mkdir(path.join(root, 'c3', 'was-dir', 'sub'), 0o755);
    await cf.write(path.join(root, 'c3', 'was-dir', 'sub', 'f'), 'x');
    await cf.symlink(path.join(root, 'c3', 'was-dir', 'link'), out.dir);
    await cf.write(path.join(root, 'c3', 'was-dir'), 'now a file\n');
    expect(fs.readFileSync(path.join(root, 'c3', 'was-dir'), 'utf8')).toBe('now a file\n');
    expect(out.before()).toEqual(before);
  });

  it('requests racing a process that swaps a symlink in the path never reach outside the root', async () => {
    const out = outsideTargets(t, 'cf-race');
    const before = out.before();
    const dir = path.join(root, 'c4');
    await cf.mkdir(path.join(dir, 'inside'), 0o755);
    await cf.symlink(path.join(dir, 'race'), 'inside');
    // A container process (or the host, on a shared directory) flips `race` between a link to a
    // directory inside the root and one to the outside directory, atomically, as fast as it can.
    const flipper = spawn(process.execPath, [
      '-e',
      `const fs = require('fs'); const d = ${JSON.stringify(dir)};
       for (let i = 0; ; i++) { const n = d + '/race.' + (i & 1); try { fs.unlinkSync(n); } catch {}
         fs.symlinkSync(i & 1 ? ${JSON.stringify(out.dir)} : 'inside', n); fs.renameSync(n, d + '/race'); }`,
    ]);
    try {
      let answered = 0;
      for (let i = 0; i < 300; i++) {
        await cf.write(path.join(dir, 'race', `f${i}`), 'pwned\n').catch(() => undefined);
        answered++;
      }
      expect(answered).toBe(300);
    } finally {
      flipper.kill('SIGKILL');
      await new Promise((r) => (flipper.exitCode !== null || flipper.signalCode !== null ? r(null) : flipper.once('exit', r)));
    }
    expect(out.before()).toEqual(before);
    expect(fs.readdirSync(path.join(dir, 'inside'))).toEqual([]);
    expect((await t.health.Check({})).status).toBe(1);
  });
});

describe('storages: mount points only in the agent storage dirs, never through a planted symlink', () => {
  const agent = useAgent('sec-st-');
  let t: TestAgent;
  let root: string;
  let cf: ReturnType<typeof copyClient>;
  beforeAll(() => {
    t = agent();
    root = path.join(t.stateDir, 'shared', 'containers');
    cf = copyClient(t);
  });
  const created: string[] = [];
  afterEach(async () => {
    for (const cid of created.splice(0)) await t.svc.RemoveContainer({ container_id: cid }).catch(() => undefined);
  });

  const create = (cid: string, storages: object[], rootfs = t.rootfs) => {
    created.push(cid);
    return t.svc.CreateContainer({ container_id: cid, storages, OCI: containerSpec(rootfs, ['true']) });
  };

  it('refuses a storage mount point outside the agent storage dirs before changing anything', async () => {
    const out = outsideTargets(t, 'st-outside');
    const before = out.before();
    for (const mp of [out.dir, path.join(t.stateDir, 'sec-st-victim'), path.join(t.stateDir, 'sandbox', 'ns'), path.join(t.stateDir, 'sandbox')]) {
      const err = await create('sec-st-out', [{ driver: 'local', source: 'local', mount_point: mp, options: ['mode=0777', `fsgid=${USER}`] }]).catch((e) => e);
      expect(err.code, mp).toBe(Code.PermissionDenied);
      expect(err.message).toContain(mp);
    }
    expect(out.before()).toEqual(before);
    expect(fs.existsSync(path.join(t.stateDir, 'sec-st-victim'))).toBe(false);
  });

  it('a local storage on a planted symlink is refused; the link target keeps its owner and mode', async () => {
    const out = outsideTargets(t, 'st-local');
    const before = out.before();
    await cf.symlink(path.join(root, 'p1', 'vol'), out.dir);
    await cf.mkdir(path.join(root, 'p1', 'sub'), 0o755);
    await cf.symlink(path.join(root, 'p1', 'sub', 'deeper'), out.dir);
    for (const mp of [path.join(root, 'p1', 'vol'), path.join(root, 'p1', 'vol', 'x'), path.join(root, 'p1', 'sub', 'deeper', 'y')]) {
      const err = await create('sec-st-local', [{ driver: 'local', source: 'local', mount_point: mp, options: ['mode=0777', `fsgid=${USER}`] }]).catch((e) => e);
      expect(err.code, mp).toBe(Code.PermissionDenied);
    }
    expect(out.before()).toEqual(before);
  });

  it('an ephemeral or shared storage on a planted symlink mounts nothing on its target', async () => {
    const out = outsideTargets(t, 'st-mount');
    const before = out.before();
    const share = path.join(t.dir, 'share-mount');
    fs.mkdirSync(share, { recursive: true });
    await cf.symlink(path.join(root, 'p2', 'eph'), out.dir);
    await cf.symlink(path.join(root, 'p2', 'shared'), out.dir);
    await cf.symlink(path.join(root, 'p2', 'file'), out.file);
    const attempts = [
      { driver: 'ephemeral', source: 'tmpfs', fstype: 'tmpfs', mount_point: path.join(root, 'p2', 'eph'), options: [] },
      { driver: 'virtio-fs', source: share, fstype: 'bind', mount_point: path.join(root, 'p2', 'shared'), options: ['rbind'] },
      { driver: 'virtio-fs', source: path.join(share), fstype: 'bind', mount_point: path.join(root, 'p2', 'eph', 'below'), options: ['rbind'] },
    ];
    for (const st of attempts) {
      const err = await create('sec-st-mount', [st]).catch((e) => e);
      expect(err.code, st.mount_point).toBe(Code.PermissionDenied);
    }
    // A file bind onto a planted link to a file.
    const srcFile = path.join(t.dir, 'share-file');
    fs.writeFileSync(srcFile, 'host data\n');
    const err = await create('sec-st-mount', [{ driver: 'virtio-fs', source: srcFile, fstype: 'bind', mount_point: path.join(root, 'p2', 'file'), options: [] }]).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(out.before()).toEqual(before);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(path.join(t.dir, 'outside'));
  });

  it('a bind storage whose source goes through a planted symlink is refused', async () => {
    const out = outsideTargets(t, 'st-source');
    await cf.symlink(path.join(root, 'p3', 'src'), out.dir);
    const mp = path.join(t.stateDir, 'sandbox', 'storage', 'p3');
    for (const source of [path.join(root, 'p3', 'src'), path.join(root, 'p3', 'src', 'secret')]) {
      const err = await create('sec-st-src', [{ driver: 'virtio-fs', source, fstype: 'bind', mount_point: mp, options: ['rbind'] }]).catch((e) => e);
      expect(err.code, source).toBe(Code.PermissionDenied);
    }
    expect(isMounted(mp)).toBe(false);
  });

  it('an overlay storage takes its layers from real directories only, never through a planted symlink', async () => {
    const out = outsideTargets(t, 'st-overlay');
    const before = out.before();
    const dirs = ['layer', 'upper', 'work'].map((d) => path.join(t.dir, 'overlay', d));
    for (const d of dirs) fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(dirs[0]!, 'from-layer'), 'layer\n');
    await cf.symlink(path.join(root, 'p5', 'lower'), out.dir);
    const mp = path.join(t.stateDir, 'sandbox', 'storage', 'ovl');
    const overlay = (lowerdir: string) => ({
      driver: 'overlayfs',
      source: 'overlay',
      fstype: 'overlay',
      mount_point: mp,
      options: [`lowerdir=${lowerdir}`, `upperdir=${dirs[1]}`, `workdir=${dirs[2]}`],
    });
    const err = await create('sec-st-ovl-bad', [overlay(`${dirs[0]}:${path.join(root, 'p5', 'lower')}`)]).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(isMounted(mp)).toBe(false);
    await create('sec-st-ovl', [overlay(dirs[0]!)]);
    expect(fs.readFileSync(path.join(mp, 'from-layer'), 'utf8')).toBe('layer\n');
    expect(out.before()).toEqual(before);
  });

  it('a container rootfs whose source is a planted symlink is refused', async () => {
    await cf.symlink(path.join(root, 'p4', 'rootfs'), t.rootfs);
    const err = await create('sec-st-rootfs', [], path.join(root, 'p4', 'rootfs')).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toContain('symlink');
  });

  it('fsGroup ownership never follows a link inside the storage to the outside', async () => {
    const out = outsideTargets(t, 'st-fsgroup');
    const before = out.before();
    const share = path.join(t.dir, 'share-fsgroup');
    fs.mkdirSync(path.join(share, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(share, 'sub', 'data'), 'x');
    fs.symlinkSync(out.file, path.join(share, 'link-file'));
    fs.symlinkSync(out.dir, path.join(share, 'sub', 'link-dir'));
    const mp = path.join(t.stateDir, 'sandbox', 'storage', 'fsg');
    await create('sec-st-fsg', [{ driver: 'virtio-fs', source: share, fstype: 'bind', mount_point: mp, options: ['rbind'], fs_group: { group_id: USER } }]);
    expect(fs.statSync(path.join(share, 'sub', 'data')).gid).toBe(USER);
    expect(fs.statSync(path.join(share, 'sub')).mode & 0o2000).toBe(0o2000);
    expect(out.before()).toEqual(before);
  });

  it('guest hooks are not taken from a directory the host can write', async () => {
    const marker = path.join(t.dir, 'outside', 'hook-ran');
    await cf.write(path.join(root, 'hooks', 'prestart', 'pwn.sh'), `#!/bin/sh\ntouch ${marker}\n`, { mode: 0o755 });
    const err = await t.svc.CreateSandbox({ hostname: 'h', sandbox_id: 'sec-st-hooks', guest_hook_path: path.join(root, 'hooks') }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(t.agent.sandbox.running).toBe(false);
    expect(fs.existsSync(marker)).toBe(false);
  });
});

describe('the agent own files (bundles, DNS) never through a planted symlink, even with CopyFile allowed over the whole state dir', () => {
  const agent = useAgent('sec-own-');
  let t: TestAgent;
  let cf: ReturnType<typeof copyClient>;
  beforeAll(() => {
    t = agent();
    // An operator may widen CopyFile's root (--copy-root); the agent's own paths must hold anyway.
    (t.agent.sandbox.config as { copyRoot: string }).copyRoot = t.stateDir;
    cf = copyClient(t);
  });

  it('a bundle directory planted as a symlink gets no rootfs mount, no config.json, no directories', async () => {
    const out = outsideTargets(t, 'own-bundle');
    const out2 = outsideTargets(t, 'own-bundles');
    const before = [out.before(), out2.before()];
    // Both layouts: bundles at <state>/<id> and at <state>/containers/<id>.
    await cf.symlink(path.join(t.stateDir, 'sec-own-c'), out.dir);
    await cf.symlink(path.join(t.stateDir, 'containers'), out2.dir);
    const err = await t.svc.CreateContainer({ container_id: 'sec-own-c', OCI: containerSpec(t.rootfs, ['true']) }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect([out.before(), out2.before()]).toEqual(before);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(path.join(t.dir, 'outside'));
  });

  it('DNS goes to the sandbox dir: a planted resolv.conf link is replaced, a planted sandbox dir link refused', async () => {
    const out = outsideTargets(t, 'own-dns');
    const before = out.before();
    await cf.symlink(path.join(t.stateDir, 'sandbox'), out.dir);
    const err = await t.svc.CreateSandbox({ hostname: 'h', sandbox_id: 'sec-own-sb', dns: ['nameserver 10.9.9.9'] }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(out.before()).toEqual(before);
    // Replace the link with a directory (CopyFile does that) and plant the file link inside.
    await cf.mkdir(path.join(t.stateDir, 'sandbox'), 0o755);
    await cf.symlink(path.join(t.stateDir, 'sandbox', 'resolv.conf'), out.file);
    await t.svc.CreateSandbox({ hostname: 'h', sandbox_id: 'sec-own-sb', dns: ['nameserver 10.9.9.9'] });
    expect(out.before()).toEqual(before);
    const resolv = path.join(t.stateDir, 'sandbox', 'resolv.conf');
    expect(fs.lstatSync(resolv).isFile()).toBe(true);
    expect(fs.readFileSync(resolv, 'utf8')).toBe('nameserver 10.9.9.9\n');
    await t.svc.DestroySandbox({});
  });
});

describe('OCI spec mounts: crun resolves destinations inside the container rootfs', () => {
  const agent = useAgent('sec-oci-');
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });

  it('a destination through an absolute symlink in the rootfs lands inside the rootfs, or nowhere, never on the host', async () => {
    const out = outsideTargets(t, 'oci');
    const before = out.before();
    // The image's own symlink (a rootfs is as untrusted as whoever built it) to the host path.
    fs.symlinkSync(out.dir, path.join(t.rootfs, 'evil'));
    const inRootfs = path.join(t.rootfs, out.dir);
    const spec = (args: string[]) => {
      const s = containerSpec(t.rootfs, args, {
        mounts: [
          { destination: '/evil/sub', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'size=64k'] },
          { destination: '/evil', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'size=64k'] },
        ],
      });
      // No tmpfs on /tmp: the link's target path must be looked up in the rootfs itself.
      s.Mounts = s.Mounts!.filter((m) => m.destination !== '/tmp');
      return s;
    };
    try {
      // The target exists inside the rootfs: both mounts land there.
      fs.mkdirSync(inRootfs, { recursive: true });
      const cid = 'sec-oci-in';
      await t.svc.CreateContainer({ container_id: cid, OCI: spec(['sh', '-c', `grep -c " ${out.dir}/sub tmpfs " /proc/mounts; grep -c " ${out.dir} tmpfs " /proc/mounts`]) });
      await t.svc.StartContainer({ container_id: cid });
      const stdout = (await readAll(t, cid)).toString();
      expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(0);
      await t.svc.RemoveContainer({ container_id: cid });
      expect(stdout).toBe('1\n1\n');
      expect(fs.readdirSync(inRootfs)).toEqual(['sub']);
      expect(out.before()).toEqual(before);
      // The target missing inside the rootfs: crun refuses rather than resolve it anywhere else.
      fs.rmSync(path.join(t.rootfs, out.dir.split('/')[1]!, out.dir.split('/')[2]!), { recursive: true });
      const err = await t.svc.CreateContainer({ container_id: 'sec-oci-out', OCI: spec(['true']) }).catch((e) => e);
      expect(err.code).toBe(Code.Internal);
      expect(err.message).toMatch(/evil/);
      expect(out.before()).toEqual(before);
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(out.dir);
    } finally {
      fs.unlinkSync(path.join(t.rootfs, 'evil'));
      fs.rmSync(path.join(t.rootfs, out.dir.split('/')[1]!, out.dir.split('/')[2]!), { recursive: true, force: true });
    }
  });
});
