// Storages of CreateSandbox/CreateContainer: what to mount where before the container starts.
// Drivers and their meaning follow upstream's agent: `local` (a directory), `ephemeral`
// (tmpfs), `virtio-fs` / `9p` / `watchable-bind` (a shared directory, mounted with the given
// fstype; fstype "bind" bind-mounts), `overlayfs`, and block devices `blk` (by PCI path or
// /dev name), `mmioblk`, `scsi` (by /dev name). The sandbox counts users of each mount point.
// Mount points lie in the agent's storage dirs (places.ts) and are made, chmod'ed, chown'ed and
// mounted on through descriptors, never through a symlink.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { Logger } from './log.js';
import { invalid, withContext } from './errors.js';
import { checkAbsolute } from './spec.js';
import { umount, isMounted } from '../sys/mount.js';
import { resolveBlockSource } from './devices.js';
import { Dir, fdPath, namesBelow, openDirBeneath, openLeaf, removeAt } from './beneath.js';
import { checkStorageMountPoint, closePlace, mountOnPlace, openSource, preparePlace, type Place } from './places.js';
import { isLayerOverlay, isLayerStorage } from '../proto/layer-storage.js';
import { addLayer, addLayerOverlay, type MountedLayer } from './layers.js';

const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;

export const STORAGE_DRIVERS = ['local', 'ephemeral', 'virtio-fs', '9p', 'watchable-bind', 'overlayfs', 'blk', 'mmioblk', 'scsi'] as const;

export interface StorageContext {
  log: Logger;
  /** the agent's state dir: mount points lie below it (places.ts) */
  stateDir: string;
  sysfsRoot: string;
  blockTimeoutMs?: number;
  /** rescan the PCI bus before looking for a disk (guest only) */
  pciRescan?: boolean;
  /** the native helper (dm-verity for layers) */
  runner: string;
  /** the container whose CreateContainer brings the storages (none in CreateSandbox) */
  cid?: string;
  /** a layer this sandbox has mounted, by name (for the overlay of a container's layers) */
  layerOf?: (name: string) => MountedLayer | undefined;
}

/** What a mounted storage leaves to undo. */
export interface StorageHandle {
  stateDir: string;
  mountPoint: string;
  mounted: boolean;
  createdDir: boolean;
  /** an image layer opened through dm-verity */
  layer?: MountedLayer;
  /** what goes after the mount point (a verity device, an overlay's upper) */
  undo?: () => Promise<void>;
}

/** "key=value" options of a storage (mode=, fsgid=) as a map. */
function keyed(options: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const o of options) {
    const i = o.indexOf('=');
    if (i > 0) m.set(o.slice(0, i), o.slice(i + 1));
  }
  return m;
}

/**
 * fsGroup: the storage's tree gets the group and group read (and write unless read-only)
 * permission, directories also setgid. Every entry is opened through its directory without
 * following symlinks (links are skipped) and changed through that descriptor; the walk stays on
 * the storage's own filesystem.
 */
