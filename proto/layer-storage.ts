// The agent storages that carry a container's verified image layers into the guest: the contract
// between shim/ (which builds them from the snapshotter's mounts, proto/layer-mounts.ts), agent/
// (which opens each layer through dm-verity and assembles the rootfs) and policy/ (which pins the
// root hashes).
//
// One `blk` storage per layer, topmost first, then one `overlayfs` storage, as Kata's genpolicy
// lays out tardev layers:
//   blk       source = the disk's PCI path ("06/00"), fstype erofs,
//             mount_point = <guest state>/sandbox/layers/<layer name>,
//             options = ro, io.katacontainers.fs-opt.block_device=file, io.katacontainers.fs-opt.is-layer,
//                       io.katacontainers.fs-opt.root-hash=<hex>          (tardev's four, as genpolicy pins them)
//                       X-kata.dmverity.hashoffset=<data bytes>, X-kata.dmverity.blocksize=4096,
//                       X-kata.dmverity.hashsize=4096, X-kata.dmverity.algorithm=sha256,
//                       X-kata.dmverity.hashtype=1, X-kata.dmverity.salt=<hex>
//                                                                          (Kata's multi-layer EROFS names)
//   overlayfs source none, fstype overlay, mount_point = the container's rootfs in its bundle,
//             options = io.katacontainers.fs-opt.layer-src-prefix=<host dir>,
//                       io.katacontainers.fs-opt.layer=<base64> per layer (topmost first),
//                       io.katacontainers.fs-opt.overlay-rw (a writable container),
//                       lowerdir=<layer name>:<layer name>...             (names, topmost first)
// The layer file is the EROFS image (hashoffset bytes, whole 4096-byte blocks) followed by its
// dm-verity tree (format 1, sha256, 4096-byte blocks): the device must be exactly that long.
import { FS_OPT, LAYER, LAYER_SRC_PREFIX, OVERLAY_RW, ROOT_HASH, layerOption, type LayerRef } from './layer-mounts.js';

export const IS_LAYER = `${FS_OPT}.is-layer`;
export const BLOCK_DEVICE_FILE = `${FS_OPT}.block_device=file`;
const DMV = 'X-kata.dmverity.';
export const DMV_HASH_OFFSET = `${DMV}hashoffset=`;
export const DMV_BLOCK_SIZE = `${DMV}blocksize=`;
export const DMV_HASH_SIZE = `${DMV}hashsize=`;
export const DMV_ALGORITHM = `${DMV}algorithm=`;
export const DMV_HASH_TYPE = `${DMV}hashtype=`;
export const DMV_SALT = `${DMV}salt=`;
export const DMV_ROOT_HASH = `${DMV}roothash=`;

/** The only geometry layer files have. */
export const VERITY_BLOCK = 4096;
const HASHES_PER_BLOCK = VERITY_BLOCK / 32;
/** The zero salt layer files are built with (AKS's tardev's), in hex. */
export const ZERO_SALT_HEX = '0'.repeat(64);
/** Where layer storages are mounted, below the agent's state dir. */
export const LAYERS_SUBDIR = 'sandbox/layers';
export const LAYER_STORAGE_FSTYPE = 'erofs';
export const LAYER_OVERLAY_FSTYPE = 'overlay';
/** Layers a container may have (Docker's limit is 127; each is a disk here). */
export const MAX_LAYERS = 64;

const HEX64 = /^[0-9a-f]{64}$/;

export class LayerStorageError extends Error {
  override readonly name = 'LayerStorageError';
  readonly code = 'KATATS_LAYER_STORAGE';
}

/** What the guest needs to open one layer through dm-verity. */
export interface LayerVerity {
  /** sha256 of the chain id, hex: names the layer (file, mount point, dm device). */
  name: string;
  rootHash: string;
  /** Bytes of the EROFS image: the verity data area; the hash tree starts here. */
  dataBytes: number;
  salt: string;
}

/** Hash blocks of a dm-verity tree (format 1, sha256, 4096-byte blocks) over `dataBlocks` data blocks. */
export function verityHashBlocks(dataBlocks: number): number {
  if (!Number.isSafeInteger(dataBlocks) || dataBlocks < 1) throw new LayerStorageError(`verity: ${dataBlocks} data blocks`);
  let total = 0;
  let n = dataBlocks;
  while (n > 1) {
    n = Math.ceil(n / HASHES_PER_BLOCK);
    total += n;
  }
  return total;
}

