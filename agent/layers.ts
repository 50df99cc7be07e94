// Verified image layers (proto/layer-storage.ts): each layer disk is opened through dm-verity with
// the root hash the host names (and a policy pins), its EROFS image mounted read-only from the
// verity device, and a container's rootfs assembled as an overlay of its layers with a writable
// upper on a tmpfs of its own. The device-mapper work is done by the native helper
// (katats-runner verity-open/-close: the DM ioctls, the device's size, a read of every block).
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import {
  erofsDataBytes,
  LAYER_HEAD_BYTES,
  LAYER_STORAGE_FSTYPE,
  layerFileBytes,
  LayerStorageError,
  parseLayerOverlay,
  parseLayerStorage,
  VERITY_BLOCK,
  type LayerVerity,
} from '../proto/layer-storage.js';
import { runTool } from '../sys/exec.js';
import { umount, isMounted } from '../sys/mount.js';
import type { Logger } from './log.js';
import { precondition, invalid, internal } from './errors.js';
import { resolveBlockSource } from './devices.js';
import { bundleDir, closePlace, mountOnPlace, preparePlace, type Place } from './places.js';

/** Opening a layer reads all of it through dm-verity: on TCG that is tens of MB/s. */
export const VERITY_OPEN_TIMEOUT_MS = 600_000;
const VERITY_CLOSE_TIMEOUT_MS = 30_000;

export interface LayerContext {
  log: Logger;
  stateDir: string;
  sysfsRoot: string;
  runner: string;
  blockTimeoutMs?: number;
  pciRescan?: boolean;
}

/** A layer this sandbox has mounted (for the overlays that name it). */
export interface MountedLayer {
  name: string;
  rootHash: string;
  mountPoint: string;
}

/** What undoing a layer storage or a layer overlay takes beyond its own mount. */
export interface LayerUndo {
  layer?: MountedLayer;
  undo: () => Promise<void>;
}

const dmName = (name: string) => `katats-${name}`;

/** An error that names the layer (its name is the sha256 of its chain id, the file's name on the host). */
function layerError(v: Pick<LayerVerity, 'name' | 'rootHash'>, why: string, code: 'precondition' | 'invalid' = 'precondition') {
  const msg = `layer ${v.name} (root hash ${v.rootHash}): ${why}`;
  return code === 'invalid' ? invalid(msg) : precondition(msg);
}

