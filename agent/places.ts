// Where the agent itself creates, chmods, chowns and mounts. Everything lies below its state dir
// (upstream's /run/kata-containers), a root the agent is configured with; below it no path the
// host names is followed through a symlink (beneath.ts), and mounts go onto the directory or
// file that was verified, by file descriptor, not onto a path looked up again.
//
//   <state>/shared/containers        CopyFile's root (upstream's KATA_GUEST_SHARE_DIR); the shared
//                                    filesystem is mounted on it; storages at or below it
//   <state>/sandbox/storage/...      block-device storages (upstream's spath)
//   <state>/sandbox/layers/<name>    image layers: an EROFS layer through dm-verity (genpolicy's
//                                    layers path), only for `blk` storages marked is-layer
//   <state>/sandbox/ephemeral/...    tmpfs storages
//   <state>/sandbox/local/...        local storages
//   <state>/sandbox/shm              the pod's /dev/shm
//   <state>/sandbox/{resolv.conf,ns} the agent's own: DNS, the pod's IPC/UTS namespaces
//   <state>/containers/<id>          the container's bundle: config.json, io/, and at rootfs/ the
//                                    rootfs (a bind of the host-named source, or the overlay of its
//                                    layers, the storage CreateContainer of <id> itself names;
//                                    Kata's /run/kata-containers/<id>/rootfs), upper/ its writable
//                                    layer (a tmpfs of its own)
//
// Sources of bind mounts (a storage's, a container's rootfs) and overlay's directories are paths
// in the guest the host names; they are opened from / without following any symlink and given
// to mount(8) by descriptor (overlay's then show as /proc/PID/fd/N in mountinfo).
import fs from 'node:fs';
import path from 'node:path';
import { mount, type MountSyscall, type PinnedTarget } from '../sys/mount.js';
import { denied, invalid } from './errors.js';
import { isLayerOverlay, isLayerStorage, LAYERS_SUBDIR } from '../proto/layer-storage.js';
import { fdPath, namesBelow, openDirBeneath, openLeaf, openRoot, walk, type Dir } from './beneath.js';

const { O_WRONLY, O_CREAT, O_EXCL } = fs.constants;

export const sharedDir = (stateDir: string): string => path.join(path.resolve(stateDir), 'shared', 'containers');
export const sandboxDir = (stateDir: string): string => path.join(path.resolve(stateDir), 'sandbox');

const atOrBelow = (p: string, dir: string): boolean => p === dir || p.startsWith(dir === '/' ? '/' : `${dir}/`);

export const layersDir = (stateDir: string): string => path.join(path.resolve(stateDir), LAYERS_SUBDIR);
/** A container's bundle (its own dir: a container named `sandbox` or `shared` must not land on the pod's dirs). */
export const bundleDir = (stateDir: string, cid: string): string => path.join(path.resolve(stateDir), 'containers', cid);

/**
 * Storage mount points the agent accepts, as upstream's policy allows them (genpolicy's cpath,
 * spath, ephemeral, shm, layers, and a container's own rootfs for the overlay of its layers).
 * `cid`: the container whose CreateContainer brings the storage (none in CreateSandbox).
 */
export function checkStorageMountPoint(stateDir: string, s: { mount_point: string; driver: string; options: string[] }, cid?: string): void {
  const mp = path.resolve(s.mount_point);
  const shared = sharedDir(stateDir);
  const sb = sandboxDir(stateDir);
  const layers = layersDir(stateDir);
  if (isLayerStorage(s)) {
    if (path.dirname(mp) !== layers || !/^[0-9a-f]{64}$/.test(path.basename(mp))) {
      throw denied(`layer storage mount_point ${s.mount_point} is not ${layers}/<layer name: 64 hex digits>`);
    }
    return;
  }
  if (isLayerOverlay(s)) {
    const own = cid === undefined ? undefined : path.join(bundleDir(stateDir, cid), 'rootfs');
    if (mp !== own) throw denied(`layer overlay mount_point ${s.mount_point} is not the rootfs of the container being created (${own ?? 'only CreateContainer brings one'})`);
    return;
  }
  const ok = atOrBelow(mp, shared) || mp === path.join(sb, 'shm') || ['storage', 'ephemeral', 'local'].some((d) => mp.startsWith(`${sb}/${d}/`));
  if (!ok) {
    throw denied(`storage (driver ${s.driver}) mount_point ${s.mount_point} is outside the storage dirs: ${shared}, ${sb}/{storage,ephemeral,local}/, ${sb}/shm`);
  }
}

/**
 * Guest hooks run as root in the guest: they come from the guest image, never from below the
 * state dir, where the host writes (CopyFile, shared filesystems, storages).
 */
export function checkGuestHookPath(stateDir: string, p: string): void {
  const state = path.resolve(stateDir);
  const real = (q: string) => {
    try {
      return fs.realpathSync(q);
    } catch {
      return path.resolve(q);
    }
  };
  if (atOrBelow(path.resolve(p), state) || atOrBelow(real(p), real(state))) {
    throw denied(`guest_hook_path ${p}: hooks must come from the guest image, not from ${state}, which the host writes`);
  }
}

