// The snapshotter with containerd 1.7 (trixie's) and 2.1 (sid's), whose `ctr` unpacks differently
// from 1.6 (2.x through its transfer service, with the unpacker's snapshot.ref label): import the
// three-layer image with --snapshotter tardev, run it with runc on the mounts the snapshotter
// returns (each version's own mount code), remove it. containerd.test.ts covers 1.6 in depth. With
// 2.1, CRI too: its runtime handler selects the snapshotter, and pods of the image run in katats
// with shared_fs = none (cri-no-share.ts; cri.test.ts does the same with 1.7 and two pods, which
// share the layer files), the pause image unpacked into the snapshotter by CRI itself on the first pod.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor } from '../../harness/containerd.js';
import { layeredImage, LAYERED_EXPECT, LAYERED_INDEX, type LayeredImage } from '../../harness/images/layered.js';
import { importIntoSnapshotter, SnapshotterProcess, untilContainerdReaches } from '../../harness/snapshotter.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { katatsEnv, type KatatsEnv } from '../shim/katats-env.js';
import * as helpers from '../shim/shim-helpers.js';
import { layeredPodsWithoutSharedFs, noShareRuntime } from './cri-no-share.js';
import { logTailsOnFailure } from '../support/failure-logs.js';

const failures = logTailsOnFailure();

let katats: string;
let img: LayeredImage;

beforeAll(async () => {
  katats = path.join((await buildHostBinaries(() => {})).binDir, 'katats');
  img = await layeredImage();
}, 300_000);

for (const flavor of ['trixie', 'sid'] as ContainerdFlavor[]) {
  describe(`the tardev snapshotter with ${flavor}'s containerd`, () => {
    let cd: Containerd;
    let sn: SnapshotterProcess;
    // CRI with katats pods on 2.1 only: 1.7's are in cri.test.ts.
    const withCri = flavor === 'sid';
    let env: KatatsEnv | undefined;

    beforeAll(async () => {
      sn = SnapshotterProcess.prepare({ katats });
      env = withCri ? await katatsEnv() : undefined;
      cd = await startContainerd({
        flavor,
        proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }],
        ...(env ? { cri: true, runtimes: [noShareRuntime(env)], disableSnapshotAnnotations: false } : {}),
      });
      await sn.start(30_000, cd.address);
      await untilContainerdReaches(cd, 'tardev');
    }, 600_000);

    afterAll(async () => {
      failures.print({ containerd: cd?.logFile, snapshotter: sn?.logFile });
      // The snapshotter first: containerd's stop would kill it, as it names containerd on its command line.
      const crashed = sn?.unexpectedExit;
      const left = await sn?.stop();
      const report = env ? await helpers.endKatatsSuite(cd, env) : await cd?.stop();
      expect(report?.unmounted ?? []).toEqual([]);
      expect(left ?? []).toEqual([]);
      expect(crashed).toBeUndefined();
    }, 300_000);

    it('imports into one layer file per chain id, runs with runc on its mounts, and removes them with the image', async () => {
      await importIntoSnapshotter(cd, ['--snapshotter', 'tardev', '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000, snapshotter: sn });
      let chain = '';
      const names = img.diffIds.map((d) => layerName((chain = chainIdOf(chain, d))));
      expect(fs.readdirSync(path.join(sn.root, 'layers')).filter((f) => !f.endsWith('.json')).sort()).toEqual(names.sort());
      const script = [...Object.keys(LAYERED_EXPECT.files).map((f) => `cat ${f}`), ...LAYERED_EXPECT.absent.map((f) => `test -e ${f} && echo PRESENT ${f}`), 'true'].join('; ');
      const r = await cd.ctrOk(['run', '--rm', '--snapshotter', 'tardev', ...cd.runtimeArgs('runc'), img.name, 'layered', 'sh', '-c', script]);
      for (const text of Object.values(LAYERED_EXPECT.files)) expect(r.stdout).toContain(text);
      expect(r.stdout).not.toMatch(/PRESENT/);
      await cd.ctrOk(['images', 'rm', '--sync', img.name, LAYERED_INDEX]);
      expect(fs.readdirSync(path.join(sn.root, 'layers'))).toEqual([]);
      expect(sn.leftoverMounts()).toEqual([]);
    });

    it.runIf(withCri)('CRI: a katats pod of the image with shared_fs = none, CRI\'s files copied in, its VM on the host\'s layer files', async () => {
      await importIntoSnapshotter(cd, ['--snapshotter', 'tardev', '--index-name', LAYERED_INDEX, img.archive], { namespace: CRI_NAMESPACE, timeoutMs: 300_000, snapshotter: sn });
      const cri = cd.criApi();
      await cri.waitForImage(img.name);
      let chain = '';
      const layerFiles = img.diffIds.map((d) => path.join(sn.root, 'layers', layerName((chain = chainIdOf(chain, d)))));
      await layeredPodsWithoutSharedFs({ cd, cri, env: env!, image: img.name, layerFiles }, ['sid-a']);
      expect(helpers.qemuProcs(env!.stateDir)).toEqual([]);
      await cd.ctrOk(['images', 'rm', '--sync', img.name, LAYERED_INDEX], { namespace: CRI_NAMESPACE });
    }, 900_000);
  });
}
