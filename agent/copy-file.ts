// CopyFile: the host pushes files (resolv.conf, hostname, secrets, config maps) into the guest
// in chunks. Semantics follow upstream's agent: file_mode's type bits choose a directory, a
// symlink (data holds the target) or a regular file written at `offset` into a temp file that
// is renamed into place once it reaches file_size. Only paths under the allowed root are taken.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import { denied, invalid, withContext } from './errors.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

/** The nearest existing ancestor's real path must stay under the root's real path. */
function checkInside(p: string, root: string): void {
  const realRoot = fs.realpathSync(root);
  let probe = path.dirname(p);
  while (!fs.existsSync(probe)) probe = path.dirname(probe);
  const real = fs.realpathSync(probe);
  if (real !== realRoot && !real.startsWith(`${realRoot}/`)) {
    throw denied(`CopyFile: ${p} resolves outside ${root} (through ${probe} -> ${real})`);
  }
}

export function copyFile(req: grpc.CopyFileRequest, root: string): void {
  const p = req.path;
  if (!p || !path.isAbsolute(p) || p.split('/').includes('..') || p.includes('\0')) {
    throw invalid(`CopyFile: path ${JSON.stringify(p)} must be absolute without '..'`);
  }
  const rootN = path.resolve(root);
  if (!(p === rootN || p.startsWith(`${rootN}/`))) throw denied(`CopyFile: path ${p} is outside the allowed root ${rootN}`);
  if (p === rootN) throw invalid(`CopyFile: path ${p} is the allowed root itself`);
  if (!fs.existsSync(rootN)) fs.mkdirSync(rootN, { recursive: true });
  try {
    checkInside(p, rootN);
    const parent = path.dirname(p);
    if (!fs.existsSync(parent)) {
      fs.mkdirSync(parent, { recursive: true });
      fs.chmodSync(parent, req.dir_mode & 0o7777);
    }
    const type = req.file_mode & S_IFMT;
    if (type === S_IFDIR) {
      try {
        fs.mkdirSync(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      fs.chmodSync(p, req.file_mode & 0o7777);
      fs.chownSync(p, req.uid, req.gid);
      return;
    }
    if (type === S_IFLNK) {
      const st = fs.lstatSync(p, { throwIfNoEntry: false });
      if (st?.isSymbolicLink()) fs.unlinkSync(p);
      fs.symlinkSync(Buffer.from(req.data).toString(), p);
      fs.lchownSync(p, req.uid, req.gid);
      return;
    }
    if (req.offset < 0 || req.file_size < 0) throw invalid(`CopyFile ${p}: negative offset or size`);
    const tmp = `${p}.tmp`;
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    try {
      if (req.offset === 0) fs.ftruncateSync(fd, 0);
      let off = 0;
      const data = Buffer.from(req.data.buffer, req.data.byteOffset, req.data.length);
      while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off, req.offset + off);
      const size = fs.fstatSync(fd).size;
      if (size !== req.file_size) return;
      fs.fchmodSync(fd, req.file_mode & 0o7777);
      fs.fchownSync(fd, req.uid, req.gid);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, p);
  } catch (e) {
    throw withContext(`CopyFile ${p}`, e);
  }
}
