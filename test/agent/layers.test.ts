// Layer storages the agent refuses before any verity device exists, in local mode (the host has
// no device-mapper; test/snapshotter/guest-layers.test.ts opens layers in a QEMU guest): the
// contract's options parsed strictly, a layer file on a real loop device whose size or superblock
// disagrees with what the host claims, an overlay that names a layer the sandbox has not opened or
// lands anywhere but the container's own rootfs. Each gets a clear error naming the layer, leaves
// nothing mounted, and the agent runs the next container.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import type { grpc } from '../../proto/gen/types.js';
import {
  erofsDataBytes,
  layerFileBytes,
  layerOverlayOptions,
  layerStorageOptions,
  LAYER_HEAD_BYTES,
  parseLayerOverlay,
  parseLayerStorage,
  ZERO_SALT_HEX,
} from '../../proto/layer-storage.js';
import { writeTar } from '../../harness/images/tar.js';
import { buildLayerFile, type LayerFile } from '../../snapshotter/layer.js';
import { containerSpec, crunContainers, runToEnd, startAgent, type TestAgent } from './helpers.js';

const NAME = 'a'.repeat(64);
const HASH = 'b'.repeat(64);

describe('the layer storage contract', () => {
  it('options round-trip, and anything outside the one geometry or unknown is refused', () => {
    const v = { name: NAME, rootHash: HASH, dataBytes: 8192, salt: ZERO_SALT_HEX };
    expect(parseLayerStorage(NAME, layerStorageOptions(v))).toEqual(v);
    const opts = layerStorageOptions(v);
    expect(() => parseLayerStorage(NAME, [...opts, 'rw'])).toThrow(/not one a layer takes/);
    expect(() => parseLayerStorage(NAME, opts.map((o) => (o.startsWith('X-kata.dmverity.blocksize=') ? 'X-kata.dmverity.blocksize=512' : o)))).toThrow(/4096-byte blocks/);
    expect(() => parseLayerStorage(NAME, [...opts, `X-kata.dmverity.roothash=${'c'.repeat(64)}`])).toThrow(/two different root hashes/);
    expect(() => parseLayerStorage(NAME, opts.filter((o) => !o.startsWith('X-kata.dmverity.hashoffset=')))).toThrow(/hashoffset/);
    expect(() => parseLayerStorage(NAME, opts.map((o) => (o.startsWith('X-kata.dmverity.hashoffset=') ? 'X-kata.dmverity.hashoffset=4097' : o)))).toThrow(/multiple of 4096/);
    expect(() => parseLayerStorage('../../etc', opts)).toThrow(/64 hex digits/);
  });

  it('an overlay names layers, never paths, with a root hash for each, in the same order', () => {
    const layers = [{ name: NAME, rootHash: HASH }, { name: 'c'.repeat(64), rootHash: 'd'.repeat(64) }];
    const o = parseLayerOverlay(layerOverlayOptions('/var/lib/layers', layers, true));
    expect(o.lowers).toEqual([NAME, 'c'.repeat(64)]);
    expect(o.writable).toBe(true);
    expect(o.rootHashes.get(NAME)).toBe(HASH);
    const good = layerOverlayOptions('/x', layers, false);
    expect(() => parseLayerOverlay(good.map((x) => (x.startsWith('lowerdir=') ? 'lowerdir=/etc:/usr' : x)))).toThrow(/layer names/);
    expect(() => parseLayerOverlay(good.map((x) => (x.startsWith('lowerdir=') ? `lowerdir=${'c'.repeat(64)}:${NAME}` : x)))).toThrow(/different layers/);
    expect(() => parseLayerOverlay([...good, 'upperdir=/tmp/up'])).toThrow(/not one the guest takes/);
  });
});