/** The exact size of a layer file (and of its disk in the guest) whose EROFS image is `dataBytes` long. */
export function layerFileBytes(dataBytes: number): number {
  return dataBytes + VERITY_BLOCK * verityHashBlocks(dataBytes / VERITY_BLOCK);
}

export function layerStorageOptions(v: LayerVerity): string[] {
  return [
    'ro',
    BLOCK_DEVICE_FILE,
    IS_LAYER,
    `${ROOT_HASH}${v.rootHash}`,
    `${DMV_HASH_OFFSET}${v.dataBytes}`,
    `${DMV_BLOCK_SIZE}${VERITY_BLOCK}`,
    `${DMV_HASH_SIZE}${VERITY_BLOCK}`,
    `${DMV_ALGORITHM}sha256`,
    `${DMV_HASH_TYPE}1`,
    `${DMV_SALT}${v.salt}`,
  ];
}

export const isLayerStorage = (s: { driver: string; options: string[] }): boolean => s.driver === 'blk' && s.options.includes(IS_LAYER);

/** An overlay storage that assembles layers (tardev's options), as opposed to any other overlayfs storage. */
export const isLayerOverlay = (s: { driver: string; options: string[] }): boolean =>
  s.driver === 'overlayfs' && s.options.some((o) => o.startsWith(LAYER) || o === OVERLAY_RW || o.startsWith(LAYER_SRC_PREFIX));

/**
 * The verity parameters of a layer storage; `name` is the last component of its mount point.
 * Throws on anything outside the one geometry layer files have, on unknown X-kata.dmverity keys,
 * and on a root hash given twice with two values.
 */
export function parseLayerStorage(name: string, options: string[]): LayerVerity {
  const fail = (why: string) => new LayerStorageError(`layer ${name}: ${why}`);
  if (!HEX64.test(name)) throw new LayerStorageError(`layer storage: mount point must end in a layer name (64 hex digits), got ${JSON.stringify(name.slice(0, 80))}`);
  let rootHash: string | undefined;
  let dataBytes: number | undefined;
  let salt: string | undefined;
  const seen = new Set<string>();
  for (const o of options) {
    const eq = o.indexOf('=');
    const key = eq < 0 ? o : o.slice(0, eq + 1);
    const val = eq < 0 ? '' : o.slice(eq + 1);
    if (key.startsWith(DMV) || key === ROOT_HASH) {
      if (seen.has(key)) throw fail(`option ${key} given twice`);
      seen.add(key);
    }
    switch (key) {
      case ROOT_HASH:
      case DMV_ROOT_HASH:
        if (!HEX64.test(val)) throw fail(`root hash ${JSON.stringify(val.slice(0, 80))} is not 64 hex digits`);
        if (rootHash !== undefined && rootHash !== val) throw fail('two different root hashes');
        rootHash = val;
        break;
      case DMV_HASH_OFFSET: {
        const n = /^[0-9]{1,16}$/.test(val) ? Number(val) : NaN;
        if (!Number.isSafeInteger(n) || n < VERITY_BLOCK || n % VERITY_BLOCK !== 0) throw fail(`hash offset ${JSON.stringify(val)} is not a positive multiple of ${VERITY_BLOCK}`);
        dataBytes = n;
        break;
      }
      case DMV_BLOCK_SIZE:
      case DMV_HASH_SIZE:
        if (val !== String(VERITY_BLOCK)) throw fail(`${key}${val}: layer files use ${VERITY_BLOCK}-byte blocks`);
        break;
      case DMV_ALGORITHM:
        if (val !== 'sha256') throw fail(`algorithm ${JSON.stringify(val)}: layer files use sha256`);
        break;
      case DMV_HASH_TYPE:
        if (val !== '1') throw fail(`hash type ${JSON.stringify(val)}: layer files use format 1`);
        break;
      case DMV_SALT:
        if (!/^([0-9a-f]{2}){0,256}$/.test(val)) throw fail('salt must be hex, at most 256 bytes');
        salt = val;
        break;
      default:
        // The guest decides how a layer is mounted (read-only, nodev, nosuid): nothing else is taken.
        if (o !== 'ro' && o !== BLOCK_DEVICE_FILE && o !== IS_LAYER) throw fail(`option ${JSON.stringify(o.slice(0, 100))} is not one a layer takes`);
    }
  }
  if (!rootHash) throw fail(`no ${ROOT_HASH} option`);
  if (dataBytes === undefined) throw fail(`no ${DMV_HASH_OFFSET} option (the size of its EROFS image)`);
  return { name, rootHash, dataBytes, salt: salt ?? ZERO_SALT_HEX };
}

