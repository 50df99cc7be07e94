// Verified layers in a real QEMU guest (TCG unless KVM was proven), through bookworm's containerd
// 1.6 and ctr with `--snapshotter tardev` and katats configured with shared_fs = none: nothing of
// the host's filesystem reaches the guest, each layer file is hot-plugged read-only and opened
// through dm-verity with the root hash the snapshotter computed. A three-layer image (whiteouts, an
// opaque dir) runs from its layers; a byte flipped in a layer file on the host makes the create
// fail with the agent's verity error naming the layer while the pod serves the next request; a
// byte flipped under a running container makes the read of that block fail, and nothing else; two
// pods of the image open the same layer files read-only. Through CRI on the same containerd (1.6,
// where CRI's one snapshotter is tardev): a policy `katats policy gen --snapshotter tardev` made
// from the image archives alone runs a pod on its verified layers, and a policy that pins a
// container to another layer's root hash gets that container refused, naming the layer check.
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../../harness/containerd.js';
import { CriError } from '../../harness/cri.js';
import { busyboxImage, type BusyboxImage } from '../../harness/images/busybox.js';
import { pauseImage } from '../../harness/images/pause.js';
import { policyText, type PolicyData } from '../../policy/gen/generate.js';
import { genCommand } from '../../policy/gen/cli.js';
import { runtime } from '../../proto/gen/types.js';
import { Code } from '../../proto/ttrpc/index.js';
import { kubeletPod } from '../support/kubelet.js';
import { RULES } from '../../policy/gen/rules.js';
import { layeredImage, LAYERED_BIG, LAYERED_EXPECT, LAYERED_INDEX, type LayeredImage } from '../../harness/images/layered.js';
import { listProcs } from '../../harness/procs.js';
import { SnapshotterProcess, untilContainerdReaches, importIntoSnapshotter } from '../../harness/snapshotter.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { katatsEnv, type KatatsEnv } from '../shim/katats-env.js';
import * as helpers from '../shim/shim-helpers.js';
import { logTailsOnFailure } from '../support/failure-logs.js';

const failures = logTailsOnFailure();

const POD = 'layerpod';
const CRI_HANDLER = 'katats-cri';
const GROUP = ['--annotation', `io.containerd.runc.v2.group=${POD}`];
const tardev = ['--snapshotter', 'tardev'];
let env: KatatsEnv;
let cd: Containerd;
let sn: SnapshotterProcess;
let img: LayeredImage;
let busybox: string;
let bbImage: BusyboxImage;
let chains: string[];
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, cd.logFile, 30);
const layerFile = (i: number) => path.join(sn.root, 'layers', layerName(chains[i]!));

/** Flips one bit of the layer file in the block holding line `line` of /data/big (layer 2); returns the undo. */
function flipInBig(line: number): () => void {
  const file = layerFile(1);
  const bytes = fs.readFileSync(file);
  const at = bytes.indexOf(Buffer.from(`big-block line ${String(line).padStart(5, '0')}`));
  if (at < 0) throw new Error(`line ${line} of ${LAYERED_BIG.path} not found in ${file}`);
  const fd = fs.openSync(file, 'r+');
  const flip = () => {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x20;
    fs.writeSync(fd, b, 0, 1, at);
    fs.fsyncSync(fd);
  };
  flip();
  return () => {
    flip();
    fs.closeSync(fd);
  };
}