function readHead(dev: string): Buffer {
  const fd = fs.openSync(dev, fs.constants.O_RDONLY);
  try {
    const b = Buffer.alloc(LAYER_HEAD_BYTES);
    const n = fs.readSync(fd, b, 0, b.length, 0);
    return b.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

async function verityClose(runner: string, name: string): Promise<void> {
  const r = await runTool(runner, ['verity-close', dmName(name)], { timeoutMs: VERITY_CLOSE_TIMEOUT_MS, timeoutCode: 'KATATS_VERITY_CLOSE_TIMEOUT' });
  if (r.code !== 0) throw internal(`layer ${name}: removing its verity device: ${r.stderr.trim() || `exit ${r.code ?? r.signal}`}`);
}

/**
 * A `blk` layer storage: the disk at its PCI path, checked (its size is exactly its data and hash
 * tree, its superblock agrees with the storage's hash offset), opened through dm-verity and read
 * once whole, then mounted read-only, nodev, nosuid. Nothing is left on failure.
 */
export async function addLayer(s: grpc.Storage, place: () => Place, ctx: LayerContext): Promise<{ handle: LayerUndo; createdDir: boolean }> {
  let v: LayerVerity;
  try {
    v = parseLayerStorage(path.basename(s.mount_point), s.options);
  } catch (e) {
    if (e instanceof LayerStorageError) throw invalid(e.message);
    throw e;
  }
  if (s.fstype !== LAYER_STORAGE_FSTYPE) throw layerError(v, `fstype ${JSON.stringify(s.fstype)}: layers are ${LAYER_STORAGE_FSTYPE}`, 'invalid');
  if (!s.source) throw layerError(v, 'no source (the PCI path of its disk)', 'invalid');
  const log = ctx.log.child({ layer: v.name });
  const dev = await resolveBlockSource(ctx.sysfsRoot, s.source, ctx.blockTimeoutMs, ctx.pciRescan);
  let claimed: number;
  try {
    claimed = erofsDataBytes(readHead(dev));
  } catch (e) {
    throw layerError(v, `${dev}: ${(e as Error).message}`);
  }
  // The superblock is not verified yet: it must agree with the hash offset the host gave, and the
  // device's size (checked by the helper before anything is set up) with both.
  if (claimed !== v.dataBytes) throw layerError(v, `${dev}: its EROFS superblock says ${claimed} bytes of data, the storage's hash offset ${v.dataBytes}`);
  const blocks = v.dataBytes / VERITY_BLOCK;
  const started = Date.now();
  const r = await runTool(ctx.runner, ['verity-open', dmName(v.name), dev, String(blocks), String(blocks), v.rootHash, v.salt || '-', String(layerFileBytes(v.dataBytes))], {
    timeoutMs: VERITY_OPEN_TIMEOUT_MS,
    timeoutCode: 'KATATS_VERITY_OPEN_TIMEOUT',
  }).catch(async (e: unknown) => {
    // Killed half way, the helper may have left the device behind.
    await verityClose(ctx.runner, v.name).catch(() => undefined);
    throw layerError(v, `${dev}: ${(e as Error).message}`);
  });
  const m = /^dev (\d+) (\d+)$/m.exec(r.stdout);
  if (r.code !== 0 || !m) throw layerError(v, `${dev} refused: ${r.stderr.trim().replace(/^verity: /, '') || `exit ${r.code ?? r.signal}`}`);
  log.info({ device: dev, dm: `${m[1]}:${m[2]}`, dataBytes: v.dataBytes, ms: Date.now() - started }, 'layer verified through dm-verity');
  const node = `/dev/dm-${m[2]}`;
  let p: Place | undefined;
  try {
    const st = fs.statSync(node);
    if (!st.isBlockDevice() || Math.floor(st.rdev / 256) % 4096 !== Number(m[1])) throw new Error(`${node} is not the verity device ${m[1]}:${m[2]}`);
    p = place();
    await mountOnPlace(p, node, LAYER_STORAGE_FSTYPE, ['ro', 'nodev', 'nosuid']);
  } catch (e) {
    if (p?.created) fs.rmSync(p.path, { recursive: false, force: true });
    await verityClose(ctx.runner, v.name).catch((e2: unknown) => log.warn({ err: e2 }, 'removing the verity device after a failed mount failed'));
    throw layerError(v, `mounting ${node}: ${(e as Error).message}`);
  } finally {
    if (p) closePlace(p);
  }
  return {
    createdDir: p.created,
    handle: { layer: { name: v.name, rootHash: v.rootHash, mountPoint: s.mount_point }, undo: () => verityClose(ctx.runner, v.name) },
  };
}

/**
 * The overlay storage of a container's layers, mounted on the container's rootfs in its bundle:
 * lowerdir names layers this sandbox mounted (by name, with the root hash they were opened with),
 * never guest paths; a writable container gets an upper and work dir on a tmpfs of its own.
 */
export async function addLayerOverlay(
  s: grpc.Storage,
  place: () => Place,
  cid: string,
  layerOf: (name: string) => MountedLayer | undefined,
  ctx: LayerContext,
): Promise<{ handle: LayerUndo; createdDir: boolean }> {
  let o;
  try {
    o = parseLayerOverlay(s.options);
  } catch (e) {
    if (e instanceof LayerStorageError) throw invalid(`container ${cid}: ${e.message}`);
    throw e;
  }
  if (s.fstype !== 'overlay') throw invalid(`container ${cid}: layer overlay fstype ${JSON.stringify(s.fstype)} (want overlay)`);
  const lowers: string[] = [];
  for (const name of o.lowers) {
    const l = layerOf(name);
    if (!l) throw precondition(`container ${cid}: layer ${name} is not mounted (its storage must come before the overlay)`);
    if (l.rootHash !== o.rootHashes.get(name)) throw precondition(`container ${cid}: layer ${name} was opened with root hash ${l.rootHash}, the overlay names ${o.rootHashes.get(name)}`);
    lowers.push(l.mountPoint);
  }
  const upperRoot = path.join(bundleDir(ctx.stateDir, cid), 'upper');
  let upper: Place | undefined;
  let upperMounted = false;
  const undoUpper = async () => {
    if (upperMounted && isMounted(upperRoot)) await umount(upperRoot).catch(() => umount(upperRoot, true));
    fs.rmSync(upperRoot, { recursive: true, force: true });
  };
  let p: Place | undefined;
  try {
    let options: string[];
    let fstype = 'overlay';
    let source = 'overlay';
    if (o.writable) {
      upper = preparePlace(ctx.stateDir, upperRoot, 'dir', 'layer overlay upper');
      await mountOnPlace(upper, 'tmpfs', 'tmpfs', ['nodev', 'nosuid', 'mode=0700']);
      upperMounted = true;
      closePlace(upper);
      upper = undefined;
      const up = path.join(upperRoot, 'fs');
      const work = path.join(upperRoot, 'work');
      fs.mkdirSync(work, { mode: 0o700 });
      fs.mkdirSync(up);
      // The overlay's root takes the upper dir's owner and mode: the topmost layer's root.
      const top = fs.statSync(lowers[0]!);
      fs.chownSync(up, top.uid, top.gid);
      fs.chmodSync(up, top.mode & 0o7777);
      options = [`lowerdir=${lowers.join(':')}`, `upperdir=${up}`, `workdir=${work}`];
    } else if (lowers.length === 1) {
      // overlay wants two lower dirs without an upper: one read-only layer is a bind of it.
      fstype = 'bind';
      source = lowers[0]!;
      options = ['bind', 'ro'];
    } else options = [`lowerdir=${lowers.join(':')}`];
    p = place();
    await mountOnPlace(p, source, fstype, options, 'layer overlay');
  } catch (e) {
    if (upper) closePlace(upper);
    if (p?.created) fs.rmSync(p.path, { recursive: false, force: true });
    await undoUpper().catch((e2: unknown) => ctx.log.warn({ err: e2 }, 'removing the overlay upper after a failed mount failed'));
    throw e;
  } finally {
    if (p) closePlace(p);
  }
  ctx.log.info({ container_id: cid, layers: o.lowers.length, writable: o.writable }, 'rootfs assembled from verified layers');
  // Undone after the caller unmounted the overlay itself: then the upper beneath it.
  return { createdDir: p.created, handle: { undo: undoUpper } };
}
