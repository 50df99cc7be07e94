// Paths below a root, resolved the way openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) would,
// from node, which has no openat: one component at a time, each opened with O_NOFOLLOW through
// the previous directory's file descriptor, named /proc/PID/fd/N/NAME. The kernel resolves
// /proc/PID/fd/N to exactly the directory that was opened (not to a path looked up again), and
// O_NOFOLLOW refuses a symlink as the last component, so each step is a lookup of one name in a
// directory already verified to be beneath the root. Whatever swaps a component for a symlink at
// any moment (the host on a shared directory, a container in its volume) makes the walk fail;
// it never leads it elsewhere. Work on the result goes through the same descriptors: fchmod,
// fchown, mkdir/symlink/unlink/rename/open of a name in a pinned directory.
//
// What this relies on: /proc is procfs (the guest init mounts it; no storage may be mounted
// there) and paths carry no '..' (refused before the walk).
import fs from 'node:fs';
import path from 'node:path';
import { denied, invalid } from './errors.js';

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;
/** O_PATH (x86-64, arm64): a reference to an inode without opening it for I/O. Node does not export it. */
const O_PATH = 0o10000000;
const PATH_MAX = 4096;

/** A name for an open file descriptor that every process of this machine resolves to the opened inode. */
export function fdPath(fd: number): string {
  return `/proc/${process.pid}/fd/${fd}`;
}

/** An open directory verified to be where `path` says. */
export class Dir {
  constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  /** `name` in exactly this directory, as a path. */
  at(name: string): string {
    return `${fdPath(this.fd)}/${name}`;
  }

  get ref(): string {
    return fdPath(this.fd);
  }

