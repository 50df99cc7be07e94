// The snapshotter's gRPC service, started for real on a unix socket and called as containerd calls
// a proxy snapshotter: containerd's semantics and error codes for every rpc, the mounts it returns
// (mounted here the way containerd mounts a list: each in order onto one target), metadata that
// survives a restart, and a Cleanup that removes what no record names. Unpacks that read
// containerd's content store are proven against a real containerd in containerd.test.ts; here the
// committed layers are put in place through the store, built by the real layer builder.
import { status } from '@grpc/grpc-js';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnapshotsCallError, SnapshotsClient, type WireMount } from '../../harness/snapshots.js';
import { writeTar } from '../../harness/images/tar.js';
import { parseLayerMounts, ROOT_HASH_LABEL } from '../../proto/layer-mounts.js';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { serveSnapshotter, type RunningSnapshotter } from '../../snapshotter/server.js';
import { layerName } from '../../snapshotter/store.js';
import { mount, mountsUnder, unmountAll } from '../../sys/mount.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-sn-');
const root = path.join(tmp.dir, 'root');
const address = path.join(tmp.dir, 'sn.sock');
const log = pino({ level: 'silent' });
let running: RunningSnapshotter;
let client: SnapshotsClient;

async function start(): Promise<void> {
  running = await serveSnapshotter({ root, address, log });
  client = new SnapshotsClient(address, 30_000);
}
async function stop(): Promise<void> {
  client.close();
  await running.close();
}

beforeAll(start);
afterAll(async () => {
  await stop().catch(() => undefined);
  await unmountAll(tmp.dir);
  tmp.cleanup();
});

async function code(p: Promise<unknown>): Promise<status | 'ok'> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof SnapshotsCallError) return e.code;
    throw e;
  }
}

/** Mounts a list the way containerd does: each mount in order onto the same target. */
async function mountList(ms: WireMount[], target: string): Promise<void> {
  fs.mkdirSync(target, { recursive: true });
  for (const m of ms) await mount(m.type === 'bind' ? m.source : m.source, target, m.type, m.options);
}

const ZERO = 'sha256:' + '0'.repeat(64);

describe('containerd semantics and errors', () => {
  it('prepare, stat, view, mounts, remove of plain snapshots; the error codes of bad requests', async () => {
    const ms = await client.prepare('ns/1/c1');
    expect(ms).toEqual([{ type: 'bind', source: expect.stringMatching(/\/active\/[0-9a-f]{32}\/fs$/), target: '', options: ['rw', 'rbind'] }]);
    expect(await client.stat('ns/1/c1')).toMatchObject({ name: 'ns/1/c1', parent: '', kind: 2 });
    expect(await code(client.prepare('ns/1/c1'))).toBe(status.ALREADY_EXISTS);
    expect(await code(client.view('ns/2/v', 'ns/nope'))).toBe(status.NOT_FOUND);
    expect(await code(client.view('ns/2/v', 'ns/1/c1'))).toBe(status.INVALID_ARGUMENT); // parent not committed
    expect(await code(client.commit('ns/3/x', 'ns/1/c1'))).toBe(status.UNIMPLEMENTED); // a container's changes
    expect(await code(client.commit('ns/3/x', 'ns/missing'))).toBe(status.NOT_FOUND);
    expect(await code(client.mounts('ns/missing'))).toBe(status.NOT_FOUND);
    expect(await code(client.stat('ns/missing'))).toBe(status.NOT_FOUND);
    expect(await code(client.remove('ns/missing'))).toBe(status.NOT_FOUND);
    expect(await code(client.usage('ns/missing'))).toBe(status.NOT_FOUND);
    expect(await code(client.update({ name: 'ns/1/c1', labels: {} }, ['kind']))).toBe(status.INVALID_ARGUMENT);
    expect(await code(client.list(['labels."unterminated'])) ).toBe(status.INVALID_ARGUMENT);
    const view = await client.view('ns/4/v0');
    expect(view).toEqual([{ type: 'bind', source: path.join(root, 'empty'), target: '', options: ['ro', 'rbind'] }]);
    await client.remove('ns/1/c1');
    await client.remove('ns/4/v0');
    expect(fs.readdirSync(path.join(root, 'active'))).toEqual([]);
  });

  it('an unpack without containerd: the Commit is Unavailable and nothing half-built stays', async () => {
    const key = `k8s.io/7/extract-123-456 ${ZERO}`;
    const ms = await client.prepare(key);
    expect(ms[0]).toMatchObject({ type: 'bind', source: expect.stringMatching(/\/unpack\/[0-9a-f]{32}$/) });
    fs.writeFileSync(path.join(ms[0]!.source, 'applied-by-containerd'), 'x');
    expect(await code(client.commit(`k8s.io/8/${ZERO}`, key))).toBe(status.UNAVAILABLE);
    expect(await code(client.commit(`k8s.io/8/sha256:${'1'.repeat(64)}`, key))).toBe(status.INVALID_ARGUMENT); // not the unpacked chain
    expect(await code(client.stat(`k8s.io/8/${ZERO}`))).toBe(status.NOT_FOUND);
    expect(fs.readdirSync(path.join(root, 'layers'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'tmp'))).toEqual([]);
    // A bad digest label is refused up front.
    expect(await code(client.prepare('k8s.io/9/extract-9 ' + ZERO, '', { 'containerd.io/snapshot/cri.layer-digest': 'md5:x' }))).toBe(status.INVALID_ARGUMENT);
    await client.remove(key);
    expect(fs.readdirSync(path.join(root, 'unpack'))).toEqual([]);
  });
});

