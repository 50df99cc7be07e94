// The snapshotter registered in a real containerd (bookworm's 1.6) as the proxy plugin `tardev`,
// running as its own process: `ctr images import --snapshotter tardev` unpacks a three-layer image
// (whiteouts, an opaque directory) into one layer file per chain id, byte-identical to what the
// layer builder makes from each tar; `ctr run --snapshotter tardev` with runc runs on the mounts it
// returns (containerd's own mount code); a kill -9 and restart of the snapshotter under a running
// container; a second namespace reusing the layer files; containerd's error codes for bad
// requests, a corrupt blob in the content store refused with nothing half-built; and the image's
// removal taking the layer files and host mounts with it. One containerd for all of it.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd, removeNamespaceCgroups } from '../../harness/containerd.js';
import { buildOciImage } from '../../harness/images/oci.js';
import { writeTar } from '../../harness/images/tar.js';
import { layeredImage, LAYERED_EXPECT, LAYERED_INDEX, type LayeredImage } from '../../harness/images/layered.js';
import { importIntoSnapshotter, SnapshotterProcess, untilContainerdReaches } from '../../harness/snapshotter.js';
import { SnapshotsCallError, SnapshotsClient } from '../../harness/snapshots.js';
import { ROOT_HASH_LABEL } from '../../proto/layer-mounts.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { sleep } from '../../sys/timeout.js';
import { tempDir } from '../support/tmp.js';
import { logTailsOnFailure } from '../support/failure-logs.js';

const failures = logTailsOnFailure();

const tmp = tempDir('katats-sn-ctrd-');
let cd: Containerd;
let sn: SnapshotterProcess;
let img: LayeredImage;
let chains: string[];

beforeAll(async () => {
  const { binDir } = await buildHostBinaries(() => {});
  img = await layeredImage();
  let chain = '';
  chains = img.diffIds.map((d) => (chain = chainIdOf(chain, d)));
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  cd = await startContainerd({ proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }] });
  await sn.start(30_000, cd.address);
  await untilContainerdReaches(cd, 'tardev');
}, 300_000);

afterAll(async () => {
  failures.print({ containerd: cd?.logFile, snapshotter: sn?.logFile });
  const report = await cd?.stop({ keepLogsIn: undefined });
  const unmounted = await sn?.stop();
  tmp.cleanup();
  expect(report?.unmounted ?? []).toEqual([]);
  expect(unmounted ?? []).toEqual([]);
}, 120_000);

const tardev = ['--snapshotter', 'tardev'];
const builtLines = () => fs.readFileSync(sn.logFile, 'utf8').split('\n').filter((l) => l.includes('built a layer file'));

