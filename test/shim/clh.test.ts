// runtime.hypervisor = "clh" through containerd 1.6: the shim drives the VM through
// cloud-hypervisor's REST API and reaches the agent over hybrid vsock. No cloud-hypervisor can run
// here (Debian ships none, and it needs a working /dev/kvm), so vmm = "auto" picks katats-chv, QEMU
// under it. The CRI suite (cri-suite.ts) runs on it as it does on QEMU: a pod of three containers,
// exec, bad containers refused, an OOM kill, the sandbox container killed first, stop and remove
// leaving nothing. On the suite's containerd and env: a ctr pod whose layers come from the tardev
// snapshotter, hot-plugged as disks through vm.add-disk and unplugged through vm.remove-device,
// paused and resumed, its shim killed -9; then CRI pod create/delete cycles, each checked for
// leftovers (KATATS_CLH_CYCLES; 2 in CI, 20 on demand). One VM at a time.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { importIntoSnapshotter } from '../../harness/snapshotter.js';
import { afterAll, describe, expect, it } from 'vitest';
import { mountsUnder } from '../../harness/mounts.js';
import { listProcs } from '../../harness/procs.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import { layeredImage, LAYERED_EXPECT, LAYERED_INDEX } from '../../harness/images/layered.js';
import { runtime } from '../../proto/gen/types.js';
import { ClhClient } from '../../vmm/clh/client.js';
import { logTailsOnFailure } from '../support/failure-logs.js';
import { criSuite } from './cri-suite.js';
import { cgroupsNamed, countFromEnv, logsOf, qemuProcs, shimProcs, until, vmmHelperProcs } from './shim-helpers.js';

const { POD, CONTAINER, NODE } = runtime.v1.NamespaceMode;

// One containerd (bookworm's 1.6, the installed one) for all of it; the harness case runs on QEMU
// (cri.test.ts), it proves nothing about the hypervisor.
const suite = criSuite('bookworm', { hypervisor: 'clh', harnessCase: false, tardev: true });
const CYCLES = countFromEnv('KATATS_CLH_CYCLES', 2);
const failures = logTailsOnFailure();


/** Unix sockets below `dir` (a VM's API, vsock and virtiofsd sockets live below the state dir). */
function socketsUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isSocket()).map((e) => path.join(e.parentPath, e.name));
}

/** The sandbox whose shim logged last (the one a failed RunPodSandbox gave no id of). */
function newestSandbox(): string | undefined {
  const dir = suite.env.logDir;
  const mtime = (f: string) => fs.statSync(path.join(dir, f), { throwIfNoEntry: false })?.mtimeMs ?? 0;
  const newest = fs.readdirSync(dir).filter((f) => /^[0-9a-z-]+\.log$/.test(f) && !/-(agent|console|vmm|virtiofsd)\.log$/.test(f)).sort((a, b) => mtime(b) - mtime(a))[0];
  return newest?.slice(0, -'.log'.length);
}

function newestSandboxLogs(): string {
  const id = newestSandbox();
  return id ? logsOf(suite.env.logDir, id, suite.cd.logFile, 30) : '(no sandbox log)';
}

// A pod stop that hangs (a guest that died) shows only a deadline: its logs go to stderr before the suite removes them.
afterAll(() => {
  if (!failures.failed || !suite.env) return;
  const id = fs.existsSync(suite.env.logDir) ? newestSandbox() : undefined;
  const log = (s: string) => (id ? path.join(suite.env.logDir, `${id}${s}.log`) : undefined);
  failures.print({ containerd: suite.cd?.logFile, shim: log(''), agent: log('-agent'), console: log('-console'), 'katats-chv': log('-vmm') });
});

/** No process, mount, socket, state dir or cgroup of sandbox `id` is left. */
async function expectNothingLeftOf(id: string, what: string): Promise<void> {
  const { env, cd } = suite;
  await until(() => qemuProcs(env.stateDir, id).length + vmmHelperProcs(env.stateDir).length + shimProcs(cd.address, id).length, (n) => n === 0, 60_000);
  expect(qemuProcs(env.stateDir, id), `${what}: QEMU\n${logsOf(env.logDir, id, cd.logFile)}`).toEqual([]);
  expect(vmmHelperProcs(env.stateDir), `${what}: katats-chv, katats-fds, virtiofsd`).toEqual([]);
  expect(shimProcs(cd.address, id), `${what}: shim`).toEqual([]);
  expect(listProcs().filter((p) => p.cmdline.includes(id)).map((p) => p.cmdline), what).toEqual([]);
  expect(mountsUnder(env.stateDir), what).toEqual([]);
  expect(mountsUnder(cd.dir), what).toEqual([]);
  expect(fs.existsSync(path.join(env.stateDir, 'sandboxes', id)), `${what}: the sandbox's state dir`).toBe(false);
  expect(socketsUnder(env.stateDir), what).toEqual([]);
  expect(cgroupsNamed(id), `${what}: cgroups`).toEqual([]);
}

