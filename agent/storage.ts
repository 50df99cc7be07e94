// Storages of CreateSandbox/CreateContainer: what to mount where before the container starts.
// Drivers and their meaning follow upstream's agent: `local` (a directory), `ephemeral`
// (tmpfs), `virtio-fs` / `9p` / `watchable-bind` (a shared directory, mounted with the given
// fstype; fstype "bind" bind-mounts), `overlayfs`, and block devices `blk` (by PCI path or
// /dev name), `mmioblk`, `scsi` (by /dev name). The sandbox counts users of each mount point.
import fs from 'node:fs';
import type { grpc } from '../proto/gen/types.js';
import type { Logger } from './log.js';
import { invalid, withContext } from './errors.js';
import { checkAbsolute } from './spec.js';
import { mount, umount, isMounted } from '../sys/mount.js';
import { resolveBlockSource } from './devices.js';

export const STORAGE_DRIVERS = ['local', 'ephemeral', 'virtio-fs', '9p', 'watchable-bind', 'overlayfs', 'blk', 'mmioblk', 'scsi'] as const;

export interface StorageContext {
  log: Logger;
  sysfsRoot: string;
  blockTimeoutMs?: number;
  /** rescan the PCI bus before looking for a disk (guest only) */
  pciRescan?: boolean;
}

/** What a mounted storage leaves to undo. */
export interface StorageHandle {
  mountPoint: string;
  mounted: boolean;
  createdDir: boolean;
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

function mkdirp(dir: string): boolean {
  if (fs.existsSync(dir)) return false;
  fs.mkdirSync(dir, { recursive: true });
  return true;
}

function applyFsGroup(s: grpc.Storage, log: Logger): void {
  const g = s.fs_group;
  if (!g || !g.group_id) return;
  const readOnly = s.options.includes('ro');
  const mask = readOnly ? 0o440 : 0o660;
  const walk = (p: string) => {
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) return;
    let m = mask;
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p)) walk(`${p}/${e}`);
      m |= 0o110 | 0o2000;
    }
    fs.chownSync(p, -1, g.group_id);
    fs.chmodSync(p, (st.mode & 0o7777) | m);
  };
  log.info({ mount_point: s.mount_point, fs_group: g.group_id }, 'applying fsGroup ownership');
  walk(s.mount_point);
}

export async function addStorage(s: grpc.Storage, ctx: StorageContext): Promise<StorageHandle> {
  if (!(STORAGE_DRIVERS as readonly string[]).includes(s.driver)) {
    throw invalid(`storage ${s.mount_point || s.source}: unknown storage driver ${JSON.stringify(s.driver)}`);
  }
  checkAbsolute(s.mount_point, `storage (driver ${s.driver}) mount_point`);
  const log = ctx.log.child({ storage_driver: s.driver, mount_point: s.mount_point });
  try {
    switch (s.driver) {
      case 'local': {
        const createdDir = mkdirp(s.mount_point);
        const opts = keyed(s.options);
        const fsgid = opts.get('fsgid');
        if (fsgid !== undefined) fs.chownSync(s.mount_point, -1, Number(fsgid));
        const mode = opts.get('mode');
        if (mode !== undefined) {
          let m = parseInt(mode, 8);
          if (!Number.isFinite(m)) throw invalid(`storage ${s.mount_point}: bad mode ${mode}`);
          if (fsgid !== undefined) m |= 0o2000;
          fs.chmodSync(s.mount_point, m);
        }
        log.info('local storage ready');
        return { mountPoint: s.mount_point, mounted: false, createdDir };
      }
      case 'ephemeral': {
        const createdDir = mkdirp(s.mount_point);
        await mount(s.source || 'tmpfs', s.mount_point, s.fstype || 'tmpfs', s.options);
        applyFsGroup(s, log);
        log.info('ephemeral storage mounted');
        return { mountPoint: s.mount_point, mounted: true, createdDir };
      }
      case 'blk':
      case 'mmioblk':
      case 'scsi': {
        if (!s.source) throw invalid(`storage ${s.mount_point}: driver ${s.driver} needs a source`);
        const dev = await resolveBlockSource(ctx.sysfsRoot, s.source, ctx.blockTimeoutMs, ctx.pciRescan);
        const createdDir = mkdirp(s.mount_point);
        await mount(dev, s.mount_point, s.fstype, s.options);
        applyFsGroup(s, log);
        log.info({ device: dev }, 'block storage mounted');
        return { mountPoint: s.mount_point, mounted: true, createdDir };
      }
      default: {
        // virtio-fs, 9p, watchable-bind, overlayfs: a filesystem named by source and fstype.
        if (!s.source) throw invalid(`storage ${s.mount_point}: driver ${s.driver} needs a source`);
        if (s.fstype === 'bind' || s.options.includes('bind') || s.options.includes('rbind')) checkAbsolute(s.source, `storage ${s.mount_point} source`);
        const isFile = s.fstype === 'bind' && fs.existsSync(s.source) && !fs.statSync(s.source).isDirectory();
        let createdDir = false;
        if (isFile) {
          if (!fs.existsSync(s.mount_point)) {
            mkdirp(s.mount_point.replace(/\/[^/]*$/, '') || '/');
            fs.writeFileSync(s.mount_point, '');
            createdDir = true;
          }
        } else {
          createdDir = mkdirp(s.mount_point);
        }
        await mount(s.source, s.mount_point, s.fstype, s.options);
        applyFsGroup(s, log);
        log.info({ source: s.source, fstype: s.fstype }, 'shared storage mounted');
        return { mountPoint: s.mount_point, mounted: true, createdDir };
      }
    }
  } catch (e) {
    throw withContext(`storage ${s.driver} at ${s.mount_point}`, e);
  }
}

export async function removeStorage(h: StorageHandle, log: Logger): Promise<void> {
  if (h.mounted && isMounted(h.mountPoint)) {
    await umount(h.mountPoint).catch(async (e) => {
      log.warn({ err: e, mount_point: h.mountPoint }, 'umount failed, detaching lazily');
      await umount(h.mountPoint, true);
    });
  }
  if (h.createdDir) {
    try {
      const st = fs.lstatSync(h.mountPoint);
      if (st.isDirectory()) fs.rmdirSync(h.mountPoint);
      else if (st.size === 0) fs.unlinkSync(h.mountPoint);
    } catch {
      /* not empty or already gone: left as upstream leaves it */
    }
  }
}
