// [hypervisor.qemu] shared_fs through containerd 1.6: "virtio-fs" serves container rootfs from a
// virtiofsd per sandbox (the guest mounts them as virtiofs), and nothing of it outlives the pod;
// "none" refuses the container before any VM boots. One VM.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { mountsUnder } from '../../harness/mounts.js';
import { listProcs } from '../../harness/procs.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import { endKatatsSuite, logsOf, qemuProcs } from './shim-helpers.js';
import { logTailsOnFailure, latestLog } from '../support/failure-logs.js';

const failures = logTailsOnFailure();

let env: KatatsEnv;
let c: Containerd;
let image: string;

function virtiofsdProcs(): number[] {
  return listProcs()
    .filter((p) => p.cmdline.includes('virtiofsd') && p.cmdline.includes(env.stateDir))
    .map((p) => p.pid);
}

function socketsUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((f) => path.join(dir, f)).filter((f) => {
    try {
      return fs.lstatSync(f).isSocket();
    } catch {
      return false;
    }
  });
}

beforeAll(async () => {
  env = await katatsEnv({ qemuToml: 'shared_fs = "virtio-fs"' });
  c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, 'katats.local/busybox:index');
  image = img.name;
}, 600_000);

afterAll(() => {
  failures.print({ containerd: c?.logFile, ...(env ? { 'shim and VMM logs': latestLog(env.logDir) } : {}) });
  return endKatatsSuite(c, env, virtiofsdProcs);
}, 120_000);

describe('shared_fs with io.containerd.katats.v2', () => {
  it('virtio-fs: the container runs from a virtiofs rootfs, and no QEMU, virtiofsd, mount or socket remains', async () => {
    const id = 'vfs1';
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, id, 'sh', '-c', 'cat /etc/passwd; echo "K=$(uname -r)"; grep " / " /proc/mounts'], { timeoutMs: 300_000 });
    expect(r.code, `${r.stderr}\n${logsOf(env.logDir, id)}`).toBe(0);
    expect(r.stdout).toContain('root:x:0:0:root:/root:/bin/sh');
    expect(r.stdout).toContain(`K=${env.image.manifest.kernel.release}`);
    // The container's / is its rootfs in the shared directory: a bind of a directory of the one
    // virtiofs filesystem (no submounts announced, shim/virtiofsd.ts says why).
    expect(r.stdout).toMatch(/^\S+ \/ virtiofs /m);

    const shimLog = fs.readFileSync(path.join(env.logDir, `${id}.log`), 'utf8');
    expect(shimLog).toContain('virtiofsd listening');
    expect(fs.readFileSync(path.join(env.logDir, `${id}-virtiofsd.log`), 'utf8')).toContain('Received vhost-user socket connection');

    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect(virtiofsdProcs()).toEqual([]);
    expect(mountsUnder(env.dir)).toEqual([]);
    expect(socketsUnder(path.join(env.stateDir, 'sandboxes'))).toEqual([]);
    expect(fs.existsSync(path.join(env.stateDir, 'sandboxes', id))).toBe(false);
    expect(c.leftovers()).toEqual({ procs: [], mounts: [] });
  }, 300_000);

  it('none: the container is refused before a VM boots, with the reason', async () => {
    // ctr hands a non-runc runtime this path as runtimeoptions ConfigPath, as CRI does.
    const noneConfig = path.join(env.dir, 'none.toml');
    fs.writeFileSync(noneConfig, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "virtio-fs"', 'shared_fs = "none"'));
    const id = 'none1';
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), '--runtime-config-path', noneConfig, image, id, 'true'], { timeoutMs: 120_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/shared_fs = none: .*set \[hypervisor\.qemu\] shared_fs/);
    expect(fs.readFileSync(path.join(env.logDir, `${id}.log`), 'utf8')).not.toContain("starting qemu");
    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect(virtiofsdProcs()).toEqual([]);
    await c.ctr(['container', 'rm', id]);
    expect(c.leftovers()).toEqual({ procs: [], mounts: [] });
  }, 120_000);
});
