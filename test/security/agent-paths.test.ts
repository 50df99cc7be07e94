// The host is outside the trust boundary: whatever it plants through one request (a symlink by
// CopyFile, a storage mount point) must not redirect a later request out of the agent's own
// directories. Each test plants with the real agent (local mode), aims a later request through
// the plant at something outside, and checks that the outside thing is untouched: owner, mode,
// content, and that nothing got mounted on it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { useAgent, type TestAgent } from '../agent/helpers.js';
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