function applyFsGroup(s: grpc.Storage, stateDir: string, log: Logger): void {
  const g = s.fs_group;
  if (!g || !g.group_id) return;
  const mask = s.options.includes('ro') ? 0o440 : 0o660;
  const gid = g.group_id;
  log.info({ mount_point: s.mount_point, fs_group: gid }, 'applying fsGroup ownership');
  const top = openDirBeneath(stateDir, s.mount_point, 'fsGroup').dir;
  const dev = fs.fstatSync(top.fd).dev;
  const dirs: Dir[] = [top];
  try {
    while (dirs.length) {
      const d = dirs.pop()!;
      try {
        fs.fchownSync(d.fd, -1, gid);
        fs.fchmodSync(d.fd, (fs.fstatSync(d.fd).mode & 0o7777) | mask | 0o110 | 0o2000);
        for (const name of fs.readdirSync(d.ref)) {
          const leaf = openLeaf(d, name);
          try {
            const st = leaf.stat;
            if (st.isSymbolicLink() || st.dev !== dev) continue;
            if (st.isDirectory()) {
              dirs.push(new Dir(fs.openSync(d.at(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW), d.child(name)));
              continue;
            }
            // chown/chmod of /proc/PID/fd/N reach exactly the inode opened with O_PATH.
            fs.chownSync(fdPath(leaf.fd), -1, gid);
            fs.chmodSync(fdPath(leaf.fd), (st.mode & 0o7777) | mask);
          } finally {
            fs.closeSync(leaf.fd);
          }
        }
      } finally {
        d.close();
      }
    }
  } finally {
    for (const d of dirs) d.close();
  }
}

async function mounted(s: grpc.Storage, ctx: StorageContext, place: Place, source: string, fstype: string, log: Logger): Promise<StorageHandle> {
  try {
    await mountOnPlace(place, source, fstype, s.options);
  } catch (e) {
    if (place.created) {
      try {
        removeAt(place.parent, place.name);
      } catch (e2) {
        log.warn({ err: e2 }, 'mount point left after a failed mount');
      }
    }
    throw e;
  } finally {
    closePlace(place);
  }
  const handle = { stateDir: ctx.stateDir, mountPoint: s.mount_point, mounted: true, createdDir: place.created };
  try {
    applyFsGroup(s, ctx.stateDir, log);
  } catch (e) {
    await removeStorage(handle, log);
    throw e;
  }
  return handle;
}

export async function addStorage(s: grpc.Storage, ctx: StorageContext): Promise<StorageHandle> {
  if (!(STORAGE_DRIVERS as readonly string[]).includes(s.driver)) {
    throw invalid(`storage ${s.mount_point || s.source}: unknown storage driver ${JSON.stringify(s.driver)}`);
  }
  checkAbsolute(s.mount_point, `storage (driver ${s.driver}) mount_point`);
  checkStorageMountPoint(ctx.stateDir, s, ctx.cid);
  const log = ctx.log.child({ storage_driver: s.driver, mount_point: s.mount_point });
  const what = 'mount point';
  const newPlace = () => preparePlace(ctx.stateDir, s.mount_point, 'dir', what);
  try {
    if (isLayerStorage(s)) {
      const { handle, createdDir } = await addLayer(s, newPlace, { ...ctx, log });
      return { stateDir: ctx.stateDir, mountPoint: s.mount_point, mounted: true, createdDir, ...handle };
    }
    if (isLayerOverlay(s)) {
      if (ctx.cid === undefined || !ctx.layerOf) throw invalid(`storage ${s.mount_point}: a layer overlay comes with CreateContainer only`);
      const { handle, createdDir } = await addLayerOverlay(s, newPlace, ctx.cid, ctx.layerOf, { ...ctx, log });
      return { stateDir: ctx.stateDir, mountPoint: s.mount_point, mounted: true, createdDir, ...handle };
    }
    switch (s.driver) {
      case 'local': {
        const opts = keyed(s.options);
        const fsgid = opts.get('fsgid');
        const mode = opts.get('mode');
        let m: number | undefined;
        if (mode !== undefined) {
          m = parseInt(mode, 8);
          if (!Number.isFinite(m)) throw invalid(`storage ${s.mount_point}: bad mode ${mode}`);
          if (fsgid !== undefined) m |= 0o2000;
        }
        const place = preparePlace(ctx.stateDir, s.mount_point, 'dir', what);
        try {
          const dir = fdPath(place.leaf);
          if (fsgid !== undefined) fs.chownSync(dir, -1, Number(fsgid));
          if (m !== undefined) fs.chmodSync(dir, m);
        } finally {
          closePlace(place);
        }
        log.info('local storage ready');
        return { stateDir: ctx.stateDir, mountPoint: s.mount_point, mounted: false, createdDir: place.created };
      }
      case 'ephemeral': {
        const place = preparePlace(ctx.stateDir, s.mount_point, 'dir', what);
        const h = await mounted(s, ctx, place, s.source || 'tmpfs', s.fstype || 'tmpfs', log);
        log.info('ephemeral storage mounted');
        return h;
      }
      case 'blk':
      case 'mmioblk':
      case 'scsi': {
        if (!s.source) throw invalid(`storage ${s.mount_point}: driver ${s.driver} needs a source`);
        const dev = await resolveBlockSource(ctx.sysfsRoot, s.source, ctx.blockTimeoutMs, ctx.pciRescan);
        const place = preparePlace(ctx.stateDir, s.mount_point, 'dir', what);
        const h = await mounted(s, ctx, place, dev, s.fstype, log);
        log.info({ device: dev }, 'block storage mounted');
        return h;
      }
      default: {
        // virtio-fs, 9p, watchable-bind, overlayfs: a filesystem named by source and fstype.
        if (!s.source) throw invalid(`storage ${s.mount_point}: driver ${s.driver} needs a source`);
        const bind = s.fstype === 'bind' || s.options.includes('bind') || s.options.includes('rbind');
        let kind: 'dir' | 'file' = 'dir';
        if (bind) {
          checkAbsolute(s.source, `storage ${s.mount_point} source`);
          const src = openSource(s.source, 'source');
          fs.closeSync(src.fd);
          if (!src.stat.isDirectory()) kind = 'file';
        }
        const place = preparePlace(ctx.stateDir, s.mount_point, kind, what);
        const h = await mounted(s, ctx, place, s.source, s.fstype, log);
        log.info({ source: s.source, fstype: s.fstype }, 'shared storage mounted');
        return h;
      }
    }
  } catch (e) {
    throw withContext(`storage ${s.driver} at ${s.mount_point}`, e);
  }
}

export async function removeStorage(h: StorageHandle, log: Logger): Promise<void> {
  const names = namesBelow(h.stateDir, h.mountPoint, 'storage');
  const name = names.pop()!;
  let parent: Dir;
  try {
    // Unmounted and removed only where the path still holds no symlink: it may since have been
    // swapped under a shared directory, and umount(8) would follow it elsewhere.
    parent = openDirBeneath(h.stateDir, path.join(h.stateDir, ...names), 'storage').dir;
  } catch (e) {
    log.warn({ err: e, mount_point: h.mountPoint }, 'storage mount point no longer reachable without a symlink: left as it is');
    return;
  }
  try {
    if (h.mounted && isMounted(h.mountPoint)) {
      await umount(parent.at(name)).catch(async (e) => {
        log.warn({ err: e, mount_point: h.mountPoint }, 'umount failed, detaching lazily');
        await umount(parent.at(name), true);
      });
    }
    if (h.createdDir) {
      try {
        const st = fs.lstatSync(parent.at(name));
        if (st.isDirectory()) fs.rmdirSync(parent.at(name));
        else if (st.isFile() && st.size === 0) removeAt(parent, name);
      } catch {
        /* not empty or already gone: left as upstream leaves it */
      }
    }
  } finally {
    parent.close();
  }
  await h.undo?.();
}
