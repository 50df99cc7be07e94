// A CRI pod on katats through Debian's containerd and its CRI plugin, driven over CRI gRPC as
// the kubelet would: RunPodSandbox with runtime handler katats boots one VM (the pause container
// is the sandbox), two busybox containers join it; they share a host directory mounted into both
// and the pod's /dev/shm, and nothing else. Host-network pods: no CNI plugin is involved.
// The suite runs against a containerd flavor: cri.test.ts (bookworm's 1.6, with the VM factory on:
// every pod is a clone of a template `katats factory init` built), cri17.test.ts (trixie's 1.7),
// cri2.test.ts (sid's 2.x, cold boots); clh.test.ts runs it on 1.6 with hypervisor = "clh" and adds
// its own cases on the suite's containerd and env (criSuite's answer).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor } from '../../harness/containerd.js';
import { CriError, type CriClient } from '../../harness/cri.js';
import { mountsUnder } from '../../harness/mounts.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import { SnapshotterProcess, untilContainerdReaches } from '../../harness/snapshotter.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { tempDir } from '../support/tmp.js';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { until } from './shim-helpers.js';

const { POD, CONTAINER, NODE } = runtime.v1.NamespaceMode;
const { SANDBOX_READY, SANDBOX_NOTREADY } = runtime.v1.PodSandboxState;
const { CONTAINER_RUNNING, CONTAINER_EXITED } = runtime.v1.ContainerState;

export interface CriSuiteOptions {
  /** [factory] enable_template with a template built for the suite: the pods' VMs must be its clones. */
  factory?: boolean;
  /** runtime.hypervisor of the suite's env (default qemu). */
  hypervisor?: 'qemu' | 'clh';
  /** The harness case (a second containerd's stop() takes down a pod left running); default on. */
  harnessCase?: boolean;
  /** The suite's containerd also serves the tardev snapshotter (a proxy plugin), for the caller's ctr pods. */
  tardev?: boolean;
}

/** The suite's parts, for cases a caller adds in the same file (set once its beforeAll ran). */
export interface CriSuite {
  readonly env: KatatsEnv;
  readonly cd: Containerd;
  /** the busybox image's name (imported into CRI's namespace) */
  readonly image: string;
  /** the suite's pod (its logs outlive it in env.logDir) */
  readonly podId: string;
  /** with `tardev` */
  readonly snapshotter: SnapshotterProcess | undefined;
}