beforeAll(async () => {
  const { binDir } = await buildHostBinaries(() => {});
  env = await katatsEnv({ qemuToml: 'shared_fs = "none"' });
  img = await layeredImage();
  let chain = '';
  chains = img.diffIds.map((d) => (chain = chainIdOf(chain, d)));
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  // CRI pods get kubelet's files (/etc/hosts, volumes) over 9p; their rootfs still comes as layers.
  const shared = path.join(env.dir, 'cri-9p.toml');
  fs.writeFileSync(shared, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "none"', ''));
  cd = await startContainerd({
    cri: true,
    criSnapshotter: 'tardev',
    runtimes: [env.runtime, { ...env.runtime, name: CRI_HANDLER, options: { ConfigPath: shared }, podAnnotations: ['io.katacontainers.*'] }],
    proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }],
  });
  await sn.start(30_000, cd.address);
  await untilContainerdReaches(cd, 'tardev');
  await importIntoSnapshotter(cd, [...tardev, '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000, snapshotter: sn });
  const bb = await busyboxImage();
  await importIntoSnapshotter(cd, [...tardev, '--index-name', 'katats.local/busybox:index', bb.archive], { timeoutMs: 300_000, snapshotter: sn });
  busybox = bb.name;
  bbImage = bb;
  for (const [archive, index] of [[img.archive, LAYERED_INDEX], [bb.archive, 'katats.local/busybox:index']] as const) {
    await importIntoSnapshotter(cd, [...tardev, '--index-name', index, archive], { namespace: CRI_NAMESPACE, timeoutMs: 300_000, snapshotter: sn });
  }
}, 900_000);

afterAll(async () => {
  failures.print({ containerd: cd?.logFile, snapshotter: sn?.logFile });
  for (const id of ['lay1', POD, 'lay-run']) {
    await cd?.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
    await cd?.ctr(['task', 'rm', '-f', id]);
    await cd?.ctr(['container', 'rm', id]);
  }
  await cd?.ctr(['images', 'rm', '--sync', img.name, LAYERED_INDEX, busybox, 'katats.local/busybox:index']);
  // Before containerd: its stop would kill the snapshotter, which names it on its command line.
  const unmounted = await sn?.stop();
  await helpers.endKatatsSuite(cd, env);
  expect(unmounted ?? []).toEqual([]);
}, 300_000);

describe('verified layers in a katats guest (shared_fs = none)', () => {
  it('a three-layer image runs from its layers: files, modes, whiteouts and the opaque dir as in the image, a writable upper', async () => {
    const script = [
      ...Object.keys(LAYERED_EXPECT.files).map((f) => `cat ${f}`),
      ...LAYERED_EXPECT.absent.map((f) => `test -e ${f} && echo PRESENT ${f}`),
      ...Object.keys(LAYERED_EXPECT.modes).map((f) => `stat -c '%n %a %u:%g' ${f}`),
      `md5sum ${LAYERED_BIG.path}`,
      'ls /opq',
      'echo written > /data/new && cat /data/new',
      'true',
    ].join('; ');
    // It stays running: the last case compares its VM's open files with another pod's.
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), img.name, 'lay1', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    const r = await cd.ctr(['task', 'exec', '--exec-id', 'check', 'lay1', 'sh', '-c', script]);
    expect(r.code, `${r.stderr}\n${logsOf('lay1')}`).toBe(0);
    for (const text of Object.values(LAYERED_EXPECT.files)) expect(r.stdout).toContain(text);
    expect(r.stdout).not.toMatch(/PRESENT/);
    for (const [f, m] of Object.entries(LAYERED_EXPECT.modes)) expect(r.stdout).toContain(`${f} ${m}`);
    const { createHash } = await import('node:crypto');
    expect(r.stdout).toContain(`${createHash('md5').update(LAYERED_BIG.content()).digest('hex')}  ${LAYERED_BIG.path}`);
    expect(r.stdout).toMatch(/^new$/m);
    expect(r.stdout).toMatch(/^written$/m);
    // The guest opened each of the three layers through dm-verity and built the rootfs from them.
    const agentLog = fs.readFileSync(path.join(env.logDir, 'lay1-agent.log'), 'utf8');
    expect(agentLog.match(/layer verified through dm-verity/g)?.length, logsOf('lay1')).toBe(3);
    expect(agentLog).toContain('rootfs assembled from verified layers');
    for (const c of chains) expect(agentLog).toContain(layerName(c));
  }, 600_000);

  it('a byte flipped in a layer file: the create fails with the verity error naming the layer, the pod serves the next request', async () => {
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, busybox, POD, 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    // Nothing shared with the host: no 9p or virtio-fs device in the pod's QEMU.
    const qemu = listProcs().filter((p) => helpers.qemuProcs(env.stateDir, POD).includes(p.pid));
    expect(qemu).toHaveLength(1);
    expect(qemu[0]!.cmdline).not.toMatch(/virtio-9p|vhost-user-fs/);
    const undo = flipInBig(1000);
    try {
      const r = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-bad', 'cat', '/etc/motd'], { timeoutMs: 300_000 });
      expect(r.code, logsOf(POD)).not.toBe(0);
      expect(r.stderr, logsOf(POD)).toContain(`layer ${layerName(chains[1]!)}`);
      expect(r.stderr).toMatch(/fails verification/);
      await cd.ctr(['container', 'rm', 'lay-bad']);
    } finally {
      undo();
    }
    // The pod keeps serving: an exec in its running container, a new container in it.
    const ex = await cd.ctr(['task', 'exec', '--exec-id', 'e1', POD, 'echo', 'alive']);
    expect(ex.stdout, logsOf(POD)).toBe('alive\n');
    const next = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-next', 'cat', '/etc/motd'], { timeoutMs: 300_000 });
    expect(next.code, `${next.stderr}\n${logsOf(POD)}`).toBe(0);
    expect(next.stdout).toBe(LAYERED_EXPECT.files['/etc/motd']);
    // Every layer disk the failed and the good create attached is gone again (the busybox pod's own stays).
    const shimLog = fs.readFileSync(path.join(env.logDir, `${POD}.log`), 'utf8');
    const count = (msg: string) => shimLog.split('\n').filter((l) => l.includes(msg)).length;
    expect(count('layer disk attached') - count('layer disk detached'), logsOf(POD)).toBe(1);
  }, 600_000);

  it('a byte flipped under a running container: reading that block fails with an I/O error, the rest of the file and the pod still work', async () => {
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-run', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    const undo = flipInBig(1500);
    try {
      // Line 1500 is at byte 48000: block 11 of the file; line 10 is in block 0.
      const bad = await cd.ctr(['task', 'exec', '--exec-id', 'r1', 'lay-run', 'dd', `if=${LAYERED_BIG.path}`, 'bs=4096', 'skip=11', 'count=1', 'of=/dev/null']);
      expect(bad.code, logsOf(POD)).not.toBe(0);
      expect(bad.stderr).toMatch(/Input\/output error/);
      const good = await cd.ctr(['task', 'exec', '--exec-id', 'r2', 'lay-run', 'dd', `if=${LAYERED_BIG.path}`, 'bs=4096', 'count=1', 'status=none']);
      expect(good.code, good.stderr).toBe(0);
      expect(good.stdout).toContain('big-block line 00010');
    } finally {
      undo();
    }
    const alive = await cd.ctr(['task', 'exec', '--exec-id', 'r3', POD, 'echo', 'alive']);
    expect(alive.stdout).toBe('alive\n');
  }, 600_000);

  it('more layers than hot-plug slots: the create fails naming the setting, and the pod leaves nothing behind', async () => {
    const two = path.join(env.dir, 'two-slots.toml');
    fs.writeFileSync(two, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "none"', 'shared_fs = "none"\npcie_root_port = 2'));
    const r = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), '--runtime-config-path', two, img.name, 'lay-slots', 'true'], { timeoutMs: 300_000 });
    expect(r.code, logsOf('lay-slots')).not.toBe(0);
    expect(r.stderr).toMatch(/no free hotplug slot.*pcie_root_port \(2\)/);
    await cd.ctr(['container', 'rm', 'lay-slots']);
    expect(helpers.qemuProcs(env.stateDir, 'lay-slots')).toEqual([]);
  }, 600_000);

  it('two pods of the image share its layer files: one file per layer on the host, open read-only in each VM', async () => {
    const files = chains.map((_, i) => layerFile(i));
    for (const pod of [POD, 'lay1']) {
      const [qemu] = helpers.qemuProcs(env.stateDir, pod);
      expect(qemu, logsOf(pod)).toBeDefined();
      const open = new Map<string, number>();
      for (const fd of fs.readdirSync(`/proc/${qemu}/fd`)) {
        const target = fs.readlinkSync(`/proc/${qemu}/fd/${fd}`);
        if (files.includes(target)) open.set(target, parseInt(/^flags:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${qemu}/fdinfo/${fd}`, 'utf8'))![1]!, 8));
      }
      expect([...open.keys()].sort(), pod).toEqual([...files].sort());
      for (const flags of open.values()) expect(flags & 3).toBe(fs.constants.O_RDONLY);
    }
  }, 600_000);
});

describe('a generated policy pins the layers, through CRI (containerd 1.6, tardev for every pod)', () => {
  const POD_YAML = path.join(import.meta.dirname, '..', 'policy', 'fixtures', 'gen', 'pod.yaml');
  const POLICY_ANNOTATION = 'io.katacontainers.config.agent.policy';
  type Obj = Record<string, unknown>;
  let manifest: Obj;
  let configs: Obj[];
  let data: PolicyData;

  beforeAll(async () => {
    // The ctr pods above are done with: their VMs would only slow these down.
    for (const id of ['lay1', POD, 'lay-run']) {
      await cd.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
      await cd.ctr(['task', 'rm', '-f', id]);
    }
    const pause = await pauseImage();
    // The fixture pod with its app on the three-layer image; the sidecar stays on busybox.
    const yaml = fs.readFileSync(POD_YAML, 'utf8').replace(/(- name: app\n\s+image: )katats\.local\/busybox:latest/, `$1${img.name}`);
    const yamlFile = path.join(env.dir, 'pod.yaml');
    fs.writeFileSync(yamlFile, yaml);
    const out: string[] = [];
    const err: string[] = [];
    const code = await genCommand([yamlFile, '--snapshotter', 'tardev', '--no-layers-cache', '-i', img.archive, '-i', bbImage.archive, '-i', pause.archive], { out: (s) => out.push(s), err: (s) => err.push(s) });
    expect(code, err.join('\n')).toBe(0);
    const docs = parseAllDocuments(out.join('\n'))
      .map((d) => d.toJS() as Obj | null)
      .filter((d): d is Obj => d !== null);
    manifest = docs.find((d) => d.kind === 'Pod')!;
    configs = docs.filter((d) => d.kind === 'ConfigMap' || d.kind === 'Secret');
    const text = Buffer.from(((manifest.metadata as Obj).annotations as Record<string, string>)[POLICY_ANNOTATION]!, 'base64').toString();
    data = JSON.parse(text.slice(text.indexOf('policy_data := ') + 'policy_data := '.length)) as PolicyData;
  }, 600_000);

  /** Runs the pod of `manifest` with `policy` (base64 text) under CRI; returns its id, containers created, and a cleanup. */
  async function criPod(name: string, policy: string) {
    const m = structuredClone(manifest);
    const meta = m.metadata as Obj;
    meta.name = name;
    meta.annotations = { ...(meta.annotations as Obj), [POLICY_ANNOTATION]: policy };
    const pod = kubeletPod(m, configs, path.join(env.dir, 'kubelet'), randomUUID());
    const cri = cd.criApi();
    const { pod_sandbox_id } = await cri.runtime.RunPodSandbox({ config: pod.sandbox, runtime_handler: CRI_HANDLER }, { timeoutMs: 300_000 });
    const start = async (c: string) => {
      const config = structuredClone(pod.containers.find((x) => x.name === c)!.config);
      const { container_id } = await cri.runtime.CreateContainer({ pod_sandbox_id, sandbox_config: pod.sandbox, config }, { timeoutMs: 180_000 });
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: 300_000 });
      return container_id;
    };
    const stop = async () => {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id }, { timeoutMs: 120_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id }, { timeoutMs: 60_000 });
    };
    return { id: pod_sandbox_id, start, stop, cri };
  }

  it('the generated policy runs the pod: the pause container, the app on three verified layers, the sidecar on one', async () => {
    const pod = await criPod('policy-pod', ((manifest.metadata as Obj).annotations as Record<string, string>)[POLICY_ANNOTATION]!);
    try {
      for (const c of ['app', 'sidecar']) await pod.start(c).catch((e: Error) => Promise.reject(new Error(`${e.message}\n${logsOf(pod.id)}`)));
      const { containers } = await pod.cri.runtime.ListContainers({ filter: { pod_sandbox_id: pod.id } });
      expect(containers.map((c) => [c.metadata?.name, c.state]).sort()).toEqual([
        ['app', runtime.v1.ContainerState.CONTAINER_RUNNING],
        ['sidecar', runtime.v1.ContainerState.CONTAINER_RUNNING],
      ]);
      // Each container's rootfs came from the layers the policy pins (by name; their root hashes the policy checked).
      const agentLog = fs.readFileSync(path.join(env.logDir, `${pod.id}-agent.log`), 'utf8');
      const verified = new Set([...agentLog.matchAll(/"layer":"([0-9a-f]{64})"[^\n]*layer verified through dm-verity/g)].map((m) => m[1]));
      const pinned = new Set(data.containers.flatMap((c) => c.storages.filter((x) => x.driver === 'blk').map((x) => path.basename(x.mount_point))));
      expect([...verified].sort(), logsOf(pod.id)).toEqual([...pinned].sort());
      expect(agentLog.match(/rootfs assembled from verified layers/g)?.length).toBe(3);
    } finally {
      await pod.stop();
    }
  }, 900_000);

  it("a policy pinning the sidecar to another layer's root hash: its create is refused (PERMISSION_DENIED) naming the layer check", async () => {
    const pinned = structuredClone(data);
    const sidecar = pinned.containers.find((c) => c.name === 'sidecar')!;
    const other = /root-hash=([0-9a-f]{64})/.exec(pinned.containers.find((c) => c.name === 'app')!.storages[0]!.options.join(' '))![1]!;
    const own = /root-hash=([0-9a-f]{64})/.exec(sidecar.storages[0]!.options.join(' '))![1]!;
    expect(other).not.toBe(own);
    for (const s of sidecar.storages) s.options = s.options.map((o) => o.replace(`root-hash=${own}`, `root-hash=${other}`));
    // The same pod (the policy pins its name) with another uid.
    const pod = await criPod('policy-pod', Buffer.from(policyText(RULES, pinned)).toString('base64'));
    try {
      const e = await pod.start('sidecar').then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(e, logsOf(pod.id)).toBeInstanceOf(CriError);
      // containerd passes the agent's words on (not its code): the check and the hash it refused.
      const why = `allow_storages: layers_not_pinned == [] is false (layers_not_pinned = ["${own}"])`;
      expect((e as CriError).details).toContain(`CreateContainerRequest is blocked by policy: data.agent_policy.${why}`);
      // The agent answered PERMISSION_DENIED (the shim logs the code containerd does not keep).
      const failed = fs
        .readFileSync(path.join(env.logDir, `${pod.id}.log`), 'utf8')
        .split('\n')
        .filter((l) => l.includes('"create failed"'))
        .map((l) => (JSON.parse(l) as { err: { code: number; message: string } }).err);
      expect(failed, logsOf(pod.id)).toHaveLength(1);
      expect(failed[0]!.code).toBe(Code.PermissionDenied);
      expect(failed[0]!.message).toContain(why);
      // The pod goes on: the app starts.
      await pod.start('app');
    } finally {
      await pod.stop();
    }
  }, 900_000);
});