describe('snapshots over layer files', () => {
  const chain: { key: string; chainId: string; rootHash: string }[] = [];

  beforeAll(async () => {
    // Two layers: a base, and one deleting a file and making a directory opaque.
    const base = writeTar([
      { type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0:root:/root:/bin/sh\n') },
      { type: 'file', path: 'etc/gone', data: Buffer.from('deleted above') },
      { type: 'file', path: 'opq/lower-only', data: Buffer.from('hidden above') },
      { type: 'file', path: 'kept', data: Buffer.from('base') },
    ]);
    const upper = writeTar([
      { type: 'file', path: 'etc/.wh.gone', data: Buffer.alloc(0) },
      { type: 'dir', path: 'opq' },
      { type: 'file', path: 'opq/.wh..wh..opq', data: Buffer.alloc(0) },
      { type: 'file', path: 'opq/upper-only', data: Buffer.from('upper') },
    ]);
    let parentChain = '';
    let parentKey = '';
    const store = running.snapshotter.store;
    for (const [i, tar] of [base, upper].entries()) {
      const file = path.join(tmp.dir, `l${i}.tar`);
      fs.writeFileSync(file, tar);
      const built = await buildLayerFile(fs.createReadStream(file), path.join(tmp.dir, `l${i}.layer`));
      const chainId = chainIdOf(parentChain, built.diffId);
      const name = layerName(chainId);
      fs.renameSync(path.join(tmp.dir, `l${i}.layer`), store.layerFile(name));
      store.putLayer({ name, chainId, rootHash: built.rootHash, salt: '00'.repeat(32), diffId: built.diffId, digest: built.digest, erofsBytes: built.erofsBytes, fileBytes: built.fileBytes, inodes: built.inodes, built: 0 });
      const key = `ns/${10 + i}/${chainId}`;
      store.put({ key, kind: 'committed', parent: parentKey, labels: { 'containerd.io/snapshot.ref': chainId }, created: 0, updated: 0, id: store.newId(), layer: name });
      chain.push({ key, chainId, rootHash: built.rootHash });
      parentChain = chainId;
      parentKey = key;
    }
  });

  it('an active snapshot: layer descriptions for the shim, then an overlay the host mounts', async () => {
    const top = chain[1]!;
    const ms = await client.prepare('ns/20/ctr', top.key);
    expect(ms.map((m) => m.type)).toEqual(['bind', 'overlay']);
    const described = parseLayerMounts(ms);
    expect(described).toEqual({
      srcPrefix: path.join(root, 'layers'),
      writable: true,
      layers: [chain[1], chain[0]].map((c) => ({
        name: layerName(c!.chainId),
        fstype: 'erofs',
        rootHash: c!.rootHash,
        options: ['ro', 'io.katacontainers.fs-opt.block_device=file', 'io.katacontainers.fs-opt.is-layer', `io.katacontainers.fs-opt.root-hash=${c!.rootHash}`],
      })),
    });
    for (const l of described!.layers) expect(fs.existsSync(path.join(described!.srcPrefix, l.name))).toBe(true);
    const target = path.join(tmp.dir, 'rootfs');
    await mountList(ms, target);
    try {
      expect(fs.readFileSync(path.join(target, 'etc/passwd'), 'utf8')).toMatch(/^root:/);
      expect(fs.existsSync(path.join(target, 'etc/gone'))).toBe(false);
      expect(fs.readdirSync(path.join(target, 'opq'))).toEqual(['upper-only']);
      expect(fs.readFileSync(path.join(target, 'kept'), 'utf8')).toBe('base');
      fs.writeFileSync(path.join(target, 'written'), 'by the container');
    } finally {
      await unmountAll(target);
    }
    const upperDir = ms[1]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    expect(fs.readFileSync(path.join(upperDir, 'written'), 'utf8')).toBe('by the container');
    expect((await client.usage('ns/20/ctr')).size).toBeGreaterThan(0);
    expect(await client.mounts('ns/20/ctr')).toEqual(ms);
    expect(await code(client.mounts(top.key))).toBe(status.FAILED_PRECONDITION); // committed
    expect(await code(client.remove(top.key))).toBe(status.FAILED_PRECONDITION); // has a child
  });

  it('views: one layer is a read-only bind, two are a lower-only overlay', async () => {
    const one = await client.view('ns/21/v1', chain[0]!.key);
    expect(one.map((m) => m.type)).toEqual(['bind', 'bind']);
    expect(one[1]!.options).toEqual(['ro', 'rbind']);
    expect(parseLayerMounts(one)?.writable).toBe(false);
    const two = await client.view('ns/22/v2', chain[1]!.key);
    expect(two[1]).toMatchObject({ type: 'overlay', options: [expect.stringMatching(/^lowerdir=[^:]+:[^:]+$/)] });
    const target = path.join(tmp.dir, 'view');
    await mountList(two, target);
    try {
      expect(fs.readdirSync(path.join(target, 'opq'))).toEqual(['upper-only']);
      expect(() => fs.writeFileSync(path.join(target, 'x'), 'x')).toThrow(/EROFS|read-only/i);
    } finally {
      await unmountAll(target);
    }
  });

  it('stat, list with containerd filters, update of labels; the root hash label is the layer\'s', async () => {
    const st = await client.stat(chain[0]!.key);
    expect(st).toMatchObject({ kind: 3, labels: { [ROOT_HASH_LABEL]: chain[0]!.rootHash } });
    const committed = await client.list(['kind==committed']);
    expect(committed.map((i) => i.name).sort()).toEqual([chain[0]!.key, chain[1]!.key].sort());
    // The filter containerd's metadata layer uses to find a layer a remote snapshotter committed.
    const found = await client.list([`labels."containerd.io/snapshot.ref"==${chain[1]!.chainId},parent=="${chain[0]!.key}"`]);
    expect(found.map((i) => i.name)).toEqual([chain[1]!.key]);
    expect(await client.list([`parent==""`, 'name~=^ns/2[12]/'])).toHaveLength(3);
    const up = await client.update({ name: chain[0]!.key, labels: { 'containerd.io/gc.root': 'x', [ROOT_HASH_LABEL]: 'forged' } }, ['labels.containerd.io/gc.root', `labels.${ROOT_HASH_LABEL}`]);
    expect(up.labels).toMatchObject({ 'containerd.io/gc.root': 'x', [ROOT_HASH_LABEL]: chain[0]!.rootHash });
    const all = await client.update({ name: chain[0]!.key, labels: { only: 'this' } });
    expect(all.labels).toEqual({ only: 'this', [ROOT_HASH_LABEL]: chain[0]!.rootHash });
    expect(await client.usage(chain[0]!.key)).toMatchObject({ size: fs.statSync(path.join(root, 'layers', layerName(chain[0]!.chainId))).size });
  });

  it('a restart keeps every record; mounts still answer; Cleanup removes only what nothing names', async () => {
    const before = (await client.list()).map((i) => i.name).sort();
    const mountsBefore = await client.mounts('ns/20/ctr');
    await stop();
    // What a crash in the middle of work leaves: a temp layer file, an orphan upper dir, a record's temp file.
    fs.writeFileSync(path.join(root, 'tmp', 'half-built'), 'x');
    fs.mkdirSync(path.join(root, 'active', 'f'.repeat(32), 'fs'), { recursive: true });
    fs.writeFileSync(path.join(root, 'snapshots', '.abc.json.123.tmp'), '{');
    await start();
    expect((await client.list()).map((i) => i.name).sort()).toEqual(before);
    expect(await client.mounts('ns/20/ctr')).toEqual(mountsBefore);
    expect(fs.readdirSync(path.join(root, 'tmp'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'snapshots')).some((f) => f.endsWith('.tmp'))).toBe(false);
    await client.cleanup();
    expect(fs.existsSync(path.join(root, 'active', 'f'.repeat(32)))).toBe(false);
    expect(fs.readdirSync(path.join(root, 'layers')).length).toBe(4); // two files, two records
  });

  it('removing everything unmounts the layers and removes their files', async () => {
    for (const k of ['ns/20/ctr', 'ns/21/v1', 'ns/22/v2', chain[1]!.key, chain[0]!.key]) await client.remove(k);
    expect(await client.list()).toEqual([]);
    expect(mountsUnder(root)).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'layers'))).toEqual([]);
    expect(fs.readdirSync(path.join(root, 'mnt'))).toEqual([]);
  });

  it('a second server on the same socket is refused while the first lives', async () => {
    await expect(serveSnapshotter({ root: path.join(tmp.dir, 'root2'), address, log })).rejects.toThrow(/another server answers/);
  });
});
