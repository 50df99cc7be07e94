// Attacks on the host through a real pod (containerd -> shim -> QEMU guest -> agent -> crun), run
// inside a suite that already has a containerd and a katats env (test/shim/containerd.test.ts):
// - a root container plants a setuid-root binary and a device node in its rootfs; on the host the
//   binary does not run as root (the shim's mounts are nosuid,nodev) and no device node exists
//   (QEMU runs without CAP_MKNOD);
// - the state and log trees the shim made while the pod runs: dirs 0700, sockets owner-only;
// - the guest still sees host owners and modes (uid 1000, 0640) and a host setuid-root binary
//   still works inside the guest; `rbind` brings submounts; /devdata-like paths are shared.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Containerd } from '../../harness/containerd.js';
import type { KatatsEnv } from '../shim/katats-env.js';
import { mountInfo, mountsUnder, unmountAll } from '../../sys/mount.js';

export interface PodSuiteContext {
  env: KatatsEnv;
  c: Containerd;
  image: string;
  logsOf(id: string): string;
}

/**
 * Runs `file` as nobody (uid 65534) on the host and returns what it prints. Through an fd opened
 * by root: nobody cannot traverse the 0700 state dir, and exec through /proc/self/fd still honours
 * the file's own mount (its nosuid).
 */
function euidAsNobody(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    return spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/proc/self/fd/3'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', fd] }).stdout.trim();
  } finally {
    fs.closeSync(fd);
  }
}

/** A static program that prints its effective uid: a setuid-root copy shows whether setuid works. */
function buildEuidProbe(dir: string): string {
  const src = path.join(dir, 'euid.c');
  fs.writeFileSync(src, '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("euid=%d\\n", (int)geteuid()); return 0; }\n');
  const bin = path.join(dir, 'euid');
  execFileSync('cc', ['-static', '-O2', '-o', bin, src]);
  return bin;
}

