// runtime.hypervisor = "clh" through containerd: the shim drives the VM through cloud-hypervisor's
// REST API and reaches the agent over hybrid vsock. No cloud-hypervisor can run here (Debian ships
// none, and it needs a working /dev/kvm), so vmm = "auto" picks katats-chv, QEMU under it. A pod
// runs and ends leaving nothing; a pod whose shim is killed -9 takes katats-chv and its QEMU with
// it through `shim delete`. One VM at a time.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { mountsUnder } from '../../harness/mounts.js';
import { listProcs } from '../../harness/procs.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import { endKatatsSuite, logsOf, qemuProcs, shimProcs, until } from './shim-helpers.js';

let env: KatatsEnv;
let c: Containerd;
let image: string;

/** katats-chv (its argv names QEMU too), its fds front and virtiofsd of this env; QEMU itself is qemuProcs'. */
function vmmProcs(): number[] {
  return listProcs()
    .filter((p) => p.comm !== 'qemu-system-x86' && /chv|virtiofsd|katats-fds/.test(p.cmdline) && p.cmdline.includes(env.stateDir))
    .map((p) => p.pid);
}

/** The QEMU processes themselves (katats-chv's argv names QEMU, so it matches qemuProcs too). */
function qemus(id?: string): number[] {
  return qemuProcs(env.stateDir, id).filter((pid) => !vmmProcs().includes(pid));
}

beforeAll(async () => {
  env = await katatsEnv({ hypervisor: 'clh' });
  c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, 'katats.local/busybox:index');
  image = img.name;
}, 600_000);

afterAll(() => endKatatsSuite(c, env, vmmProcs), 120_000);

describe('hypervisor = "clh" with io.containerd.katats.v2', () => {
  it('runs a container through the cloud-hypervisor API (katats-chv here), and nothing of it outlives the pod', async () => {
    const id = 'clh1';
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, id, 'sh', '-c', 'echo "K=$(uname -r)"; grep " / " /proc/mounts'], { timeoutMs: 240_000 });
    expect(r.code, `${r.stderr}\n${logsOf(env.logDir, id)}`).toBe(0);
    expect(r.stdout).toContain(`K=${env.image.manifest.kernel.release}`);
    expect(r.stdout).toMatch(/^\S+ \/ virtiofs /m);
    const shimLog = fs.readFileSync(path.join(env.logDir, `${id}.log`), 'utf8');
    expect(shimLog).toMatch(/"vmm":"katats-chv".*"msg":"hypervisor clh"/);
    // katats-chv's own log: it served the API and ran QEMU.
    expect(fs.readFileSync(path.join(env.logDir, `${id}-vmm.log`), 'utf8')).toContain('katats-chv serving');
    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect(vmmProcs()).toEqual([]);
    expect(mountsUnder(env.dir)).toEqual([]);
    expect(fs.existsSync(path.join(env.stateDir, 'sandboxes', id))).toBe(false);
    expect(c.leftovers()).toEqual({ procs: [], mounts: [] });
  }, 300_000);

  it('pause and resume a running container; kill -9 of its shim takes katats-chv and its QEMU with it', async () => {
    const id = 'clh2';
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, id, 'sh', '-c', 'while true; do sleep 0.5; done'], { timeoutMs: 240_000 });
    expect(qemus(id).length).toBe(1);
    expect(vmmProcs().length).toBeGreaterThanOrEqual(2); // katats-chv, its front (and virtiofsd)
    await c.ctrOk(['task', 'pause', id]);
    expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(new RegExp(`${id}\\s+\\d+\\s+PAUSED`));
    await c.ctrOk(['task', 'resume', id]);
    expect((await c.ctrOk(['task', 'exec', '--exec-id', 'e1', id, 'echo', 'alive'])).stdout).toContain('alive');
    const shims = shimProcs(c.address, id);
    expect(shims.length).toBe(1);
    process.kill(shims[0]!, 'SIGKILL');
    // containerd runs `shim delete`, which kills the VMM's whole process group.
    await until(() => qemuProcs(env.stateDir).length + vmmProcs().length, (n) => n === 0, 60_000);
    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect(vmmProcs()).toEqual([]);
    await c.ctr(['task', 'rm', '-f', id]);
    await c.ctrOk(['container', 'rm', id]);
    expect(mountsUnder(env.dir)).toEqual([]);
  }, 600_000);
});
