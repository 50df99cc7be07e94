// A pod's verified image layers: each layer file the snapshotter's mounts name
// (proto/layer-mounts.ts) is hot-plugged into the VM once, read-only, as a virtio-blk disk, and a
// container's create carries one `blk` storage per layer plus the overlay storage that assembles
// its rootfs in the guest (proto/layer-storage.ts). A disk stays while a container of the pod
// uses its layer, so containers of one image share it; the file on the host is one per node.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { grpc } from '../proto/gen/types.js';
import type { LayerMounts } from '../proto/layer-mounts.js';
import {
  erofsDataBytes,
  LAYER_HEAD_BYTES,
  LAYER_OVERLAY_FSTYPE,
  LAYER_STORAGE_FSTYPE,
  LAYERS_SUBDIR,
  layerFileBytes,
  layerOverlayOptions,
  layerStorageOptions,
  MAX_LAYERS,
  ZERO_SALT_HEX,
} from '../proto/layer-storage.js';
import { invalid, precondition } from './errdefs.js';

/** What the VMM offers: read-only disks added and removed at run time. */
export interface DiskHotplug {
  /** Attaches `file` read-only as a virtio-blk disk with QEMU id `id`; returns its PCI path in the guest. */
  attachReadonly(id: string, file: string): Promise<string>;
  detach(id: string): Promise<void>;
}

/** The guest's state dir (Kata's /run/kata-containers): layers and bundles below it. */
export const GUEST_STATE_DIR = '/run/kata-containers';
export const guestLayerMountPoint = (name: string): string => path.posix.join(GUEST_STATE_DIR, LAYERS_SUBDIR, name);
/** The container's rootfs in its bundle in the guest, where the agent mounts the overlay of its layers. */
export const guestRootfs = (cid: string): string => path.posix.join(GUEST_STATE_DIR, 'containers', cid, 'rootfs');

interface AttachedLayer {
  diskId: string;
  pciPath: string;
  users: Set<string>;
}

/** A layer file checked against its own superblock and tree size: its data size (the verity hash offset). */
function layerDataBytes(file: string): number {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (e) {
    throw precondition(`layer file ${file}: ${(e as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw precondition(`layer file ${file} is not a regular file`);
    const head = Buffer.alloc(LAYER_HEAD_BYTES);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    let data: number;
    try {
      data = erofsDataBytes(head.subarray(0, n));
    } catch (e) {
      throw precondition(`layer file ${file}: ${(e as Error).message}`);
    }
    if (st.size !== layerFileBytes(data)) throw precondition(`layer file ${file} is ${st.size} bytes, its EROFS image and verity tree make ${layerFileBytes(data)}`);
    return data;
  } finally {
    fs.closeSync(fd);
  }
}

export class PodLayers {
  private readonly attached = new Map<string, Promise<AttachedLayer>>();
  /** Disks being detached: a new attach of the same layer waits (QEMU ids are unique). */
  private readonly detaching = new Map<string, Promise<void>>();

  constructor(
    private readonly disks: DiskHotplug,
    private readonly log: Logger,
  ) {}

  /**
   * Attaches the container's layers (those not attached yet) and returns its storages: one `blk`
   * per layer, topmost first, then the overlay on guestRootfs(cid). On failure, what this call
   * attached is detached again.
   */
  async storagesFor(cid: string, m: LayerMounts): Promise<grpc.Storage[]> {
    if (m.layers.length > MAX_LAYERS) throw invalid(`container ${cid}: ${m.layers.length} layers (at most ${MAX_LAYERS})`);
    const storages: grpc.Storage[] = [];
    const taken: string[] = [];
    try {
      for (const l of m.layers) {
        if (l.fstype !== LAYER_STORAGE_FSTYPE) throw invalid(`container ${cid}: layer ${l.name} is ${l.fstype}, not ${LAYER_STORAGE_FSTYPE}`);
        const file = path.join(m.srcPrefix, l.name);
        const dataBytes = layerDataBytes(file);
        const a = await this.attach(l.name, file);
        a.users.add(cid);
        taken.push(l.name);
        storages.push({
          driver: 'blk',
          driver_options: [],
          source: a.pciPath,
          fstype: LAYER_STORAGE_FSTYPE,
          options: layerStorageOptions({ name: l.name, rootHash: l.rootHash, dataBytes, salt: ZERO_SALT_HEX }),
          mount_point: guestLayerMountPoint(l.name),
          shared: false,
        });
      }
    } catch (e) {
      await this.release(cid, taken);
      throw e;
    }
    storages.push({
      driver: 'overlayfs',
      driver_options: [],
      source: 'none',
      fstype: LAYER_OVERLAY_FSTYPE,
      options: layerOverlayOptions(m.srcPrefix, m.layers, m.writable),
      mount_point: guestRootfs(cid),
      shared: false,
    });
    return storages;
  }

  private attach(name: string, file: string): Promise<AttachedLayer> {
    let p = this.attached.get(name);
    if (!p) {
      // QEMU names the block node `<id>-blk` in at most 31 characters: 80 bits of the name are plenty per pod.
      const diskId = `l${name.slice(0, 20)}`;
      const prior = this.detaching.get(name) ?? Promise.resolve();
      p = prior.then(() => this.disks.attachReadonly(diskId, file)).then((pciPath) => {
        this.log.info({ layer: name, disk: diskId, pciPath }, 'layer disk attached');
        return { diskId, pciPath, users: new Set<string>() };
      });
      this.attached.set(name, p);
      // A failed attach is forgotten, so the next create tries again.
      p.catch(() => this.attached.delete(name));
    }
    return p;
  }

  /**
   * The container no longer uses its layers (the agent removed it): disks no other container
   * uses are detached. `names`: only these layers (undoing a failed create).
   */
  async release(cid: string, names?: string[]): Promise<void> {
    for (const [name, p] of [...this.attached.entries()]) {
      if (names && !names.includes(name)) continue;
      const a = await p.catch(() => undefined);
      if (!a || !a.users.delete(cid) || a.users.size > 0) continue;
      this.attached.delete(name);
      const d = this.disks
        .detach(a.diskId)
        .then(() => this.log.info({ layer: name, disk: a.diskId }, 'layer disk detached'))
        .catch((err: unknown) => this.log.warn({ err, layer: name, disk: a.diskId }, 'detaching a layer disk failed'))
        .finally(() => this.detaching.delete(name));
      this.detaching.set(name, d);
      await d;
    }
  }

  /** Layers attached now, for logs and tests. */
  get count(): number {
    return this.attached.size;
  }
}
