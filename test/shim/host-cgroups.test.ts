// Where a katats pod's host processes run, through containerd's CRI as the kubelet drives it: a pod
// cgroup made by the test (the kubelet's part), PodSandboxConfig.linux.cgroup_parent naming it, and
// two runtime handlers on the same shim, one per Kata placement (sandbox_cgroup_only false and true,
// the second through the handler's ConfigPath option). Checked in /proc/<pid>/cgroup of the shim,
// QEMU and QEMU's vCPU threads, and in the hierarchies after the pod is gone.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { busyboxImage, BUSYBOX_INDEX } from '../../harness/images/busybox.js';
import { CRI_NAMESPACE } from '../../harness/containerd.js';
import { cgroupsOf, createCgroup, hostHierarchies, removeCgroupDirs, vcpuThreads } from '../../shim/cgroups.js';
import { OVERHEAD_ROOT } from '../../shim/sandbox-cgroups.js';
import { runtime } from '../../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';

const { NODE, CONTAINER, POD } = runtime.v1.NamespaceMode;

let env: KatatsEnv;
let cd: Containerd;
let cri: CriClient;
const hier = hostHierarchies();
const kubepods = `katats-kubepods-${process.pid}`;
let made: string[] = [];

/** Where a thread or process sits, one entry per hierarchy: "v1:memory" → path. */
const otherState = () => path.join(env.dir, 'sco-run');
const otherLogs = () => path.join(env.dir, 'sco-log');

function placement(pid: number, tid?: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [h, rel] of cgroupsOf(pid, hier, tid)) out[h.mount] = rel;
  return out;
}

/** QEMU's threads that live long enough to be looked at. */
function threadPlacements(pid: number): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      out.push(placement(pid, tid));
    } catch {
      // A worker thread that ended meanwhile.
    }
  }
  return out;
}

function everywhere(rel: string): Record<string, string> {
  return Object.fromEntries(hier.map((h) => [h.mount, rel]));
}

function memoryUsage(rel: string): number | undefined {
  const mem = hier.find((h) => h.controllers.includes('memory'));
  if (!mem) return undefined;
  return Number(fs.readFileSync(path.join(mem.mount, rel, 'memory.usage_in_bytes'), 'utf8'));
}

beforeAll(async () => {
  env = await katatsEnv();
  const sco = path.join(env.dir, 'configuration-sandbox-cgroup-only.toml');
  // The env's file ends in its [runtime] table: one more key goes there. Its own state and log dirs
  // must be ignored (start and delete never see ConfigPath): the shim's file decides those.
  const base = fs.readFileSync(env.configFile, 'utf8');
  fs.writeFileSync(sco, `${base.replace(/^state_dir = .*$/m, `state_dir = "${otherState()}"`).replace(/^log_dir = .*$/m, `log_dir = "${otherLogs()}"`)}\nsandbox_cgroup_only = true\n`);
  cd = await startContainerd({ cri: true, runtimes: [env.runtime, { ...env.runtime, name: 'katats-sco', options: { ConfigPath: sco } }] });
  const img = await busyboxImage();
  await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
  cri = cd.criApi();
  // The kubelet's part: the pod cgroups exist before the runtime is asked for the pod.
  made = [...createCgroup(hier, `${kubepods}/pod-a`), ...createCgroup(hier, `${kubepods}/pod-b`)];
}, 600_000);

afterAll(async () => {
  try {
    await helpers.endKatatsSuite(cd, env);
  } finally {
    // The test's pod cgroups, once nothing runs in them.
    expect(await removeCgroupDirs(made)).toEqual([]);
  }
}, 300_000);

async function runPod(name: string, handler: string): Promise<{ podId: string; qemu: number; shim: number }> {
  const config = {
    metadata: { name, uid: `uid-${name}-${process.pid}`, namespace: 'default' },
    linux: { cgroup_parent: `/${kubepods}/${name}`, security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id: podId } = await cri.runtime.RunPodSandbox({ config, runtime_handler: handler }, { timeoutMs: 300_000 });
  const logs = helpers.logsOf(env.logDir, podId, cd.logFile);
  const [qemu] = helpers.qemuProcs(env.stateDir, podId);
  const [shim] = helpers.shimProcs(cd.address, podId);
  expect(qemu, logs).toBeDefined();
  expect(shim, logs).toBeDefined();
  return { podId, qemu: qemu!, shim: shim! };
}

async function removePod(podId: string): Promise<void> {
  await cri.runtime.StopPodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 180_000 });
  await cri.runtime.RemovePodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 120_000 });
}