/** A directory or file the agent mounts on: its parent and itself held open, verified. */
export interface Place {
  path: string;
  parent: Dir;
  name: string;
  /** O_PATH descriptor of the directory or file itself */
  leaf: number;
  /** whether the agent made it (and so removes it once unmounted) */
  created: boolean;
}

/**
 * Makes (when missing) and opens `target` beneath `root`: its parents as directories (0755),
 * itself as a `kind`; a symlink anywhere is refused.
 */
export function preparePlace(root: string, target: string, kind: 'dir' | 'file', what: string): Place {
  const names = namesBelow(root, target, what);
  const name = names.pop();
  if (name === undefined) throw invalid(`${what}: will not mount on ${root} itself`);
  const parent = openDirBeneath(root, path.join(root, ...names), what, 0o755).dir;
  try {
    let created = false;
    try {
      if (kind === 'dir') fs.mkdirSync(parent.at(name), 0o755);
      else fs.closeSync(fs.openSync(parent.at(name), O_WRONLY | O_CREAT | O_EXCL, 0o644));
      created = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const leaf = openLeaf(parent, name);
    const ok = kind === 'dir' ? leaf.stat.isDirectory() : leaf.stat.isFile();
    if (!ok) {
      fs.closeSync(leaf.fd);
      if (leaf.stat.isSymbolicLink()) throw denied(`${what}: ${parent.child(name)} is a symlink, which the agent does not follow here`);
      throw invalid(`${what}: ${parent.child(name)} is not a ${kind === 'dir' ? 'directory' : 'regular file'}`);
    }
    return { path: parent.child(name), parent, name, leaf: leaf.fd, created };
  } catch (e) {
    parent.close();
    throw e;
  }
}

export function closePlace(p: Place): void {
  fs.closeSync(p.leaf);
  p.parent.close();
}

export function pinned(p: Place): PinnedTarget {
  return { path: p.path, ref: fdPath(p.leaf), root: p.parent.at(p.name) };
}

/** An O_PATH descriptor of `p`, opened from / without following any symlink. */
export function openSource(p: string, what: string): { fd: number; stat: fs.Stats } {
  const names = namesBelow('/', p, what);
  const name = names.pop();
  if (name === undefined) throw invalid(`${what}: / cannot be a source`);
  const root = openRoot('/');
  let parent: Dir | undefined;
  try {
    parent = walk(root, names, what).dir;
    const leaf = openLeaf(parent, name);
    if (leaf.stat.isSymbolicLink()) {
      fs.closeSync(leaf.fd);
      throw denied(`${what}: ${p} is a symlink, which the agent does not follow here`);
    }
    return leaf;
  } finally {
    parent?.close();
    root.close();
  }
}

const OVERLAY_DIRS = ['lowerdir', 'upperdir', 'workdir'];

/** overlay's lowerdir/upperdir/workdir options with each directory opened as a source and named by descriptor. */
function pinOverlayDirs(options: string[], label: (k: string) => string, fds: number[]): string[] {
  return options.map((o) => {
    const eq = o.indexOf('=');
    const key = o.slice(0, eq);
    if (eq < 0 || !OVERLAY_DIRS.includes(key)) return o;
    const dirs = o.slice(eq + 1).split(key === 'lowerdir' ? ':' : '\0');
    const refs = dirs.map((d) => {
      const src = openSource(d, label(key));
      fds.push(src.fd);
      if (!src.stat.isDirectory()) throw invalid(`${label(key)}: ${d} is not a directory`);
      return fdPath(src.fd);
    });
    return `${key}=${refs.join(':')}`;
  });
}

/**
 * A mount onto `place`; a bind's source, and overlay's directories, are opened the same way and
 * named by descriptor. `what` prefixes what messages call them ("rootfs source").
 */
let syscall: MountSyscall | undefined;

/** Where the agent's mounts go without mount(8): its keeper in a guest (agent/main.ts); none in local mode. */
export function mountThrough(s: MountSyscall | undefined): void {
  syscall = s;
}

export async function mountOnPlace(place: Place, source: string, fstype: string, options: string[], what = ''): Promise<void> {
  const label = (k: string) => (what ? `${what} ${k}` : k);
  const bind = fstype === 'bind' || fstype === 'rbind' || options.includes('bind') || options.includes('rbind');
  const fds: number[] = [];
  try {
    if (bind) {
      const src = openSource(source, label('source'));
      fds.push(src.fd);
      return await mount(fdPath(src.fd), pinned(place), fstype, options, syscall);
    }
    const opts = fstype === 'overlay' ? pinOverlayDirs(options, label, fds) : options;
    return await mount(source, pinned(place), fstype, opts, syscall);
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

/** The container's rootfs: `source` (the host's or a storage's directory) bound recursively onto `target` in its bundle. */
export async function bindRootfs(source: string, target: string, stateDir: string): Promise<void> {
  const place = preparePlace(stateDir, target, 'dir', 'rootfs');
  try {
    await mountOnPlace(place, source, 'bind', ['rbind'], 'rootfs');
  } finally {
    closePlace(place);
  }
}
