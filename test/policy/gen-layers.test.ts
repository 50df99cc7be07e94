// `katats policy gen --snapshotter tardev`: the policy pins each container's verified layers, with
// root hashes computed from the image archives alone, and its rules check the layer storages
// exactly. The requests decided are the captured CRI pod (fixtures/gen/cri-bookworm.json) as the
// shim sends it on verified layers: the rootfs in the guest and the storages PodLayers builds
// (shim/layer-disks.ts) from the layer files the snapshotter's own builder makes of the same
// blobs, described by the snapshotter's mounts. The app container runs the three-layer image.
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxImage, type BusyboxImage } from '../../harness/images/busybox.js';
import { layeredImage, type LayeredImage } from '../../harness/images/layered.js';
import { pauseImage, type PauseImage } from '../../harness/images/pause.js';
import { generate, type PodPolicy } from '../../policy/gen/generate.js';
import { ImageResolver, LayerCache, OciArchive } from '../../policy/gen/image.js';
import { DEFAULT_SETTINGS } from '../../policy/gen/settings.js';
import { indexTarFile } from '../../policy/gen/tar.js';
import { describeLayers, parseLayerMounts } from '../../proto/layer-mounts.js';
import type { grpc } from '../../proto/gen/types.js';
import { guestRootfs, PodLayers } from '../../shim/layer-disks.js';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { tempDir } from '../support/tmp.js';
import { agentInput, Decider, type Req } from './decider.js';

const FIX = path.join(import.meta.dirname, 'fixtures', 'gen');
const CAPTURED = (JSON.parse(fs.readFileSync(path.join(FIX, 'cri-bookworm.json'), 'utf8')) as { requests: Req[] }).requests;
const TARDEV = { ...DEFAULT_SETTINGS, cluster_config: { ...DEFAULT_SETTINGS.cluster_config, snapshotter: 'tardev' } };

let busybox: BusyboxImage;
let pause: PauseImage;
let layered: LayeredImage;
let tmp: { dir: string; cleanup: () => void };
/** The pod: the app container on the three-layer image. */
let yaml: string;
let policy: PodPolicy;
/** The captured pod's requests as the shim sends them on verified layers. */
let requests: Req[];
/** Layer files built by the snapshotter's builder: root hash per layer name. */
const built = new Map<string, string>();

const containerName = (r: Req) => (r.OCI as { Annotations: Record<string, string> } | undefined)?.Annotations['io.kubernetes.cri.container-name'] ?? '';

/** The image config's diff_ids, read from the archive. */
function diffIdsOf(archive: string, configDigest: string): string[] {
  const e = indexTarFile(archive).get(`blobs/sha256/${configDigest.slice('sha256:'.length)}`)!;
  const b = Buffer.alloc(e.size);
  const fd = fs.openSync(archive, 'r');
  try {
    fs.readSync(fd, b, 0, e.size, e.offset);
  } finally {
    fs.closeSync(fd);
  }
  return (JSON.parse(b.toString('utf8')) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
}

/** The archive's layers as the snapshotter keeps them: files named by chain id in `dir`, topmost first. */
async function snapshotterLayers(archive: string, blobs: { digest: string }[], diffIds: string[], dir: string) {
  const entries = indexTarFile(archive);
  let chain = '';
  const out: { name: string; rootHash: string }[] = [];
  for (let i = 0; i < blobs.length; i++) {
    chain = chainIdOf(chain, diffIds[i]!);
    const name = layerName(chain);
    const e = entries.get(`blobs/sha256/${blobs[i]!.digest.slice('sha256:'.length)}`)!;
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) {
      const f = await buildLayerFile(fs.createReadStream(archive, { start: e.offset, end: e.offset + e.size - 1 }), file);
      built.set(name, f.rootHash);
    }
    out.push({ name, rootHash: built.get(name)! });
  }
  return out.reverse();
}