export interface LayerOverlay {
  /** Topmost first. */
  lowers: string[];
  /** Root hash per layer name, from its io.katacontainers.fs-opt.layer option. */
  rootHashes: Map<string, string>;
  writable: boolean;
}

/** The overlay storage's options for layers (topmost first). */
export function layerOverlayOptions(srcPrefix: string, layers: Pick<LayerRef, 'name' | 'rootHash'>[], writable: boolean): string[] {
  return [
    `${LAYER_SRC_PREFIX}${srcPrefix}`,
    ...layers.map((l) => layerOption(l.name, l.rootHash)),
    ...(writable ? [OVERLAY_RW] : []),
    `lowerdir=${layers.map((l) => l.name).join(':')}`,
  ];
}

/**
 * The layers an overlay storage assembles. lowerdir names layers (never guest paths); every layer
 * it names must come with an io.katacontainers.fs-opt.layer option and the other way round, in
 * the same order. Other options are refused: the guest decides how the overlay is mounted.
 */
export function parseLayerOverlay(options: string[]): LayerOverlay {
  const rootHashes = new Map<string, string>();
  const described: string[] = [];
  let lowers: string[] | undefined;
  let writable = false;
  for (const o of options) {
    if (o.startsWith(LAYER_SRC_PREFIX)) continue; // the host's directory: nothing the guest uses
    if (o === OVERLAY_RW) writable = true;
    else if (o.startsWith(LAYER)) {
      const info = Buffer.from(o.slice(LAYER.length), 'base64').toString('utf8').split(',');
      const name = info[0] ?? '';
      const rh = info.find((x) => x.startsWith(ROOT_HASH))?.slice(ROOT_HASH.length) ?? '';
      if (!HEX64.test(name) || !HEX64.test(rh)) throw new LayerStorageError(`layer overlay: malformed option ${o.slice(0, 100)}`);
      if (rootHashes.has(name)) throw new LayerStorageError(`layer overlay: layer ${name} named twice`);
      rootHashes.set(name, rh);
      described.push(name);
    } else if (o.startsWith('lowerdir=')) {
      if (lowers) throw new LayerStorageError('layer overlay: lowerdir given twice');
      lowers = o.slice('lowerdir='.length).split(':');
    } else throw new LayerStorageError(`layer overlay: option ${JSON.stringify(o.slice(0, 100))} is not one the guest takes`);
  }
  if (!lowers || !lowers.length || lowers.some((l) => !HEX64.test(l))) throw new LayerStorageError('layer overlay: lowerdir must list layer names (64 hex digits each)');
  if (lowers.length > MAX_LAYERS) throw new LayerStorageError(`layer overlay: ${lowers.length} layers (at most ${MAX_LAYERS})`);
  if (lowers.join(':') !== described.join(':')) throw new LayerStorageError('layer overlay: lowerdir and the layer options name different layers');
  return { lowers, rootHashes, writable };
}

const EROFS_MAGIC = 0xe0f5e1e2;
const EROFS_SUPER = 1024;
/** Bytes to read from the start of a layer to find its data size. */
export const LAYER_HEAD_BYTES = EROFS_SUPER + 128;

/**
 * The data size an EROFS superblock claims (blocks x block size), from the first bytes of a layer
 * file or disk. Unverified until dm-verity has checked that block: only ever compared with the
 * device's size and the storage's hash offset, never trusted alone.
 */
export function erofsDataBytes(head: Buffer): number {
  if (head.length < LAYER_HEAD_BYTES) throw new LayerStorageError(`EROFS superblock: only ${head.length} bytes`);
  if (head.readUInt32LE(EROFS_SUPER) !== EROFS_MAGIC) throw new LayerStorageError('no EROFS superblock (bad magic)');
  const bits = head.readUInt8(EROFS_SUPER + 12);
  if (1 << bits !== VERITY_BLOCK) throw new LayerStorageError(`EROFS block size 2^${bits}: layer files use ${VERITY_BLOCK}-byte blocks`);
  const blocks = head.readUInt32LE(EROFS_SUPER + 36);
  if (blocks < 1) throw new LayerStorageError('EROFS superblock: 0 blocks');
  return blocks * VERITY_BLOCK;
}