describe('host cgroups of a katats pod (containerd bookworm, CRI)', () => {
  it('default: the vCPU threads in the pod cgroup, the shim and the rest of QEMU in katats_overhead; all removed with the pod', async () => {
    const { podId, qemu, shim } = await runPod('pod-a', 'katats');
    const logs = () => helpers.logsOf(env.logDir, podId, cd.logFile);
    const overhead = `${OVERHEAD_ROOT}/${podId}`;
    expect(placement(shim), logs()).toEqual(everywhere(overhead));
    expect(placement(qemu)).toEqual(everywhere(overhead));
    const vcpus = vcpuThreads(qemu);
    expect(vcpus.length, logs()).toBe(1);
    // v1 holds threads apart from their process; a v2 hierarchy (hybrid's unified) keeps them with it.
    const expected = Object.fromEntries(hier.map((h) => [h.mount, h.version === 1 ? `${kubepods}/pod-a/${podId}` : overhead]));
    for (const tid of vcpus) expect(placement(qemu, tid), logs()).toEqual(expected);
    const guestMem = memoryUsage(`${kubepods}/pod-a`);
    const overheadMem = memoryUsage(overhead);
    if (guestMem !== undefined && overheadMem !== undefined) {
      // cgroup v1 charges memory to the process's cgroup, not the faulting thread's: the guest's RAM lands in overhead.
      console.log(`katats pod on ${env.accel}, sandbox_cgroup_only=false: pod cgroup memory ${(guestMem / 2 ** 20).toFixed(0)} MiB, overhead cgroup ${(overheadMem / 2 ** 20).toFixed(0)} MiB (shim, QEMU, guest RAM)`);
    }

    await removePod(podId);
    expect(helpers.sandboxCgroups(podId, `${kubepods}/pod-a`)).toEqual([]);
    // The pod cgroup is the kubelet's (here the test's), not the shim's: it stays.
    for (const h of hier) expect(fs.existsSync(path.join(h.mount, kubepods, 'pod-a'))).toBe(true);
  }, 600_000);

  it('sandbox_cgroup_only: the shim and all of QEMU in <pod cgroup>/katats_<sandbox>, charged to the pod; all removed with the pod', async () => {
    const { podId, qemu, shim } = await runPod('pod-b', 'katats-sco');
    const logs = () => helpers.logsOf(env.logDir, podId, cd.logFile);
    const sandbox = `${kubepods}/pod-b/katats_${podId}`;
    expect(placement(shim), logs()).toEqual(everywhere(sandbox));
    expect(placement(qemu)).toEqual(everywhere(sandbox));
    const threads = threadPlacements(qemu);
    expect(threads.length).toBeGreaterThan(1);
    for (const t of threads) expect(t).toEqual(everywhere(sandbox));
    for (const h of hier) expect(fs.existsSync(path.join(h.mount, OVERHEAD_ROOT, podId))).toBe(false);
    // runPod found QEMU under the shim's own state dir; the handler's file named others, unused.
    expect(fs.existsSync(otherState())).toBe(false);
    expect(fs.existsSync(otherLogs())).toBe(false);
    expect(fs.readFileSync(path.join(env.logDir, `${podId}.log`), 'utf8')).toMatch(/come from the shim's own configuration/);
    const podMem = memoryUsage(`${kubepods}/pod-b`);
    if (podMem !== undefined) {
      // The VM's memory is the pod's: at least what the guest touched while booting.
      expect(podMem).toBeGreaterThan(32 * 2 ** 20);
      console.log(`katats pod on ${env.accel}, sandbox_cgroup_only=true: pod cgroup memory ${(podMem / 2 ** 20).toFixed(0)} MiB (shim, QEMU and guest)`);
    }

    await removePod(podId);
    expect(helpers.sandboxCgroups(podId, `${kubepods}/pod-b`)).toEqual([]);
    for (const h of hier) expect(fs.existsSync(path.join(h.mount, kubepods, 'pod-b'))).toBe(true);
  }, 600_000);
});