describe('the tardev snapshotter in containerd 1.6', () => {
  it('ctr images import unpacks each layer into one layer file, the same bytes the builder makes from its tar', async () => {
    expect((await cd.ctrOk(['plugins', 'ls'])).stdout).toMatch(/io\.containerd\.snapshotter\.v1\s+tardev\s+.*ok/);
    await importIntoSnapshotter(cd, [...tardev, '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000, snapshotter: sn });
    const snaps = await cd.ctrOk(['snapshots', ...tardev, 'ls']);
    for (const c of chains) expect(snaps.stdout).toMatch(new RegExp(`${c}\\s.*Committed`));
    const files = fs.readdirSync(path.join(sn.root, 'layers')).filter((f) => !f.endsWith('.json'));
    expect(files.sort()).toEqual(chains.map(layerName).sort());
    for (const [i, tar] of img.layerTars.entries()) {
      const mine = await buildLayerFile(fs.createReadStream(tar), path.join(tmp.dir, `l${i}`));
      expect(fs.readFileSync(path.join(sn.root, 'layers', layerName(chains[i]!))).equals(fs.readFileSync(path.join(tmp.dir, `l${i}`)))).toBe(true);
      const info = await cd.ctrOk(['snapshots', ...tardev, 'info', chains[i]!]);
      expect(JSON.parse(info.stdout).Labels?.[ROOT_HASH_LABEL]).toBe(mine.rootHash);
    }
    expect(builtLines()).toHaveLength(3);
  });

  it('ctr run --snapshotter tardev (runc) sees the files, modes and deletions of the image through the host mounts', async () => {
    const script = [
      ...Object.keys(LAYERED_EXPECT.files).map((f) => `cat ${f}`),
      ...LAYERED_EXPECT.absent.map((f) => `test -e ${f} && echo PRESENT ${f}`),
      ...Object.keys(LAYERED_EXPECT.modes).map((f) => `stat -c '%n %a %u:%g' ${f}`),
      'ls /opq',
      'echo written > /data/new && cat /data/new',
      'true',
    ].join('; ');
    const r = await cd.ctrOk(['run', '--rm', ...tardev, ...cd.runtimeArgs('runc'), img.name, 'layered-1', 'sh', '-c', script]);
    for (const text of Object.values(LAYERED_EXPECT.files)) expect(r.stdout).toContain(text);
    expect(r.stdout).not.toMatch(/PRESENT/);
    for (const [f, m] of Object.entries(LAYERED_EXPECT.modes)) expect(r.stdout).toContain(`${f} ${m}`);
    expect(r.stdout).toMatch(/^new$/m);
    expect(r.stdout).toMatch(/^written$/m);
  });

  it('killed with SIGKILL and started again while a container runs: the container keeps working, new ones start', async () => {
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('runc'), img.name, 'layered-long', 'sleep', '1000']);
    try {
      // What a failed import reports about the snapshotter (importIntoSnapshotter), alive and killed.
      expect(await sn.probe()).toMatch(/^pid \d+ running; socket inode \d+ \(the one it answered on at start\); connect ok in \d+ ms; gRPC stat answered in \d+ ms$/);
      await sn.kill9();
      expect(await sn.probe()).toMatch(/^pid \d+ gone; socket inode \d+ \(the one it answered on at start\); connect: ECONNREFUSED; gRPC stat failed: /);
      const during = await cd.ctr(['task', 'exec', '--exec-id', 'e1', 'layered-long', 'cat', '/data/kept']);
      expect(during.stdout).toBe(LAYERED_EXPECT.files['/data/kept']);
      expect((await cd.ctr(['snapshots', ...tardev, 'ls'], { timeoutMs: 30_000 })).code).not.toBe(0);
      await sn.start(30_000, cd.address);
      await untilContainerdReaches(cd, 'tardev');
      const after = await cd.ctrOk(['task', 'exec', '--exec-id', 'e2', 'layered-long', 'cat', '/opq/new']);
      expect(after.stdout).toBe(LAYERED_EXPECT.files['/opq/new']);
      const fresh = await cd.ctrOk(['run', '--rm', ...tardev, ...cd.runtimeArgs('runc'), img.name, 'layered-2', 'cat', '/etc/motd']);
      expect(fresh.stdout).toBe(LAYERED_EXPECT.files['/etc/motd']);
    } finally {
      await cd.ctr(['task', 'kill', '-s', 'KILL', 'layered-long']);
      await cd.ctr(['task', 'rm', '-f', 'layered-long']);
      await cd.ctr(['container', 'rm', 'layered-long']);
    }
  });

  it('a second namespace importing the same image reuses the layer files', async () => {
    const mtimes = chains.map((c) => fs.statSync(path.join(sn.root, 'layers', layerName(c))).mtimeMs);
    const ns = `${cd.namespace}-b`;
    try {
      await importIntoSnapshotter(cd, [...tardev, '--index-name', LAYERED_INDEX, img.archive], { namespace: ns, timeoutMs: 300_000, snapshotter: sn });
      const r = await cd.ctrOk(['run', '--rm', ...tardev, ...cd.runtimeArgs('runc'), img.name, 'layered-b', 'cat', '/data/kept'], { namespace: ns });
      expect(r.stdout).toBe(LAYERED_EXPECT.files['/data/kept']);
      expect(builtLines()).toHaveLength(3);
      expect(chains.map((c) => fs.statSync(path.join(sn.root, 'layers', layerName(c))).mtimeMs)).toEqual(mtimes);
    } finally {
      await cd.ctr(['images', 'rm', '--sync', img.name, LAYERED_INDEX], { namespace: ns });
      await cd.ctr(['namespaces', 'rm', ns]);
      // runc's container cgroups sit under one per namespace, which nobody else removes.
      expect(await removeNamespaceCgroups(ns)).toBe(true);
    }
    // The first namespace still has the image: the files stay.
    for (const c of chains) expect(fs.existsSync(path.join(sn.root, 'layers', layerName(c)))).toBe(true);
  });

  it("bad requests get containerd's codes; a corrupt blob in the content store is refused and nothing is half-built", async () => {
    const rm = await cd.ctr(['snapshots', ...tardev, 'rm', 'no-such-snapshot']);
    expect(rm.code).not.toBe(0);
    expect(rm.stderr).toMatch(/not found/);
    // A one-layer image whose blob gets corrupted on disk after the import.
    const tar = writeTar([{ type: 'file', path: 'corrupt-me', data: Buffer.from('x'.repeat(100_000)) }]);
    const bad = buildOciImage({ name: 'katats.local/corrupt:latest', layers: [tar], gzip: true });
    fs.writeFileSync(path.join(tmp.dir, 'corrupt.tar'), bad.archive);
    await cd.ctrOk(['images', 'import', '--no-unpack', '--index-name', 'katats.local/corrupt:index', path.join(tmp.dir, 'corrupt.tar')]);
    const blob = path.join(cd.root, 'io.containerd.content.v1.content', 'blobs', 'sha256', bad.layers[0]!.digest.slice('sha256:'.length));
    const bytes = fs.readFileSync(blob);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    fs.writeFileSync(blob, bytes);
    const before = fs.readdirSync(path.join(sn.root, 'layers')).sort();
    const client = new SnapshotsClient(sn.address, 60_000);
    try {
      const chain = bad.diffIds[0]!;
      const key = `${cd.namespace}/9000/extract-1 ${chain}`;
      await client.prepare(key, '', { 'containerd.io/snapshot/cri.layer-digest': bad.layers[0]!.digest, 'containerd.io/snapshot.ref': chain });
      const err = await client.commit(`${cd.namespace}/9001/${chain}`, key).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SnapshotsCallError);
      expect((err as SnapshotsCallError).code).toBe(9); // FAILED_PRECONDITION
      expect((err as SnapshotsCallError).details).toMatch(/gzip|digest/);
      expect(fs.readdirSync(path.join(sn.root, 'layers')).sort()).toEqual(before);
      expect(fs.readdirSync(path.join(sn.root, 'tmp'))).toEqual([]);
      // Commit of a committed snapshot, Prepare of a taken key, unknown keys.
      const committedKey = (await client.list([`labels."containerd.io/snapshot.ref"==${chains[0]}`]))[0]?.name;
      const committed = (await client.list(['kind==committed'])).find((i) => i.name.endsWith(chains[0]!))!.name;
      expect(committedKey ?? committed).toBeTruthy();
      await expect(client.commit(`${cd.namespace}/9002/x`, committed)).rejects.toMatchObject({ code: 9 });
      await expect(client.prepare(key)).rejects.toMatchObject({ code: 6 });
      await expect(client.stat('no/such/key')).rejects.toMatchObject({ code: 5 });
      await client.remove(key);
      expect(fs.readdirSync(path.join(sn.root, 'unpack'))).toEqual([]);
    } finally {
      client.close();
      await cd.ctr(['images', 'rm', '--sync', 'katats.local/corrupt:latest', 'katats.local/corrupt:index']);
    }
  });

  it('two namespaces unpacking the same new layer at once share one build', async () => {
    const shared = buildOciImage({ name: 'katats.local/shared:latest', layers: [writeTar([{ type: 'file', path: 'shared', data: randomBytes(8 * 1024 * 1024) }])], gzip: true });
    const archive = path.join(tmp.dir, 'shared.tar');
    fs.writeFileSync(archive, shared.archive);
    const nsB = `${cd.namespace}-c`;
    const chain = shared.diffIds[0]!;
    const labels = { 'containerd.io/snapshot/cri.layer-digest': shared.layers[0]!.digest, 'containerd.io/snapshot.ref': chain };
    const client = new SnapshotsClient(sn.address, 120_000);
    const built = builtLines().length;
    try {
      for (const ns of [cd.namespace, nsB]) await cd.ctrOk(['images', 'import', '--no-unpack', '--index-name', 'katats.local/shared:index', archive], { namespace: ns });
      await Promise.all(
        [cd.namespace, nsB].map(async (ns) => {
          await client.prepare(`${ns}/8000/extract-1 ${chain}`, '', labels);
          await client.commit(`${ns}/8001/${chain}`, `${ns}/8000/extract-1 ${chain}`);
        }),
      );
      expect(builtLines()).toHaveLength(built + 1);
      for (const ns of [cd.namespace, nsB]) expect((await client.stat(`${ns}/8001/${chain}`)).kind).toBe(3);
      expect(fs.existsSync(path.join(sn.root, 'layers', layerName(chain)))).toBe(true);
    } finally {
      for (const ns of [cd.namespace, nsB]) await client.remove(`${ns}/8001/${chain}`).catch(() => undefined);
      client.close();
      for (const ns of [cd.namespace, nsB]) await cd.ctr(['images', 'rm', '--sync', 'katats.local/shared:latest', 'katats.local/shared:index'], { namespace: ns });
      await cd.ctr(['namespaces', 'rm', nsB]);
    }
    expect(fs.existsSync(path.join(sn.root, 'layers', layerName(chain)))).toBe(false);
  });

  it('killed in the middle of a Commit: no half layer is visible after the restart, and the unpack succeeds when retried', async () => {
    // A layer big enough that its build takes a while: 96 MiB of incompressible data, plain tar.
    const big = buildOciImage({ name: 'katats.local/big:latest', layers: [writeTar([{ type: 'file', path: 'big', data: randomBytes(96 * 1024 * 1024) }])], gzip: false });
    const archive = path.join(tmp.dir, 'big.tar');
    fs.writeFileSync(archive, big.archive);
    const chain = big.diffIds[0]!;
    const importIt = () => cd.ctr(['images', 'import', ...tardev, '--index-name', 'katats.local/big:index', archive], { timeoutMs: 300_000 });
    try {
      const first = importIt();
      // The Commit's build writes into tmp/: kill the process as soon as it does.
      const deadline = Date.now() + 120_000;
      while (!fs.readdirSync(path.join(sn.root, 'tmp')).length) {
        if (Date.now() > deadline) throw new Error('the layer build never started');
        await sleep(5);
      }
      await sn.kill9();
      expect((await first).code).not.toBe(0);
      await sn.start(30_000, cd.address);
      const client = new SnapshotsClient(sn.address, 60_000);
      try {
        expect(fs.readdirSync(path.join(sn.root, 'tmp'))).toEqual([]);
        expect((await client.list(['kind==committed'])).some((i) => i.name.endsWith(chain))).toBe(false);
        await client.cleanup();
        // Every layer file left is whole and named by a record; none is the interrupted one's.
        const files = fs.readdirSync(path.join(sn.root, 'layers'));
        expect(files).not.toContain(layerName(chain));
        for (const f of files.filter((x) => !x.endsWith('.json'))) {
          const rec = JSON.parse(fs.readFileSync(path.join(sn.root, 'layers', `${f}.json`), 'utf8')) as { fileBytes: number };
          expect(fs.statSync(path.join(sn.root, 'layers', f)).size).toBe(rec.fileBytes);
        }
      } finally {
        client.close();
      }
      const again = await importIt();
      expect(again.code, again.stderr).toBe(0);
      expect(fs.existsSync(path.join(sn.root, 'layers', layerName(chain)))).toBe(true);
    } finally {
      await cd.ctr(['images', 'rm', '--sync', 'katats.local/big:latest', 'katats.local/big:index']);
    }
    expect(fs.existsSync(path.join(sn.root, 'layers', layerName(chain)))).toBe(false);
  });

  it('removing the image removes its snapshots, layer files and host mounts', async () => {
    await cd.ctrOk(['images', 'rm', '--sync', img.name, LAYERED_INDEX]);
    expect(fs.readdirSync(path.join(sn.root, 'layers'))).toEqual([]);
    expect(sn.leftoverMounts()).toEqual([]);
    expect(fs.readdirSync(path.join(sn.root, 'active'))).toEqual([]);
  });
});
