// A deterministic cpio "newc" writer for the initrd: entries sorted by path, fixed owner (0:0),
// fixed mtime, inode numbers assigned in order. Device nodes need no privileges.

export type CpioEntry =
  | { path: string; type: 'dir'; mode?: number }
  | { path: string; type: 'file'; mode?: number; data: Buffer }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'char' | 'block'; mode?: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function record(ino: number, mode: number, nlink: number, mtime: number, name: string, data: Buffer, rmaj = 0, rmin = 0): Buffer[] {
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  const header =
    '070701' +
    hex8(ino) +
    hex8(mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(nlink) +
    hex8(mtime) +
    hex8(data.length) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(rmaj) +
    hex8(rmin) +
    hex8(nameBuf.length) +
    hex8(0); // check
  const parts: Buffer[] = [Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length))];
  if (data.length) parts.push(data, Buffer.alloc(pad4(data.length)));
  return parts;
}

/** Serializes entries (paths relative, no leading '/') into a newc archive. */
export function writeCpio(entries: CpioEntry[], mtime: number): Buffer {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const seen = new Set<string>();
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of sorted) {
    const p = e.path.replace(/^\/+/, '').replace(/\/+$/, '');
    if (!p || seen.has(p)) throw new Error(`cpio: bad or duplicate path ${JSON.stringify(e.path)}`);
    seen.add(p);
    switch (e.type) {
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), 2, mtime, p, Buffer.alloc(0)));
        break;
      case 'file':
        parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), 1, mtime, p, e.data));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, 1, mtime, p, Buffer.from(e.target, 'utf8')));
        break;
      case 'char':
      case 'block':
        parts.push(
          ...record(ino++, (e.type === 'char' ? S_IFCHR : S_IFBLK) | (e.mode ?? 0o600), 1, mtime, p, Buffer.alloc(0), e.major, e.minor),
        );
        break;
    }
  }
  parts.push(...record(0, 0, 1, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}