beforeAll(async () => {
  tmp = tempDir('kt-policy-layers-');
  busybox = await busyboxImage();
  pause = await pauseImage();
  layered = await layeredImage();
  yaml = fs.readFileSync(path.join(FIX, 'pod.yaml'), 'utf8').replace(/(- name: app\n\s+image: )katats\.local\/busybox:latest/, `$1${layered.name}`);
  expect(yaml).toContain(`image: ${layered.name}`);
  const images = new ImageResolver([busybox.archive, pause.archive, layered.archive].map((f) => new OciArchive(f)), new LayerCache());
  policy = (await generate(yaml, { images, settings: TARDEV })).pods[0]!;

  // What the shim sends: PodLayers over the snapshotter's mounts, disks "attached" at PCI paths.
  const layersDir = path.join(tmp.dir, 'layers');
  fs.mkdirSync(layersDir);
  const bb = await snapshotterLayers(busybox.archive, [busybox.layer], [busybox.diffId], layersDir);
  const lay = await snapshotterLayers(layered.archive, layered.layers, layered.diffIds, layersDir);
  const pa = await snapshotterLayers(pause.archive, [pause.layer], diffIdsOf(pause.archive, pause.config.digest), layersDir);
  let slot = 2;
  const pod = new PodLayers({ attachReadonly: () => Promise.resolve(`${(slot++).toString(16).padStart(2, '0')}/00`), detach: () => Promise.resolve() }, pino({ level: 'silent' }));
  const emptyDir = path.join(tmp.dir, 'empty');
  requests = [];
  for (const r of CAPTURED) {
    if (r.kind !== 'CreateContainerRequest') {
      requests.push(r);
      continue;
    }
    const t = structuredClone(r);
    const cid = String(t.container_id);
    const layers = { '': pa, app: lay, sidecar: bb }[containerName(t)]!;
    const mounts = parseLayerMounts(describeLayers(layersDir, emptyDir, layers, true))!;
    t.storages = (await pod.storagesFor(cid, mounts)) as unknown as grpc.Storage[];
    (t.OCI as { Root: { Path: string } }).Root.Path = guestRootfs(cid);
    requests.push(t);
  }
}, 600_000);

afterAll(() => tmp?.cleanup());

const target = (name: string) => requests.find((r) => r.kind === 'CreateContainerRequest' && containerName(r) === name)!;
type Storage = { driver: string; options: string[]; mount_point: string };
const storages = (r: Req) => r.storages as Storage[];

/** The pod up to (not including) `t`, then `t` changed by `change`. */
function decideChanged(t: Req, change: (r: Req) => void) {
  const d = new Decider(policy.text);
  for (const r of requests) {
    if (r === t) break;
    expect(d.decide(r.kind, agentInput(r)).allowed).toBe(true);
  }
  const changed = structuredClone(t);
  change(changed);
  return d.decide(t.kind, agentInput(changed));
}