describe('hypervisor = "clh": its own cases, on the CRI suite\'s containerd', () => {
  it("the suite's pod ran through the cloud-hypervisor API, on katats-chv", () => {
    const { env, podId } = suite;
    expect(podId).not.toBe('');
    expect(fs.readFileSync(path.join(env.logDir, `${podId}.log`), 'utf8')).toMatch(/"vmm":"katats-chv".*"msg":"hypervisor clh"/);
    // katats-chv's own log: it served the API and ran QEMU.
    expect(fs.readFileSync(path.join(env.logDir, `${podId}-vmm.log`), 'utf8')).toContain('katats-chv serving');
  });

  it('a ctr pod on tardev layers: disks hot-plugged through vm.add-disk, unplugged through vm.remove-device; pause/resume; kill -9 of its shim takes katats-chv and its QEMU', async () => {
    const { cd, env } = suite;
    const pod = 'clh-lay';
    const tardev = ['--snapshotter', 'tardev'];
    const group = ['--annotation', `io.containerd.runc.v2.group=${pod}`];
    const logs = () => logsOf(env.logDir, pod, cd.logFile, 30);
    const bb = await busyboxImage();
    const lay = await layeredImage();
    await importIntoSnapshotter(cd, [...tardev, '--index-name', BUSYBOX_INDEX, bb.archive], { timeoutMs: 300_000 });
    await importIntoSnapshotter(cd, [...tardev, '--index-name', LAYERED_INDEX, lay.archive], { timeoutMs: 300_000 });
    try {
      await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...group, bb.name, pod, 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
      expect(qemuProcs(env.stateDir, pod).length, logs()).toBe(1);
      expect(vmmHelperProcs(env.stateDir).length).toBeGreaterThanOrEqual(2); // katats-chv, its front (and virtiofsd)
      // What the VMM says it has, through the same REST API the shim used.
      const apiSocket = path.join(env.stateDir, 'sandboxes', pod, 'vm', 'api.sock');
      expect(fs.existsSync(apiSocket), apiSocket).toBe(true);
      const api = new ClhClient(apiSocket);
      const layerDisks = async () => ((await api.info()).config.disks ?? []).map((d) => d.id ?? '').filter((id) => id !== 'katats-root').sort();
      let n = 0;
      const guestDisks = async () => (await cd.ctrOk(['task', 'exec', '--exec-id', `disks${n++}`, pod, 'ls', '/sys/block'])).stdout.split(/\s+/).filter((d) => d.startsWith('vd')).sort();

      // busybox is one layer: one disk besides the guest's root, and the container's root is made of it.
      const base = await layerDisks();
      expect(base.length, logs()).toBe(1);
      expect((await guestDisks()).length).toBe(2);
      expect((await cd.ctrOk(['task', 'exec', '--exec-id', 'root', pod, 'grep', ' / ', '/proc/mounts'])).stdout).toMatch(/^\S+ \/ overlay /m);

      // The three-layer image joins the pod: two more disks (its base layer is busybox's, plugged already).
      await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...group, lay.name, 'clh-lay2', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
      const files = Object.keys(LAYERED_EXPECT.files);
      const cat = await cd.ctr(['task', 'exec', '--exec-id', 'cat', 'clh-lay2', 'cat', ...files]);
      expect(cat.code, `${cat.stderr}\n${logs()}`).toBe(0);
      expect(cat.stdout).toBe(Object.values(LAYERED_EXPECT.files).join(''));
      const all = await layerDisks();
      expect(all.length).toBe(3);
      expect(all).toEqual(expect.arrayContaining(base));
      expect((await guestDisks()).length).toBe(4);
      const agentLog = () => fs.readFileSync(path.join(env.logDir, `${pod}-agent.log`), 'utf8');
      expect(agentLog().match(/layer verified through dm-verity/g)?.length, logs()).toBe(3);

      // Its container gone, its own two layers leave the VM: the VMM and the guest no longer have them.
      await cd.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'clh-lay2']);
      await until(() => cd.ctr(['task', 'rm', 'clh-lay2']), (r) => r.code === 0, 60_000);
      await cd.ctrOk(['container', 'rm', 'clh-lay2']);
      expect(await until(layerDisks, (d) => d.length === 1, 60_000), logs()).toEqual(base);
      expect((await until(guestDisks, (d) => d.length === 2, 60_000)).length).toBe(2);
      const shimLog = () => fs.readFileSync(path.join(env.logDir, `${pod}.log`), 'utf8');
      expect(shimLog().match(/"msg":"layer disk detached"/g)?.length).toBe(2);

      // The same layers plug again under the same ids (the VMM let go of them).
      const again = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), ...group, lay.name, 'clh-lay3', 'cat', '/etc/motd'], { timeoutMs: 300_000 });
      expect(again.code, `${again.stderr}\n${logs()}`).toBe(0);
      expect(again.stdout).toBe(LAYERED_EXPECT.files['/etc/motd']);
      expect(await until(layerDisks, (d) => d.length === 1, 60_000)).toEqual(base);
      expect(agentLog().match(/layer verified through dm-verity/g)?.length).toBe(5);

      // Pausing a container freezes its processes in the guest (the agent's cgroup), not the VM.
      await cd.ctrOk(['task', 'pause', pod]);
      expect((await cd.ctrOk(['task', 'ls'])).stdout).toMatch(new RegExp(`${pod}\\s+\\d+\\s+PAUSED`));
      expect((await api.info()).state).toBe('Running');
      await cd.ctrOk(['task', 'resume', pod]);
      expect((await cd.ctrOk(['task', 'exec', '--exec-id', 'e1', pod, 'echo', 'alive'])).stdout).toContain('alive');

      const shims = shimProcs(cd.address, pod);
      expect(shims.length).toBe(1);
      process.kill(shims[0]!, 'SIGKILL');
      // containerd runs `shim delete`, which kills the VMM's whole process group.
      await until(() => qemuProcs(env.stateDir).length + vmmHelperProcs(env.stateDir).length, (x) => x === 0, 60_000);
      expect(qemuProcs(env.stateDir)).toEqual([]);
      expect(vmmHelperProcs(env.stateDir)).toEqual([]);
      await cd.ctr(['task', 'rm', '-f', pod]);
      await cd.ctrOk(['container', 'rm', pod]);
      await expectNothingLeftOf(pod, 'after kill -9 of the shim');
    } finally {
      for (const id of ['clh-lay3', 'clh-lay2', pod]) {
        await cd.ctr(['task', 'rm', '-f', id]);
        await cd.ctr(['container', 'rm', id]);
      }
      await cd.ctr(['images', 'rm', '--sync', lay.name, LAYERED_INDEX, bb.name, BUSYBOX_INDEX]);
    }
  }, 900_000);

  it.runIf(CYCLES > 0)(`${CYCLES} CRI pod create/delete cycles: each leaves no QEMU, katats-chv, virtiofsd, fds front, shim, mount, socket, state dir or cgroup`, async () => {
    const { cd, env, image } = suite;
    const cri = cd.criApi();
    const ns = { network: NODE, pid: CONTAINER, ipc: POD };
    const t0 = Date.now();
    const loads: number[] = [];
    for (let i = 0; i < CYCLES; i++) {
      const t = Date.now();
      const config = { metadata: { name: `clh-cycle-${i}`, uid: `uid-clh-cycle-${i}-${process.pid}`, namespace: 'default' }, linux: { security_context: { namespace_options: ns } } };
      const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: 'katats' }, { timeoutMs: 300_000 }).catch((e: unknown) => {
        throw new Error(`cycle ${i}: ${(e as Error).message}\n${newestSandboxLogs()}`);
      });
      const logs = () => logsOf(env.logDir, id, cd.logFile, 20);
      expect(qemuProcs(env.stateDir, id).length, `cycle ${i}\n${logs()}`).toBe(1);
      const { container_id } = await cri.runtime.CreateContainer(
        { pod_sandbox_id: id, sandbox_config: config, config: { metadata: { name: 'c' }, image: { image }, command: ['sleep', '100000'], linux: { security_context: { namespace_options: ns } } } },
        { timeoutMs: 180_000 },
      );
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
      const r = await cri.runtime.ExecSync({ container_id, cmd: ['sh', '-c', 'uname -r; grep " / " /proc/mounts'], timeout: 60 }, { timeoutMs: 90_000 });
      const out = Buffer.from(r.stdout).toString();
      expect(r.exit_code, `cycle ${i}: ${Buffer.from(r.stderr).toString()}\n${logs()}`).toBe(0);
      expect(out.split('\n')[0]).toBe(env.image.manifest.kernel.release);
      // The container's root reaches the guest over virtio-fs (the only share cloud-hypervisor has).
      expect(out).toMatch(/^\S+ \/ virtiofs /m);
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 120_000 });
      expect((await cri.runtime.ListPodSandbox({})).items).toEqual([]);
      await expectNothingLeftOf(id, `cycle ${i}`);
      expect(fs.existsSync(path.join(cd.root, 'io.containerd.grpc.v1.cri', 'sandboxes', id))).toBe(false);
      loads.push(os.loadavg()[0]!);
      console.log(`clh pod cycle ${i + 1}/${CYCLES}: ${((Date.now() - t) / 1000).toFixed(1)} s, clean at ${((Date.now() - t0) / 1000).toFixed(0)} s, load ${loads.at(-1)!.toFixed(2)}`);
    }
    const s = (Date.now() - t0) / 1000;
    console.log(`${CYCLES} clh pod cycles (containerd ${cd.binaries.version}, katats-chv on ${env.accel}): ${s.toFixed(0)} s, ${(s / CYCLES).toFixed(1)} s a cycle, load ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`);
  }, 120_000 + CYCLES * 300_000);
});