  child(name: string): string {
    return path.join(this.path, name);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

const errno = (e: unknown): string | undefined => (e as NodeJS.ErrnoException)?.code;

/** The absolute, '..'-free path `p` as names below `root` (empty: the root itself). */
export function namesBelow(root: string, p: string, what: string): string[] {
  if (!p || !path.isAbsolute(p) || p.includes('\0') || p.split('/').includes('..')) {
    throw invalid(`${what}: path ${JSON.stringify(p)} must be absolute without '..'`);
  }
  if (p.length > PATH_MAX) throw invalid(`${what}: path longer than ${PATH_MAX} bytes`);
  const r = path.resolve(root);
  const n = path.resolve(p);
  if (n !== r && !n.startsWith(r === '/' ? '/' : `${r}/`)) throw denied(`${what}: ${p} is outside ${r}`);
  return n === r ? [] : n.slice(r === '/' ? 1 : r.length + 1).split('/');
}

/** A root the agent was configured with (trusted as named, symlinks in its own path included). */
export function openRoot(root: string, create = false): Dir {
  if (create) fs.mkdirSync(root, { recursive: true });
  return new Dir(fs.openSync(root, O_RDONLY | O_DIRECTORY), path.resolve(root));
}

/** Why `name` in `dir` could not be used as a directory: a symlink is a way out, refused. */
function notADir(dir: Dir, name: string, what: string, e: unknown): Error {
  const code = errno(e);
  if (code !== 'ENOTDIR' && code !== 'ELOOP') return e as Error;
  const st = fs.lstatSync(dir.at(name), { throwIfNoEntry: false });
  if (!st || st.isSymbolicLink() || code === 'ELOOP') {
    return denied(`${what}: ${dir.child(name)} is a symlink, which the agent does not follow here`);
  }
  return invalid(`${what}: ${dir.child(name)} is not a directory`);
}

/**
 * The directory `name` in `dir`, never through a symlink. With `mode`, a missing one is made
 * (exactly that mode, umask aside) and `created` says so.
 */
export function openChildDir(dir: Dir, name: string, what: string, mode?: number): { dir: Dir; created: boolean } {
  let created = false;
  if (mode !== undefined) {
    try {
      fs.mkdirSync(dir.at(name), mode);
      created = true;
    } catch (e) {
      if (errno(e) !== 'EEXIST') throw e;
    }
  }
  let fd: number;
  try {
    fd = fs.openSync(dir.at(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  } catch (e) {
    throw notADir(dir, name, what, e);
  }
  try {
    if (created) fs.fchmodSync(fd, mode!);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return { dir: new Dir(fd, dir.child(name)), created };
}

/** Walks `names` below `from` (which stays open); returns the last directory, open. */
export function walk(from: Dir, names: string[], what: string, mode?: number): { dir: Dir; created: string[] } {
  let cur = from;
  const created: string[] = [];
  try {
    for (const name of names) {
      if (name === '' || name === '.') continue;
      const next = openChildDir(cur, name, what, mode);
      if (cur !== from) cur.close();
      cur = next.dir;
      if (next.created) created.push(cur.path);
    }
  } catch (e) {
    if (cur !== from) cur.close();
    throw e;
  }
  return { dir: cur === from ? new Dir(fs.openSync(from.ref, O_RDONLY | O_DIRECTORY), from.path) : cur, created };
}

/** The directory `target` beneath the trusted `root`, walked without following symlinks. */
export function openDirBeneath(root: string, target: string, what: string, mode?: number): { dir: Dir; created: string[] } {
  const names = namesBelow(root, target, what);
  const r = openRoot(root, mode !== undefined);
  try {
    return walk(r, names, what, mode);
  } finally {
    r.close();
  }
}

/** An O_PATH reference to `name` in `dir` itself (a symlink is referenced, not followed), with its type. */
export function openLeaf(dir: Dir, name: string): { fd: number; stat: fs.Stats } {
  const fd = fs.openSync(dir.at(name), O_PATH | O_NOFOLLOW);
  try {
    return { fd, stat: fs.fstatSync(fd) };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/**
 * Removes `name` from `dir`: a file or symlink is unlinked, a directory emptied depth-first the
 * same way and removed. Nothing is followed; a directory on another filesystem (a mount) is
 * left alone, so the removal stops there with ENOTEMPTY/EBUSY rather than reach into it.
 */
export function removeAt(dir: Dir, name: string): void {
  const st = fs.lstatSync(dir.at(name), { throwIfNoEntry: false });
  if (!st) return;
  if (!st.isDirectory()) {
    fs.unlinkSync(dir.at(name));
    return;
  }
  let sub: Dir;
  try {
    sub = new Dir(fs.openSync(dir.at(name), O_RDONLY | O_DIRECTORY | O_NOFOLLOW), dir.child(name));
  } catch (e) {
    // Swapped for something else since the lstat: remove whatever is there now, never through it.
    if (errno(e) === 'ENOTDIR' || errno(e) === 'ELOOP') return fs.unlinkSync(dir.at(name));
    throw e;
  }
  try {
    if (fs.fstatSync(sub.fd).dev === fs.fstatSync(dir.fd).dev) {
      for (const entry of fs.readdirSync(sub.ref)) removeAt(sub, entry);
    }
  } finally {
    sub.close();
  }
  fs.rmdirSync(dir.at(name));
}

/** Removes `target` (below the trusted `root`) as removeAt does; a path through a symlink is refused. */
export function removeBeneath(root: string, target: string, what: string): void {
  const names = namesBelow(root, target, what);
  const leaf = names.pop();
  if (leaf === undefined) throw invalid(`${what}: will not remove the root ${root}`);
  let parent: Dir;
  try {
    parent = openDirBeneath(root, path.join(root, ...names), what).dir;
  } catch (e) {
    if (errno(e) === 'ENOENT') return;
    throw e;
  }
  try {
    removeAt(parent, leaf);
  } finally {
    parent.close();
  }
}

/** Opens `name` in `dir` for writing: a regular file (created with `mode` when missing), never a link, FIFO or device. */
export function openFileForWrite(dir: Dir, name: string, what: string, o: { mode: number; create: 'new' | 'maybe' }): number {
  const flags = O_WRONLY | O_NOFOLLOW | O_NONBLOCK | (o.create === 'new' ? O_CREAT | O_EXCL : O_CREAT);
  let fd: number;
  try {
    fd = fs.openSync(dir.at(name), flags, o.mode);
  } catch (e) {
    if (errno(e) === 'ELOOP') throw denied(`${what}: ${dir.child(name)} is a symlink; the agent writes no file through one`);
    throw e;
  }
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd);
    throw denied(`${what}: ${dir.child(name)} is not a regular file`);
  }
  return fd;
}

/** Writes `name` in `dir` whole: a new temp file renamed over it, so a link planted at either name is replaced, never followed. */
export function replaceFileAt(dir: Dir, name: string, data: string | Uint8Array, mode: number, what: string): void {
  const tmp = `.${name}.tmp`;
  removeAt(dir, tmp);
  const fd = openFileForWrite(dir, tmp, what, { mode, create: 'new' });
  try {
    fs.writeFileSync(fd, data);
    fs.fchmodSync(fd, mode);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(dir.at(tmp), dir.at(name));
}
