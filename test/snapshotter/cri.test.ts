// The snapshotter under CRI (trixie's containerd 1.7): a runtime handler `runc-tardev` selects the
// tardev snapshotter for its pods, so the pause container and a container of the three-layer image
// run with runc on the mounts the snapshotter returns. CRI also mounts the container's snapshot on
// the host itself, to look `run_as_username` up in the image's /etc/passwd: that temporary mount
// goes through containerd's mount code with the descriptive mounts in the list.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, RUNC_V2, startContainerd, type Containerd } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { layeredImage, LAYERED_EXPECT, LAYERED_INDEX } from '../../harness/images/layered.js';
import { PAUSE_IMAGE } from '../../harness/images/pause.js';
import { SnapshotterProcess } from '../../harness/snapshotter.js';
import { runtime } from '../../proto/gen/types.js';
import { buildHostBinaries } from '../../scripts/build.js';

const { NODE, CONTAINER, POD } = runtime.v1.NamespaceMode;
let cd: Containerd;
let sn: SnapshotterProcess;
let cri: CriClient;
let image: string;

beforeAll(async () => {
  const { binDir } = await buildHostBinaries(() => {});
  const img = await layeredImage();
  image = img.name;
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  cd = await startContainerd({
    flavor: 'trixie',
    cri: true,
    runtimes: [{ name: 'runc-tardev', runtimeType: RUNC_V2, snapshotter: 'tardev' }],
    proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }],
    disableSnapshotAnnotations: false,
  });
  await sn.start(30_000, cd.address);
  await cd.ctrOk(['images', 'import', '--snapshotter', 'tardev', '--index-name', LAYERED_INDEX, img.archive], { namespace: CRI_NAMESPACE, timeoutMs: 300_000 });
  cri = cd.criApi();
  await cri.waitForImage(image);
}, 600_000);

afterAll(async () => {
  const report = await cd?.stop();
  const left = await sn?.stop();
  expect(report?.podsRemoved ?? []).toEqual([]);
  expect(left ?? []).toEqual([]);
}, 300_000);

describe('the tardev snapshotter under CRI (containerd 1.7, runc)', () => {
  it("a pod's containers run on tardev snapshots; run_as_username is looked up through CRI's host mount", async () => {
    const podConfig = {
      metadata: { name: 'tardev-pod', uid: `uid-${process.pid}`, namespace: 'default' },
      linux: { security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
    };
    const { pod_sandbox_id } = await cri.runtime.RunPodSandbox({ config: podConfig, runtime_handler: 'runc-tardev' }, { timeoutMs: 300_000 });
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
    } finally {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id }, { timeoutMs: 120_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id }, { timeoutMs: 120_000 });
    }
    // containerd removes a deleted container's snapshot from the snapshotter when it collects
    // garbage; removing the image with --sync collects now. Then no layer is mounted any more.
    await cd.ctrOk(['images', 'rm', '--sync', image, LAYERED_INDEX], { namespace: CRI_NAMESPACE });
    expect(sn.leftoverMounts()).toEqual([]);
  });
});