describe('a policy for pods on verified layers', () => {
  it('pins per container the root hash, data size and mount point of each layer, topmost first, as the snapshotter builds them', () => {
    const [sandbox, app, sidecar] = policy.data.containers;
    const blk = (c: typeof app) => c!.storages.filter((s) => s.driver === 'blk');
    expect(blk(app).map((s) => s.mount_point.split('/').pop())).toEqual(storages(target('app')).filter((s) => s.driver === 'blk').map((s) => s.mount_point.split('/').pop()));
    expect(blk(app)).toHaveLength(3);
    expect(blk(sidecar)).toHaveLength(1);
    expect(blk(sandbox)).toHaveLength(1);
    // the root hashes policy gen computed from the archives are the snapshotter's, layer by layer
    for (const c of [sandbox, app, sidecar]) {
      for (const s of blk(c)) {
        const name = s.mount_point.split('/').pop()!;
        expect(s.options).toContain(`io.katacontainers.fs-opt.root-hash=${built.get(name)}`);
      }
    }
    expect(app!.image.layers.map((l) => l.root_hash)).toEqual(blk(app).map((s) => /root-hash=([0-9a-f]{64})/.exec(s.options.join(' '))![1]).reverse());
    expect(app!.OCI.Root.Path).toBe('^/run/kata-containers/containers/$(bundle-id)/rootfs$');
    expect(app!.storages.at(-1)!.driver).toBe('overlayfs');
  });

  it('admits the pod as the shim sends it: the pause container and both containers on their layers', () => {
    const d = new Decider(policy.text);
    for (const r of requests) {
      const res = d.decide(r.kind, agentInput(r));
      expect(res.allowed, `${r.kind} ${containerName(r)} ${JSON.stringify(res.why)}`).toBe(true);
    }
  });

  const otherHash = 'ab'.repeat(32);
  it.each<[string, string, (r: Req) => void, RegExp]>([
    [
      'a changed root hash',
      'app',
      (r) => {
        const s = storages(r)[1]!;
        s.options = s.options.map((o) => o.replace(/root-hash=[0-9a-f]{64}/, `root-hash=${otherHash}`));
      },
      new RegExp(`allow_storages: layers_not_pinned == \\[\\] is false \\(layers_not_pinned = \\["${otherHash}"\\]\\)`),
    ],
    ['a missing layer', 'app', (r) => storages(r).splice(1, 1), /allow_storages: layers_count == count\(p_layers\) is false \(layers_count = 2, count\(p_layers\) = 3\)/],
    ['an extra layer (one of the app\'s beneath the sidecar\'s)', 'sidecar', (r) => storages(r).splice(1, 0, structuredClone(storages(target('app'))[1]!)), /allow_storages: layers_count == count\(p_layers\) is false \(layers_count = 2, count\(p_layers\) = 1\)/],
    [
      'two layers swapped',
      'app',
      (r) => {
        const s = storages(r);
        [s[0], s[1]] = [s[1]!, s[0]!];
      },
      /allow_storages: layers_out_of_order == \[\] is false \(layers_out_of_order = \["0:[0-9a-f]{64}", "1:[0-9a-f]{64}"\]\)/,
    ],
    ['a changed mount point', 'app', (r) => (storages(r)[0]!.mount_point = '/run/kata-containers/sandbox/storage/evil'), /allow_storages: storage_mount_points_not_allowed == \[\] is false \(storage_mount_points_not_allowed = \["0:\/run\/kata-containers\/sandbox\/storage\/evil"\]\)/],
    [
      "the overlay's mount point (another container's rootfs)",
      'sidecar',
      (r) => (storages(r).at(-1)!.mount_point = guestRootfs(String(target('app').container_id))),
      /allow_storages: storage_mount_points_not_allowed == \[\] is false \(storage_mount_points_not_allowed = \["1:\/run\/kata-containers\/containers\/[0-9a-f]{64}\/rootfs"\]\)/,
    ],
    [
      'a changed hash offset (the size of the verified data)',
      'app',
      (r) => {
        const s = storages(r)[0]!;
        s.options = s.options.map((o) => o.replace(/hashoffset=\d+/, 'hashoffset=4096'));
      },
      /allow_storages: storages_not_allowed == \[\] is false \(storages_not_allowed = \[\{"driver": "blk"/,
    ],
    [
      'a rootfs shared from the host instead of the layers',
      'app',
      (r) => {
        r.storages = [];
        (r.OCI as { Root: { Path: string } }).Root.Path = `/run/kata-containers/shared/containers/${String(r.container_id)}/rootfs`;
      },
      /allow_root: regex.match\(root_path_regex, i_root.Path\) is false/,
    ],
    ['no layer storages at all', 'sidecar', (r) => (r.storages = []), /allow_storages: layers_count == count\(p_layers\) is false \(layers_count = 0, count\(p_layers\) = 1\)/],
  ])('refuses %s, naming the check', (_what, name, change, why) => {
    const res = decideChanged(target(name), change);
    expect(res.allowed).toBe(false);
    expect(res.why.join('\n')).toMatch(why);
  });

  it('the root hashes are cached by diff_id: a second generation builds no layer', async () => {
    const file = path.join(tmp.dir, 'cache.json');
    const gen = async () => {
      const cache = new LayerCache(file);
      const images = new ImageResolver([busybox.archive, pause.archive, layered.archive].map((f) => new OciArchive(f)), cache);
      const p = (await generate(yaml, { images, settings: TARDEV })).pods[0]!;
      cache.save();
      return { p, built: cache.built.length };
    };
    const first = await gen();
    expect(first.built).toBe(4);
    const second = await gen();
    expect(second.built).toBe(0);
    expect(second.p.text).toBe(first.p.text);
    expect(first.p.text).toBe(policy.text);
  });

  it('refuses to pin a pod whose pause image is not among the inputs, and an unknown snapshotter', async () => {
    const images = new ImageResolver([busybox.archive, layered.archive].map((f) => new OciArchive(f)), new LayerCache());
    await expect(generate(yaml, { images, settings: TARDEV })).rejects.toThrow(/sandbox \(pause\) container: the image is not among the inputs/);
    await expect(generate(yaml, { images, settings: { ...TARDEV, cluster_config: { ...TARDEV.cluster_config, snapshotter: 'tardve' } } })).rejects.toThrow(/cluster_config.snapshotter "tardve"/);
  });
});
