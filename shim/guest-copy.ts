// Bind-mount sources for a guest that shares no filesystem with the host (shared_fs = none), the
// way Kata does without a shared fs: the source is copied into the guest with the agent's
// CopyFile, below the guest's shared directory (the only place CopyFile writes), and the container
// binds the copy. That suits what CRI and the kubelet bind: /etc/hosts, resolv.conf, hostname,
// the termination log, config maps, secrets and projected tokens (a few small files, the maps with
// relative symlinks, which are copied as symlinks). Whatever cannot be a copy (a device, a socket,
// a FIFO) or would fill the guest's memory is refused, naming the mount. A copy is taken once, at
// create: later changes on the host do not reach the guest.
import fs from 'node:fs';
import path from 'node:path';
import type { CallOptions } from '../proto/ttrpc/index.js';
import type { ServiceClient } from '../proto/rpc.js';
import { invalid } from './errdefs.js';

/** What one bind mount may bring into the guest's memory (config maps and secrets are at most 1 MiB each). */
export const COPY_LIMITS = { bytes: 16 << 20, entries: 1024 };
/** One CopyFile carries at most this much data (well below ttrpc's 4 MiB message). */
const CHUNK = 1 << 20;
/** Parents CopyFile makes on the way (the container's dir, mounts/): root's only. */
const DIR_MODE = 0o750;
const { S_IFMT, S_IFDIR, S_IFLNK, O_RDONLY, O_NOFOLLOW, O_NONBLOCK } = fs.constants;

interface Entry {
  /** Host path. */
  source: string;
  /** Guest path. */
  target: string;
  stat: fs.Stats;
  link?: string;
  /** The mount's source itself: followed when it is a symlink, as a bind mount follows it. */
  top?: boolean;
}

export interface GuestAgent {
  agent: Pick<ServiceClient<'grpc.AgentService'>, 'CopyFile'>;
  call: CallOptions;
}

function kindOf(st: fs.Stats): string | null {
  if (st.isFile() || st.isDirectory() || st.isSymbolicLink()) return null;
  if (st.isBlockDevice()) return 'a block device';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isSocket()) return 'a socket';
  if (st.isFIFO()) return 'a FIFO';
  return 'of an unknown type';
}

/** What copyIntoGuest will send for one mount: its entries, parents first. */
export interface CopyPlan {
  what: string;
  entries: Entry[];
}

/**
 * The entries to copy `source` (a file, or a directory tree of files, dirs and symlinks) to
 * `target`, a path below the guest's shared directory; refuses what cannot be copied before
 * anything is sent. `what` names the mount in errors: "container X: bind mount of S at D".
 */
export function planCopy(source: string, target: string, what: string): CopyPlan {
  // The source itself is followed, as a bind mount follows it; nothing below it is.
  const top = fs.statSync(source);
  const out: Entry[] = [];
  let bytes = 0;
  const add = (e: Entry) => {
    const bad = kindOf(e.stat);
    if (bad) throw invalid(`${what}: ${e.source} is ${bad}, which shared_fs = none cannot copy into the guest`);
    out.push(e);
    if (e.stat.isFile()) bytes += e.stat.size;
    if (out.length > COPY_LIMITS.entries || bytes > COPY_LIMITS.bytes) {
      throw invalid(`${what}: more than shared_fs = none copies into the guest (at most ${COPY_LIMITS.entries} entries and ${COPY_LIMITS.bytes >> 20} MiB per mount)`);
    }
  };
  const walk = (src: string, dst: string, st: fs.Stats, isTop = false) => {
    add({ source: src, target: dst, stat: st, ...(st.isSymbolicLink() ? { link: fs.readlinkSync(src) } : {}), ...(isTop ? { top: true } : {}) });
    if (!st.isDirectory()) return;
    // Entry by entry, not the whole listing at once: a huge directory is refused at the cap.
    const dir = fs.opendirSync(src);
    try {
      for (let d = dir.readSync(); d; d = dir.readSync()) {
        const p = path.join(src, d.name);
        walk(p, path.posix.join(dst, d.name), fs.lstatSync(p));
      }
    } finally {
      dir.closeSync();
    }
  };
  walk(source, target, top, true);
  return { what, entries: out };
}

/** A regular file's bytes, exactly the size planned: a file that changed meanwhile is refused, not cut. */
function contents(e: Entry, what: string): Buffer {
  const fd = fs.openSync(e.source, O_RDONLY | O_NONBLOCK | (e.top ? 0 : O_NOFOLLOW));
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size !== e.stat.size) throw invalid(`${what}: ${e.source} changed while it was copied into the guest`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = fs.readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) throw invalid(`${what}: ${e.source} shrank while it was copied into the guest`);
      off += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** Sends a planned copy with the host's modes and owners. */
export async function copyIntoGuest(p: CopyPlan, c: GuestAgent): Promise<void> {
  for (const e of p.entries) {
    const { mode, uid, gid } = e.stat;
    const base = { path: e.target, file_mode: (mode & S_IFMT) | (mode & 0o7777), dir_mode: DIR_MODE, uid, gid, offset: 0 };
    if (e.stat.isDirectory()) {
      await c.agent.CopyFile({ ...base, file_mode: S_IFDIR | (e.stat.mode & 0o7777), file_size: 0, data: new Uint8Array() }, c.call);
    } else if (e.link !== undefined) {
      const data = Buffer.from(e.link);
      await c.agent.CopyFile({ ...base, file_mode: S_IFLNK | 0o777, file_size: data.length, data }, c.call);
    } else {
      const data = contents(e, p.what);
      // An empty file still takes one request: it is created at size 0.
      for (let offset = 0; offset === 0 || offset < data.length; offset += CHUNK) {
        await c.agent.CopyFile({ ...base, file_size: data.length, offset, data: data.subarray(offset, offset + CHUNK) }, c.call);
      }
    }
  }
}