describe('layer storages in the agent', () => {
  let t: TestAgent;
  let layer: LayerFile;
  let file = '';
  const loops: string[] = [];
  const loopOf = (f: string) => {
    const l = execFileSync('losetup', ['-r', '-f', '--show', f]).toString().trim();
    loops.push(l);
    return l;
  };

  beforeAll(async () => {
    t = await startAgent();
    file = path.join(t.dir, 'layer');
    const tar = writeTar([{ type: 'file', path: 'etc/motd', data: Buffer.from('from a layer\n') }, { type: 'file', path: 'big', data: Buffer.alloc(20_000, 7) }]);
    layer = await buildLayerFile(Readable.from([tar]), file);
  });
  afterAll(async () => {
    const dir = t?.dir;
    await t?.close();
    for (const l of loops) execFileSync('losetup', ['-d', l]);
    expect(crunContainers('ly-')).toEqual([]);
    if (dir) expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(dir)).toBe(false);
  });

  const layerStorage = (source: string, over: Partial<{ dataBytes: number; mountPoint: string }> = {}): grpc.Storage => ({
    driver: 'blk',
    driver_options: [],
    source,
    fstype: 'erofs',
    options: layerStorageOptions({ name: NAME, rootHash: layer.rootHash, dataBytes: over.dataBytes ?? layer.erofsBytes, salt: ZERO_SALT_HEX }),
    mount_point: over.mountPoint ?? path.join(t.stateDir, 'sandbox', 'layers', NAME),
    shared: false,
  });
  const overlay = (cid: string, mountPoint = path.join(t.stateDir, 'containers', cid, 'rootfs')): grpc.Storage => ({
    driver: 'overlayfs',
    driver_options: [],
    source: 'none',
    fstype: 'overlay',
    options: layerOverlayOptions('/host/layers', [{ name: NAME, rootHash: layer.rootHash }], true),
    mount_point: mountPoint,
    shared: false,
  });
  const create = (cid: string, storages: grpc.Storage[]) =>
    t.svc.CreateContainer({ container_id: cid, storages, OCI: containerSpec(path.join(t.stateDir, 'containers', cid, 'rootfs'), ['true']) }).then(
      () => ({ code: Code.OK, message: '' }),
      (e: { code: number; message: string }) => ({ code: e.code, message: e.message }),
    );

  it('the layer file the snapshotter builds is exactly its EROFS image and tree, and its superblock says how big the image is', () => {
    expect(fs.statSync(file).size).toBe(layerFileBytes(layer.erofsBytes));
    expect(erofsDataBytes(fs.readFileSync(file).subarray(0, LAYER_HEAD_BYTES))).toBe(layer.erofsBytes);
  });

  it('refuses a layer storage outside the layers dir, a size that disagrees with the device, and a device with more or less than the layer', async () => {
    const dev = loopOf(file);
    const outside = await create('ly-1', [layerStorage(dev, { mountPoint: path.join(t.stateDir, 'sandbox', 'storage', NAME) })]);
    expect(outside.code).toBe(Code.PermissionDenied);
    expect(outside.message).toMatch(/layer storage mount_point/);
    const lying = await create('ly-2', [layerStorage(dev, { dataBytes: layer.erofsBytes + 4096 })]);
    expect(lying.code).toBe(Code.FailedPrecondition);
    expect(lying.message).toContain(`layer ${NAME}`);
    expect(lying.message).toMatch(/superblock says \d+ bytes of data, the storage's hash offset \d+/);
    // The same layer followed by a block of the host's choosing: the device is not what the tree covers.
    const longer = path.join(t.dir, 'layer-longer');
    fs.writeFileSync(longer, Buffer.concat([fs.readFileSync(file), Buffer.alloc(4096, 1)]));
    const long = await create('ly-3', [layerStorage(loopOf(longer))]);
    expect(long.code).toBe(Code.FailedPrecondition);
    expect(long.message).toMatch(/is \d+ bytes, but its data and hash tree make \d+/);
    const layersDir = path.join(t.stateDir, 'sandbox', 'layers');
    expect(fs.existsSync(layersDir) ? fs.readdirSync(layersDir) : []).toEqual([]);
  });

  it('refuses an overlay of a layer the sandbox has not opened, or one on another container\'s rootfs', async () => {
    const missing = await create('ly-4', [overlay('ly-4')]);
    expect(missing.code).toBe(Code.FailedPrecondition);
    expect(missing.message).toContain(`layer ${NAME} is not mounted`);
    const elsewhere = await create('ly-5', [overlay('ly-5', path.join(t.stateDir, 'containers', 'ly-other', 'rootfs'))]);
    expect(elsewhere.code).toBe(Code.PermissionDenied);
    expect(fs.existsSync(path.join(t.stateDir, 'containers', 'ly-4'))).toBe(false);
  });

  it('keeps serving: the next container runs', async () => {
    const r = await runToEnd(t, 'ly-ok', ['echo', 'still here']);
    expect(r.stdout).toBe('still here\n');
  });
});