export function describePodSurface(ctx: () => PodSuiteContext): void {
  describe('the pod cannot reach the host through the shared filesystem', () => {
    const id = 'surface';
    let c: Containerd;
    let env: KatatsEnv;
    let work: string;
    let devLike: string;
    beforeAll(async () => {
      ({ c, env } = ctx());
      work = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-surface-'));
      // Host data as a volume: a file owned by uid 1000 (no xattrs: its real owner and mode must show),
      // a setuid-root probe, and a submount that only a recursive bind brings along.
      const data = path.join(work, 'data');
      fs.mkdirSync(path.join(data, 'sub'), { recursive: true });
      fs.writeFileSync(path.join(data, 'owned'), 'mine');
      fs.chownSync(path.join(data, 'owned'), 1000, 1000);
      fs.chmodSync(path.join(data, 'owned'), 0o640);
      const probe = buildEuidProbe(work);
      fs.copyFileSync(probe, path.join(data, 'euid-suid'));
      fs.chmodSync(path.join(data, 'euid-suid'), 0o4755);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', path.join(data, 'sub')]);
      fs.writeFileSync(path.join(data, 'sub', 'inner'), 'from a submount');
      // A host path whose first segment merely starts with "dev".
      devLike = `/devkatats-${process.pid}`;
      fs.mkdirSync(devLike, { recursive: true });
      fs.writeFileSync(path.join(devLike, 'f'), 'not a device dir');
      const mounts = [`type=bind,src=${data},dst=/hostdata,options=rbind:rw`, `type=bind,src=${devLike},dst=/devdata,options=rbind:ro`].flatMap((m) => ['--mount', m]);
      // --allow-new-privs: ctr's default spec sets no_new_privs, which would mute any setuid bit.
      const r = await c.ctr(['run', '-d', '--allow-new-privs', ...c.runtimeArgs('katats'), ...mounts, ctx().image, id, 'sleep', '100000'], { timeoutMs: 300_000 });
      expect(r.code, `${r.stderr}\n${ctx().logsOf(id)}`).toBe(0);
    }, 600_000);

    afterAll(async () => {
      await c.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
      for (let i = 0; i < 100 && !/STOPPED/.test((await c.ctr(['task', 'ls'])).stdout.split('\n').find((l) => l.startsWith(`${id} `)) ?? 'STOPPED'); i++) await new Promise((r) => setTimeout(r, 200));
      await c.ctr(['task', 'rm', '-f', id]);
      await c.ctr(['container', 'rm', id]);
      await unmountAll(work);
      fs.rmSync(work, { recursive: true, force: true });
      fs.rmSync(devLike, { recursive: true, force: true });
    }, 120_000);

    const exec = async (execId: string, script: string, user?: string) => {
      const r = await c.ctr(['task', 'exec', '--exec-id', execId, ...(user ? ['--user', user] : []), id, 'sh', '-c', script], { timeoutMs: 120_000 });
      return { ...r, out: r.stdout.trim() };
    };
    const sandbox = () => path.join(env.stateDir, 'sandboxes', id);
    const hostRootfs = () => path.join(sandbox(), 'shared', id, 'rootfs');

    it('a setuid-root binary and a device node planted by the container act as neither on the host', async () => {
      const r = await exec('plant', 'cp /hostdata/euid-suid /planted-probe && chmod 4755 /planted-probe && stat -c "%a %u" /planted-probe; mknod /planted-null c 1 3; echo "mknod $?"');
      expect(r.out.split('\n')[0], `${r.stderr}\n${ctx().logsOf(id)}`).toBe('4755 0');
      const probe = path.join(hostRootfs(), 'planted-probe');
      // The probe works: its host original, setuid-root on a suid mount, runs as root for nobody...
      expect(euidAsNobody(path.join(work, 'data', 'euid-suid'))).toBe('euid=0');
      // ...the container's copy, reached through the shim's mount, does not.
      expect(fs.existsSync(probe)).toBe(true);
      expect(euidAsNobody(probe)).toBe('euid=65534');
      const rootMount = mountInfo().filter((m) => m.mountPoint === hostRootfs()).at(-1);
      expect(rootMount?.options).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
      // No device node: QEMU has no CAP_MKNOD, so the guest's mknod fails and nothing lands.
      const node = fs.lstatSync(path.join(hostRootfs(), 'planted-null'), { throwIfNoEntry: false });
      expect(node?.isCharacterDevice() || node?.isBlockDevice() || false, 'a device node on the host').toBe(false);
      expect(r.out.split('\n')[1]).not.toBe('mknod 0');
    }, 180_000);

    it('the state and log trees: dirs 0700, sockets owner-only (the shim\'s own 0600), files not group/world writable', () => {
      const skip = new Set(mountsUnder(path.join(sandbox(), 'shared')).filter((m) => m !== path.join(sandbox(), 'shared')));
      const bad: string[] = [];
      const walk = (p: string) => {
        // A mount point shows the mounted tree (the container's rootfs, a volume): not the shim's to set.
        if (skip.has(p)) return;
        const st = fs.lstatSync(p);
        const mode = st.mode & 0o7777;
        if (st.isDirectory()) {
          if (mode !== 0o700) bad.push(`${p}: dir ${mode.toString(8)}`);
          for (const e of fs.readdirSync(p)) walk(path.join(p, e));
        } else if (st.isSocket()) {
          if (mode & 0o077) bad.push(`${p}: socket ${mode.toString(8)}`);
          if (p.startsWith(path.join(env.stateDir, 's') + '/') && mode !== 0o600) bad.push(`${p}: shim socket ${mode.toString(8)}`);
        } else if (mode & 0o022) bad.push(`${p}: file ${mode.toString(8)}`);
      };
      walk(env.stateDir);
      walk(env.logDir);
      expect(fs.readdirSync(path.join(env.stateDir, 's')).length).toBeGreaterThan(0);
      expect(bad).toEqual([]);
    });

    it('the guest sees host owners and modes, a host setuid-root binary works inside, rbind brings submounts', async () => {
      const r = await exec('view', 'stat -c "%u %g %a" /hostdata/owned; cat /hostdata/sub/inner; echo; cat /devdata/f');
      expect(r.out, `${r.stderr}\n${ctx().logsOf(id)}`).toBe('1000 1000 640\nfrom a submount\nnot a device dir');
      const u = await exec('suid', '/hostdata/euid-suid; id -u', '1000');
      expect(u.out, u.stderr).toBe('euid=0\n1000');
    }, 180_000);
  });
}
