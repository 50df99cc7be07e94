// The snapshotter under CRI (trixie's containerd 1.7): a runtime handler `runc-tardev` selects the
// tardev snapshotter for its pods, so the pause container and a container of the three-layer image
// run with runc on the mounts the snapshotter returns. CRI also mounts the container's snapshot on
// the host itself, to look `run_as_username` up in the image's /etc/passwd: that temporary mount
// goes through containerd's mount code with the descriptive mounts in the list. A second handler,
// `katats-tardev`, runs the same pod in a katats VM (QEMU, TCG unless KVM was proven): each
// container's rootfs comes as its layer files hot-plugged and opened through dm-verity, while CRI's
// own files (/etc/hosts, resolv.conf) still come over the shared directory. A third handler,
// `katats-tardev-none`, runs two pods of the image with shared_fs = none (cri-no-share.ts).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, RUNC_V2, startContainerd, type Containerd } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { layeredImage, LAYERED_EXPECT, LAYERED_INDEX } from '../../harness/images/layered.js';
import { PAUSE_IMAGE } from '../../harness/images/pause.js';
import { SnapshotterProcess, untilContainerdReaches, importIntoSnapshotter } from '../../harness/snapshotter.js';
import { runtime } from '../../proto/gen/types.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { katatsEnv, type KatatsEnv } from '../shim/katats-env.js';
import * as helpers from '../shim/shim-helpers.js';
import { layeredPodsWithoutSharedFs, noShareRuntime } from './cri-no-share.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { logTailsOnFailure } from '../support/failure-logs.js';

const failures = logTailsOnFailure();

const { NODE, CONTAINER, POD } = runtime.v1.NamespaceMode;
let cd: Containerd;
let sn: SnapshotterProcess;
let cri: CriClient;
let image: string;
let env: KatatsEnv;
let layerFiles: string[];

beforeAll(async () => {
  const { binDir } = await buildHostBinaries(() => {});
  const img = await layeredImage();
  image = img.name;
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  env = await katatsEnv();
  cd = await startContainerd({
    flavor: 'trixie',
    cri: true,
    runtimes: [
      { name: 'runc-tardev', runtimeType: RUNC_V2, snapshotter: 'tardev' },
      { ...env.runtime, name: 'katats-tardev', snapshotter: 'tardev' },
      noShareRuntime(env),
    ],
    proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }],
    disableSnapshotAnnotations: false,
  });
  await sn.start(30_000, cd.address);
  await untilContainerdReaches(cd, 'tardev');
  await importIntoSnapshotter(cd, ['--snapshotter', 'tardev', '--index-name', LAYERED_INDEX, img.archive], { namespace: CRI_NAMESPACE, timeoutMs: 300_000, snapshotter: sn });
  cri = cd.criApi();
  await cri.waitForImage(image);
  let chain = '';
  layerFiles = img.diffIds.map((d) => path.join(sn.root, 'layers', layerName((chain = chainIdOf(chain, d)))));
}, 600_000);

afterAll(async () => {
  failures.print({ containerd: cd?.logFile, snapshotter: sn?.logFile });
  // Before containerd: its stop would kill the snapshotter, which names it on its command line.
  const left = await sn?.stop();
  const report = await helpers.endKatatsSuite(cd, env);
  expect(report?.podsRemoved ?? []).toEqual([]);
  expect(left ?? []).toEqual([]);
}, 300_000);

