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
const { S_IFMT, S_IFDIR, S_IFLNK, O_RDONLY, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY } = fs.constants;

interface Entry {
  /** Guest path. */
  target: string;
  stat: fs.Stats;
  link?: string;
  /** A regular file's bytes, read when planned. */
  data?: Buffer;
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

/** What copyIntoGuest will send for one mount: its entries, parents first, files with their bytes. */
export interface CopyPlan {
  what: string;
  entries: Entry[];
}

/** `name` in the directory open at `fd`: resolves that directory itself, then exactly one component. */
const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;

/**
 * Reads `source` (a file, or a directory tree of files, dirs and symlinks) for a copy at `target`,
 * a path below the guest's shared directory; refuses what cannot be copied before anything is
 * sent. `what` names the mount in errors: "container X: bind mount of S at D". The source itself
 * is followed, as a bind mount follows it; below it the walk goes from descriptor to descriptor
 * and follows no symlink, so a directory swapped for a link meanwhile cannot lead it elsewhere on
 * the host, and each file read is the one its entry describes.
 */
export function planCopy(source: string, target: string, what: string): CopyPlan {
  const entries: Entry[] = [];
  let bytes = 0;
  const refuse = (why: string) => invalid(`${what}: ${why}`);
  const count = (size: number) => {
    bytes += size;
    if (entries.length >= COPY_LIMITS.entries || bytes > COPY_LIMITS.bytes) {
      throw refuse(`more than shared_fs = none copies into the guest (at most ${COPY_LIMITS.entries} entries and ${COPY_LIMITS.bytes >> 20} MiB per mount)`);
    }
  };
  /** Opens `p` and checks it is still what `st` (taken from its path) describes. */
  const open = (p: string, shown: string, st: fs.Stats, flags: number) => {
    const fd = fs.openSync(p, flags);
    const now = fs.fstatSync(fd);
    if (now.ino !== st.ino || now.dev !== st.dev) {
      fs.closeSync(fd);
      throw refuse(`${shown} changed while it was copied into the guest`);
    }
    return fd;
  };
  const readFile = (fd: number, shown: string, size: number): Buffer => {
    const buf = Buffer.alloc(size);
    for (let off = 0; off < size; ) {
      const n = fs.readSync(fd, buf, off, size - off, off);
      if (n === 0) throw refuse(`${shown} shrank while it was copied into the guest`);
      off += n;
    }
    return buf;
  };
  const add = (p: string, shown: string, dst: string, st: fs.Stats, follow: boolean) => {
    const bad = kindOf(st);
    if (bad) throw refuse(`${shown} is ${bad}, which shared_fs = none cannot copy into the guest`);
    count(st.isFile() ? st.size : 0);
    if (st.isSymbolicLink()) return void entries.push({ target: dst, stat: st, link: fs.readlinkSync(p) });
    const nofollow = follow ? 0 : O_NOFOLLOW;
    if (st.isFile()) {
      const fd = open(p, shown, st, O_RDONLY | O_NONBLOCK | nofollow);
      try {
        return void entries.push({ target: dst, stat: st, data: readFile(fd, shown, st.size) });
      } finally {
        fs.closeSync(fd);
      }
    }
    entries.push({ target: dst, stat: st });
    const fd = open(p, shown, st, O_RDONLY | O_DIRECTORY | nofollow);
    try {
      // Entry by entry, not the whole listing at once: a huge directory is refused at the cap.
      const dir = fs.opendirSync(`/proc/self/fd/${fd}`);
      try {
        for (let d = dir.readSync(); d; d = dir.readSync()) {
          add(at(fd, d.name), path.join(shown, d.name), path.posix.join(dst, d.name), fs.lstatSync(at(fd, d.name)), false);
        }
      } finally {
        dir.closeSync();
      }
    } finally {
      fs.closeSync(fd);
    }
  };
  add(source, source, target, fs.statSync(source), true);
  return { what, entries };
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
      const data = e.data ?? Buffer.alloc(0);
      // An empty file still takes one request: it is created at size 0.
      for (let offset = 0; offset === 0 || offset < data.length; offset += CHUNK) {
        await c.agent.CopyFile({ ...base, file_size: data.length, offset, data: data.subarray(offset, offset + CHUNK) }, c.call);
      }
    }
  }
}
