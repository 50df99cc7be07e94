// CopyFile: the host pushes files (resolv.conf, hostname, secrets, config maps) into the guest
// in chunks. Semantics follow upstream's agent: file_mode's type bits choose a directory, a
// symlink (data holds the target) or a regular file written at `offset` into a temp file that
// is renamed into place once it reaches file_size; whatever stands at the path is replaced,
// never followed. Only paths beneath the allowed root are taken, and no symlink below the root
// is followed, not even one pointing inside it: each component is opened through the one
// before it (beneath.ts), and modes and owners are set on those descriptors.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import { invalid, withContext, TtrpcError } from './errors.js';
import { namesBelow, openChildDir, openDirBeneath, openFileForWrite, openRoot, removeAt, walk, type Dir } from './beneath.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const WHAT = 'CopyFile';

/** The root itself: walked from the state dir when it lies below it, so that part holds no symlink either. */
function openCopyRoot(root: string, stateDir: string | undefined): Dir {
  const r = path.resolve(root);
  const s = stateDir && path.resolve(stateDir);
  if (s && (r === s || r.startsWith(`${s}/`))) return openDirBeneath(s, r, `${WHAT} root`, 0o755).dir;
  return openRoot(r, true);
}

function makeDir(parent: Dir, name: string, req: grpc.CopyFileRequest): void {
  const st = fs.lstatSync(parent.at(name), { throwIfNoEntry: false });
  if (st && !st.isDirectory()) fs.unlinkSync(parent.at(name));
  const { dir } = openChildDir(parent, name, WHAT, req.file_mode & 0o777);
  try {
    fs.fchmodSync(dir.fd, req.file_mode & 0o7777);
    fs.fchownSync(dir.fd, req.uid, req.gid);
  } finally {
    dir.close();
  }
}

function makeSymlink(parent: Dir, name: string, req: grpc.CopyFileRequest): void {
  const target = Buffer.from(req.data).toString();
  if (!target || target.includes('\0')) throw invalid(`${WHAT} ${parent.child(name)}: a symlink needs a target without NUL bytes`);
  removeAt(parent, name);
  fs.symlinkSync(target, parent.at(name));
  fs.lchownSync(parent.at(name), req.uid, req.gid);
}

function writeChunk(parent: Dir, name: string, req: grpc.CopyFileRequest): void {
  const tmp = `${name}.tmp`;
  // A new upload starts a new temp file: whatever a stale or planted one was is removed, not opened.
  if (req.offset === 0) removeAt(parent, tmp);
  const fd = openFileForWrite(parent, tmp, WHAT, { mode: 0o600, create: req.offset === 0 ? 'new' : 'maybe' });
  try {
    let off = 0;
    // An empty file's data is absent on the wire (proto3 drops empty bytes) and decodes to the
    // field's default, no Uint8Array: CRI's termination log is such a file.
    const data = req.data instanceof Uint8Array ? Buffer.from(req.data.buffer, req.data.byteOffset, req.data.length) : Buffer.alloc(0);
    while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, req.offset + off);
    if (fs.fstatSync(fd).size !== req.file_size) return;
    fs.fchmodSync(fd, req.file_mode & 0o7777);
    fs.fchownSync(fd, req.uid, req.gid);
  } finally {
    fs.closeSync(fd);
  }
  // rename(2) replaces a file or symlink itself; a directory in the way goes first (upstream).
  if (fs.lstatSync(parent.at(name), { throwIfNoEntry: false })?.isDirectory()) removeAt(parent, name);
  fs.renameSync(parent.at(tmp), parent.at(name));
}

/**
 * CopyFile below `root`; `stateDir`, when the root lies below it, is where the walk to the root
 * starts. Returns the name of the directory right below the root that this call made, if it made
 * one: a host without a shared filesystem copies a container's files below `<root>/<id>`, which
 * the agent then removes with the container (removeCopies).
 */
export function copyFile(req: grpc.CopyFileRequest, root: string, stateDir?: string): string | undefined {
  const p = req.path;
  const names = namesBelow(root, p, WHAT);
  const name = names.pop();
  if (name === undefined) throw invalid(`${WHAT}: path ${p} is the allowed root itself`);
  const type = req.file_mode & S_IFMT;
  if (type !== S_IFDIR && type !== S_IFLNK && (req.offset < 0 || req.file_size < 0)) throw invalid(`${WHAT} ${p}: negative offset or size`);
  let top: Dir | undefined;
  let parent: Dir | undefined;
  try {
    top = openCopyRoot(root, stateDir);
    // Missing parents are made with dir_mode's permission bits (upstream's mkdir_all).
    const walked = walk(top, names, WHAT, req.dir_mode & 0o777);
    parent = walked.dir;
    if (type === S_IFDIR) makeDir(parent, name, req);
    else if (type === S_IFLNK) makeSymlink(parent, name, req);
    else writeChunk(parent, name, req);
    return names.length > 0 && walked.created[0] === top.child(names[0]!) ? names[0] : undefined;
  } catch (e) {
    // Our own refusals already name the request and the path.
    throw e instanceof TtrpcError ? e : withContext(`${WHAT} ${p}`, e);
  } finally {
    parent?.close();
    top?.close();
  }
}

/** Removes `<root>/<name>`, a directory CopyFile made, without following a symlink or leaving its filesystem. */
export function removeCopies(name: string, root: string, stateDir?: string): void {
  const top = openCopyRoot(root, stateDir);
  try {
    removeAt(top, name);
  } finally {
    top.close();
  }
}