/** A pod of the handler with two containers of the layered image; returns the pod's and containers' ids. */
async function tardevPod(handler: string): Promise<string[]> {
  const podConfig = {
    metadata: { name: `${handler}-pod`, uid: `uid-${handler}-${process.pid}`, namespace: 'default' },
    linux: { security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id } = await cri.runtime.RunPodSandbox({ config: podConfig, runtime_handler: handler }, { timeoutMs: 300_000 });
  try {
    const create = async (name: string, user?: string) => {
      const { container_id } = await cri.runtime.CreateContainer(
        {
          pod_sandbox_id,
          sandbox_config: podConfig,
          config: {
            metadata: { name },
            image: { image },
            command: ['sleep', '100000'],
            linux: { security_context: { ...(user ? { run_as_username: user } : {}), namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
          },
        },
        { timeoutMs: 180_000 },
      );
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
      return container_id;
    };
    const run = async (id: string, cmd: string) => {
      const r = await cri.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', cmd], timeout: 60 }, { timeoutMs: 90_000 });
      return Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString();
    };
    const container_id = await create('layered');
    for (const [f, text] of Object.entries(LAYERED_EXPECT.files)) expect(await run(container_id, `cat ${f}`)).toBe(text);
    for (const f of LAYERED_EXPECT.absent) expect(await run(container_id, `test -e ${f} && echo PRESENT || echo absent`)).toBe('absent\n');
    // CRI resolves the user name in the image's /etc/passwd through its own host mount.
    const nobody = await create('as-nobody', 'nobody');
    expect(await run(nobody, 'id -u')).toBe('65534\n');
    // The image's modes and owners hold for it: /data/kept is 0640, owned by 1000.
    expect(await run(nobody, 'cat /data/kept')).toMatch(/Permission denied/);
    // Both the pause image and the layered image are tardev snapshots in k8s.io.
    const snaps = (await cd.ctrOk(['snapshots', '--snapshotter', 'tardev', 'ls'], { namespace: CRI_NAMESPACE })).stdout;
    expect(snaps).toMatch(new RegExp(`^${container_id}\\s+sha256:[0-9a-f]{64}\\s+Active`, 'm'));
    expect(snaps).toMatch(new RegExp(`^${pod_sandbox_id}\\s+sha256:[0-9a-f]{64}\\s+Active`, 'm'));
    expect((await cri.image.ImageStatus({ image: { image: PAUSE_IMAGE } })).image).toBeTruthy();
    return [pod_sandbox_id, container_id, nobody];
  } finally {
    await cri.runtime.StopPodSandbox({ pod_sandbox_id }, { timeoutMs: 120_000 });
    await cri.runtime.RemovePodSandbox({ pod_sandbox_id }, { timeoutMs: 120_000 });
  }
}

describe('the tardev snapshotter under CRI (containerd 1.7)', () => {
  it("runc: a pod's containers run on tardev snapshots; run_as_username is looked up through CRI's host mount", async () => {
    await tardevPod('runc-tardev');
  });

  it('katats: the same pod in a VM, every rootfs (pause included) from its layer files opened through dm-verity in the guest', async () => {
    const [podId, ...containers] = await tardevPod('katats-tardev');
    const agentLog = fs.readFileSync(path.join(env.logDir, `${podId}-agent.log`), 'utf8');
    const shimLog = fs.readFileSync(path.join(env.logDir, `${podId}.log`), 'utf8');
    expect(agentLog.match(/rootfs assembled from verified layers/g)?.length, helpers.logsOf(env.logDir, podId!)).toBe(3);
    for (const id of [podId!, ...containers]) expect(shimLog).toMatch(new RegExp(`"container":"${id}".*rootfs as verified layers`));
    // The layered image's three layers and the pause image's one, each opened once in the pod.
    expect(agentLog.match(/layer verified through dm-verity/g)?.length).toBe(4);
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
  }, 600_000);

  it('katats with shared_fs = none: two pods of the image, nothing shared with the host, CRI\'s files copied in, the layer files shared', async () => {
    await layeredPodsWithoutSharedFs({ cd, cri, env, image, layerFiles }, ['none-a', 'none-b']);
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
  }, 900_000);

  it('removing the image leaves no layer mounted', async () => {
    // containerd removes a deleted container's snapshot from the snapshotter when it collects
    // garbage; removing the image with --sync collects now. Then no layer is mounted any more.
    await cd.ctrOk(['images', 'rm', '--sync', image, LAYERED_INDEX], { namespace: CRI_NAMESPACE });
    expect(sn.leftoverMounts()).toEqual([]);
  });
});