export function criSuite(FLAVOR: ContainerdFlavor, opts: CriSuiteOptions = {}): CriSuite {
  let env: KatatsEnv;
  let endFactory: (() => Promise<void>) | undefined;
  let sn: SnapshotterProcess | undefined;
  const hypervisor = opts.hypervisor ?? 'qemu';
  const qemuProcs = () => helpers.qemuProcs(env.stateDir);
  const shimProcs = () => helpers.shimProcs(cd.address);
  let cd: Containerd;
  let cri: CriClient;
  let image: string;
  let shared: { dir: string; cleanup: () => void };
  let podId = '';
  let podConfig: Init<runtime.v1.PodSandboxConfig>;
  const ids: Record<string, string> = {};

  const logs = () => helpers.logsOf(env.logDir, podId, cd.logFile, 20);

  async function exec(container: string, cmd: string[]): Promise<{ code: number; out: string; err: string }> {
    const r = await cri.runtime.ExecSync({ container_id: ids[container], cmd, timeout: 60 }, { timeoutMs: 90_000 });
    return { code: r.exit_code, out: Buffer.from(r.stdout).toString(), err: Buffer.from(r.stderr).toString() };
  }

  function containerConfig(name: string, command: string[], opts: { image?: string; pid?: runtime.v1.NamespaceMode } = {}): Init<runtime.v1.ContainerConfig> {
    return {
      metadata: { name },
      image: { image: opts.image ?? image },
      command,
      mounts: [{ container_path: '/shared', host_path: shared.dir }],
      linux: { security_context: { namespace_options: { network: NODE, pid: opts.pid ?? CONTAINER, ipc: POD } } },
    };
  }

  async function createAndStart(name: string, command: string[], opts: { pid?: runtime.v1.NamespaceMode } = {}): Promise<string> {
    const req = { pod_sandbox_id: podId, sandbox_config: podConfig, config: containerConfig(name, command, opts) };
    const { container_id } = await cri.runtime.CreateContainer(req, { timeoutMs: 180_000 });
    ids[name] = container_id;
    await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
    return container_id;
  }

  /** The pod's VM came from the template when the suite runs with the factory (the shim's log says so). */
  function expectBootPath(sandbox: string): void {
    if (opts.factory) helpers.expectCloned(env, sandbox, cd.logFile);
  }

  beforeAll(async () => {
    if (opts.factory && hypervisor !== 'qemu') throw new Error('the VM factory is QEMU\'s: no factory with hypervisor = "clh"');
    if (opts.factory) ({ env, end: endFactory } = await helpers.factoryKatatsEnv(true));
    else env = await katatsEnv({ hypervisor });
    if (opts.tardev) sn = SnapshotterProcess.prepare({ katats: path.join((await buildHostBinaries(() => {})).binDir, 'katats') });
    cd = await startContainerd({ cri: true, flavor: FLAVOR, runtimes: [env.runtime], ...(sn ? { proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }] } : {}) });
    if (sn) {
      await sn.start(30_000, cd.address);
      await untilContainerdReaches(cd, 'tardev');
    }
    const img = await busyboxImage();
    await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
    image = img.name;
    cri = cd.criApi();
    await cri.waitForImage(image);
    shared = tempDir('kt-cri-shared-');
    podConfig = {
      metadata: { name: 'katats-pod', uid: `uid-${process.pid}`, namespace: 'default' },
      linux: { security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
    };
  }, 600_000);

  afterAll(async () => {
    try {
      await endFactory?.();
      // Before containerd: its stop would kill the snapshotter, which names it on its command line.
      const unmounted = await sn?.stop();
      const report = await helpers.endKatatsSuite(cd, env, () => (env ? helpers.vmmHelperProcs(env.stateDir) : []));
      expect(unmounted ?? []).toEqual([]);
      expect(report?.podsRemoved ?? []).toEqual([]);
    } finally {
      shared?.cleanup();
    }
  }, 300_000);

  describe(`a CRI pod with runtime handler katats (containerd ${FLAVOR}, hypervisor ${hypervisor})`, () => {
    it('runs the pause container and two containers in one VM, sharing only the shared dir and the pod shm', async () => {
      const t0 = performance.now();
      ({ pod_sandbox_id: podId } = await cri.runtime.RunPodSandbox({ config: podConfig, runtime_handler: 'katats' }, { timeoutMs: 300_000 }));
      const podMs = performance.now() - t0;
      const st = await cri.runtime.PodSandboxStatus({ pod_sandbox_id: podId });
      expect(st.status?.state, logs()).toBe(SANDBOX_READY);
      expect(st.status?.runtime_handler).toBe('katats');
      const vm = qemuProcs();
      expect(vm.length, logs()).toBe(1);
      expectBootPath(podId);
      const shim = shimProcs();
      expect(shim.length).toBe(1);

      const t1 = performance.now();
      await createAndStart('a', ['sh', '-c', 'echo from-a > /shared/x; echo private > /a-private; echo in-shm > /dev/shm/z; exec sleep 100000']);
      const aMs = performance.now() - t1;
      await createAndStart('b', ['sleep', '100000']);
      // Both joined the pod's VM: still one shim (containerd got its address from `start`), one QEMU.
      expect(shimProcs(), logs()).toEqual(shim);
      expect(qemuProcs()).toEqual(vm);
      const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
      expect(containers.map((c) => [c.metadata?.name, c.state]).sort()).toEqual([
        ['a', CONTAINER_RUNNING],
        ['b', CONTAINER_RUNNING],
      ]);

      // B sees what A wrote to the shared dir, and so does the host.
      const x = await until(() => exec('b', ['cat', '/shared/x']), (r) => r.out === 'from-a\n', 60_000);
      expect(x, logs()).toMatchObject({ code: 0, out: 'from-a\n' });
      expect(fs.readFileSync(path.join(shared.dir, 'x'), 'utf8')).toBe('from-a\n');
      expect(await exec('b', ['sh', '-c', 'echo from-b > /shared/y'])).toMatchObject({ code: 0 });
      expect(await exec('a', ['cat', '/shared/y'])).toMatchObject({ code: 0, out: 'from-b\n' });
      // A's own root filesystem is A's: the file is there for A and absent for B.
      expect(await exec('a', ['cat', '/a-private'])).toMatchObject({ code: 0, out: 'private\n' });
      const priv = await exec('b', ['cat', '/a-private']);
      expect(priv.code).not.toBe(0);
      expect(priv.err).toMatch(/No such file/);
      // The pod's /dev/shm is one tmpfs in the guest, not a copy per container.
      expect(await exec('b', ['cat', '/dev/shm/z'])).toMatchObject({ code: 0, out: 'in-shm\n' });
      expect((await exec('b', ['sh', '-c', 'grep " /dev/shm " /proc/mounts'])).out).toMatch(/^\S+ \/dev\/shm tmpfs /);
      // CRI's file bind mounts reach the containers through the 9p share.
      expect((await exec('b', ['cat', '/etc/resolv.conf'])).out).toBe(fs.readFileSync('/etc/resolv.conf', 'utf8'));
      expect((await exec('b', ['cat', '/etc/hosts'])).out).toBe(fs.readFileSync('/etc/hosts', 'utf8'));

      // Both run on the guest's kernel, not the host's.
      for (const c of ['a', 'b']) {
        const u = await exec(c, ['uname', '-r']);
        expect(u.out.trim(), `${c}: ${u.err}`).toBe(env.image.manifest.kernel.release);
        expect(u.out.trim()).not.toBe(os.release());
      }

      // A container asking for the pod's PID namespace (sandbox_pidns) sees the pause process; A does not.
      await createAndStart('c', ['sleep', '100000'], { pid: POD });
      const ps = await exec('c', ['ps', '-o', 'pid,args']);
      expect(ps.out, logs()).toMatch(/^\s*1\s+\/pause\s*$/m);
      expect((await exec('a', ['ps', '-o', 'pid,args'])).out).not.toMatch(/\/pause/);
      // Removing a container that is not the sandbox leaves the pod's VM alone.
      await cri.runtime.StopContainer({ container_id: ids['c'], timeout: 0 }, { timeoutMs: 120_000 });
      await cri.runtime.RemoveContainer({ container_id: ids['c'] });
      expect(qemuProcs()).toEqual(vm);
      expect(await exec('a', ['echo', 'alive'])).toMatchObject({ code: 0, out: 'alive\n' });
      console.log(`katats CRI pod (containerd ${cd.binaries.version}, hypervisor ${hypervisor}, ${opts.factory ? 'VM cloned from a template' : 'VM booted cold'}) on ${env.accel}: RunPodSandbox ${(podMs / 1000).toFixed(1)} s (VM boot included), first container create+start ${(aMs / 1000).toFixed(1)} s`);
    }, 900_000);

    it('refuses bad containers with clear errors and the pod keeps working', async () => {
      const vm = qemuProcs();
      const missing = await cri.runtime
        .CreateContainer({ pod_sandbox_id: podId, sandbox_config: podConfig, config: containerConfig('no-image', ['true'], { image: 'katats.local/nonexistent:1' }) })
        .then(() => undefined, (e: unknown) => e);
      expect(missing).toBeInstanceOf(CriError);
      expect((missing as CriError).message).toMatch(/katats\.local\/nonexistent:1.*not found/);

      // This one reaches the shim and the agent: crun cannot find the executable in the guest.
      let err: unknown;
      try {
        await createAndStart('no-exec', ['/no/such/binary']);
      } catch (e) {
        err = e;
      }
      expect(err, logs()).toBeInstanceOf(CriError);
      expect((err as CriError).message).toMatch(/\/no\/such\/binary/);
      console.log(`refused: ${(missing as Error).message}\nrefused: ${(err as Error).message}`);
      if (ids['no-exec']) await cri.runtime.RemoveContainer({ container_id: ids['no-exec'] });
      const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
      expect(containers.map((c) => c.metadata?.name).sort()).toEqual(['a', 'b']);

      expect(await exec('a', ['echo', 'still here'])).toMatchObject({ code: 0, out: 'still here\n' });
      expect(await exec('b', ['cat', '/shared/x'])).toMatchObject({ code: 0, out: 'from-a\n' });
      expect(qemuProcs()).toEqual(vm);
    }, 600_000);

    it('a container the guest OOM-kills is OOMKilled for CRI, after a TaskOOM naming it', async () => {
      const ev = helpers.startEvents(cd);
      try {
        const config = containerConfig('hog', ['awk', 'BEGIN { s = "x"; while (1) s = s s }']);
        config.linux = { ...config.linux, resources: { memory_limit_in_bytes: 32 << 20 } };
        const { container_id } = await cri.runtime.CreateContainer({ pod_sandbox_id: podId, sandbox_config: podConfig, config }, { timeoutMs: 180_000 });
        ids['hog'] = container_id;
        await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
        const st = await until(() => cri.runtime.ContainerStatus({ container_id }), (r) => r.status?.state === CONTAINER_EXITED, 120_000);
        expect(st.status?.state, logs()).toBe(CONTAINER_EXITED);
        expect(st.status?.exit_code).toBe(137);
        const oomLine = (l: string) => l.includes('/tasks/oom') && l.includes(container_id);
        await until(() => ev.lines.some(oomLine), Boolean, 30_000);
        expect(ev.lines.filter(oomLine).length, ev.lines.join('\n')).toBeGreaterThan(0);
        expect(ev.lines.some((l) => l.includes('/tasks/exit') && l.includes(container_id))).toBe(true);
        // CRI marks the container OOMKilled when the TaskOOM arrives.
        expect((await until(() => cri.runtime.ContainerStatus({ container_id }), (r) => r.status?.reason === 'OOMKilled', 30_000)).status?.reason).toBe('OOMKilled');
        await cri.runtime.RemoveContainer({ container_id });
        delete ids['hog'];
      } finally {
        ev.child.kill();
      }
      expect(await exec('a', ['echo', 'after the OOM'])).toMatchObject({ code: 0, out: 'after the OOM\n' });
    }, 300_000);

    it('the sandbox container ending and being deleted first does not take the other containers down', async () => {
      const vm = qemuProcs();
      // Kata's rule: the sandbox container's delete powers the VM off only when it is the pod's last.
      await cd.ctrOk(['task', 'kill', '-s', 'SIGKILL', podId], { namespace: CRI_NAMESPACE });
      const st = await until(() => cri.runtime.PodSandboxStatus({ pod_sandbox_id: podId }), (r) => r.status?.state === SANDBOX_NOTREADY);
      expect(st.status?.state, logs()).toBe(SANDBOX_NOTREADY);
      // containerd's CRI deletes the sandbox's task when it sees the exit.
      const tasks = await until(() => cd.ctr(['task', 'ls', '-q'], { namespace: CRI_NAMESPACE }), (r) => !r.stdout.includes(podId), 60_000);
      expect(tasks.stdout.split('\n').filter(Boolean).sort(), logs()).toEqual([ids['a'], ids['b']].sort());
      expect(qemuProcs()).toEqual(vm);
      expect(await exec('a', ['cat', '/shared/y'])).toMatchObject({ code: 0, out: 'from-b\n' });
      expect(await exec('b', ['echo', 'still running'])).toMatchObject({ code: 0, out: 'still running\n' });
    }, 300_000);

    it('StopPodSandbox and RemovePodSandbox leave no QEMU, shim, mount, socket or state behind', async () => {
      const criSandboxDir = path.join(cd.root, 'io.containerd.grpc.v1.cri', 'sandboxes', podId);
      expect(fs.existsSync(criSandboxDir)).toBe(true);
      const t0 = performance.now();
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 180_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 120_000 });
      const stopMs = performance.now() - t0;
      expect((await cri.runtime.ListPodSandbox({})).items).toEqual([]);
      expect((await cri.runtime.ListContainers({})).containers).toEqual([]);
      await until(() => qemuProcs().length + shimProcs().length, (n) => n === 0, 60_000);
      expect(qemuProcs(), logs()).toEqual([]);
      expect(shimProcs()).toEqual([]);
      // katats-chv and its front under clh, virtiofsd with a virtio-fs share: gone with the VM.
      await until(() => helpers.vmmHelperProcs(env.stateDir).length, (n) => n === 0, 30_000);
      expect(helpers.vmmHelperProcs(env.stateDir)).toEqual([]);
      expect(mountsUnder(env.stateDir)).toEqual([]);
      expect(mountsUnder(cd.dir)).toEqual([]);
      const ls = (d: string) => (fs.existsSync(d) ? fs.readdirSync(d) : []);
      const left = path.join(env.stateDir, 'sandboxes');
      expect(ls(left), `${ls(left).flatMap((d) => ls(path.join(left, d)).map((f) => `${d}/${f}`)).join(' ')}\n${logs()}`).toEqual([]);
      expect(ls(path.join(env.stateDir, 's'))).toEqual([]);
      expect(fs.existsSync(criSandboxDir)).toBe(false);
      // The pod's files in the shared host dir outlive it, as a volume's should.
      expect(ls(shared.dir).sort()).toEqual(['x', 'y']);
      console.log(`katats CRI pod stop+remove ${(stopMs / 1000).toFixed(1)} s`);
    }, 600_000);
  });

  describe.runIf(opts.harnessCase ?? true)('the harness', () => {
    it('stop() takes down a katats pod left running: through CRI, nothing killed, nothing left', async () => {
      const other = await startContainerd({ cri: true, flavor: FLAVOR, runtimes: [env.runtime] });
      let report: Awaited<ReturnType<Containerd['stop']>> | undefined;
      try {
        const { pod_sandbox_id } = await other
          .criApi()
          .runtime.RunPodSandbox({ config: { ...podConfig, metadata: { name: 'left-running', uid: 'left', namespace: 'default' } }, runtime_handler: 'katats' }, { timeoutMs: 300_000 });
        expect(helpers.qemuProcs(env.stateDir, pod_sandbox_id).length).toBe(1);
        expectBootPath(pod_sandbox_id);
        report = await other.stop();
        expect(report.podsRemoved).toEqual([pod_sandbox_id]);
      } finally {
        report ??= await other.stop();
      }
      expect(report.killed).toEqual([]);
      expect(report.unmounted).toEqual([]);
      await until(() => qemuProcs().length, (n) => n === 0, 30_000);
      expect(qemuProcs()).toEqual([]);
      expect(mountsUnder(env.stateDir)).toEqual([]);
      expect(fs.existsSync(other.dir)).toBe(false);
    }, 600_000);
  });

  return {
    get env() {
      return env;
    },
    get cd() {
      return cd;
    },
    get image() {
      return image;
    },
    get podId() {
      return podId;
    },
    get snapshotter() {
      return sn;
    },
  };
}
