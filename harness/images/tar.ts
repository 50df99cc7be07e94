// A deterministic ustar writer: entries sorted by path, parents added and listed before children,
// one fixed mtime, uid/gid 0 with empty user/group names. The same entries always give the same bytes.
// Entries may also carry owners, an mtime and xattrs (a PAX header before the entry), and be hard
// links, devices or fifos; `{ sorted: false }` writes them exactly as given (order, duplicates, no
// parents added), for layers that test how a reader copes with such archives.

/** What an entry may carry besides its type. */
interface TarAttrs {
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch (default FIXED_MTIME). */
  mtime?: number;
  /** Written as PAX SCHILY.xattr.NAME records. */
  xattrs?: Record<string, Uint8Array | string>;
}

export type TarEntry =
  | ({ type: 'file'; path: string; data: Uint8Array } & TarAttrs)
  | ({ type: 'dir'; path: string } & TarAttrs)
  | ({ type: 'symlink'; path: string; target: string } & TarAttrs)
  | ({ type: 'hardlink'; path: string; target: string } & TarAttrs)
  | ({ type: 'char' | 'block'; path: string; major: number; minor: number } & TarAttrs)
  | ({ type: 'fifo'; path: string } & TarAttrs);

/** The mtime written into every header (seconds since the epoch). */
export const FIXED_MTIME = 0;

const BLOCK = 512;

function octal(n: number, width: number): string {
  // width includes the terminating NUL.
  const s = n.toString(8);
  if (s.length > width - 1) throw new Error(`tar: ${n} does not fit in ${width - 1} octal digits`);
  return s.padStart(width - 1, '0') + '\0';
}

function splitName(p: string): { name: string; prefix: string } {
  if (Buffer.byteLength(p) <= 100) return { name: p, prefix: '' };
  // ustar: prefix (<= 155 bytes) + '/' + name (<= 100 bytes), split at a slash.
  for (let i = p.indexOf('/'); i !== -1; i = p.indexOf('/', i + 1)) {
    const prefix = p.slice(0, i);
    const name = p.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(name) <= 100) return { name, prefix };
  }
  throw new Error(`tar: path too long for ustar: ${p}`);
}

interface HeaderExtra {
  uid?: number;
  gid?: number;
  mtime?: number;
  major?: number;
  minor?: number;
}

function header(path: string, typeflag: string, mode: number, size: number, linkname = '', x: HeaderExtra = {}): Buffer {
  const h = Buffer.alloc(BLOCK, 0);
  const { name, prefix } = splitName(path);
  if (Buffer.byteLength(linkname) > 100) throw new Error(`tar: link target too long: ${linkname}`);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode & 0o7777, 8), 100, 'ascii');
  h.write(octal(x.uid ?? 0, 8), 108, 'ascii');
  h.write(octal(x.gid ?? 0, 8), 116, 'ascii');
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(x.mtime ?? FIXED_MTIME, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii'); // checksum placeholder: eight spaces
  h.write(typeflag, 156, 'ascii');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  // uname/gname stay empty.
  h.write(octal(x.major ?? 0, 8), 329, 'ascii');
  h.write(octal(x.minor ?? 0, 8), 337, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

function normalise(p: string): string {
  const parts = p.split('/').filter((x) => x && x !== '.');
  if (parts.some((x) => x === '..')) throw new Error(`tar: '..' in ${p}`);
  return parts.join('/');
}

/** A PAX 'x' header carrying xattrs (SCHILY.xattr.NAME records; values are raw bytes). */
function paxHeader(path: string, xattrs: Record<string, Uint8Array | string>): Buffer[] {
  const recs: Buffer[] = [];
  for (const k of Object.keys(xattrs).sort()) {
    const v = xattrs[k]!;
    const body = Buffer.concat([Buffer.from(` SCHILY.xattr.${k}=`), typeof v === 'string' ? Buffer.from(v) : Buffer.from(v), Buffer.from('\n')]);
    // The length prefix counts itself.
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    recs.push(Buffer.concat([Buffer.from(String(len)), body]));
  }
  const data = Buffer.concat(recs);
  const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
  const name = `PaxHeaders/${path.split('/').pop() ?? 'x'}`.slice(0, 100);
  return [header(name, 'x', 0o644, data.length), data, Buffer.alloc(pad)];
}

function entryBlocks(e: TarEntry): Buffer[] {
  const chunks: Buffer[] = [];
  if (e.xattrs && Object.keys(e.xattrs).length) chunks.push(...paxHeader(e.path, e.xattrs));
  const x: HeaderExtra = { uid: e.uid, gid: e.gid, mtime: e.mtime };
  switch (e.type) {
    case 'dir':
      chunks.push(header(e.path + '/', '5', e.mode ?? 0o755, 0, '', x));
      break;
    case 'symlink':
      chunks.push(header(e.path, '2', e.mode ?? 0o777, 0, e.target, x));
      break;
    case 'hardlink':
      chunks.push(header(e.path, '1', e.mode ?? 0o644, 0, e.target, x));
      break;
    case 'char':
    case 'block':
      chunks.push(header(e.path, e.type === 'char' ? '3' : '4', e.mode ?? 0o644, 0, '', { ...x, major: e.major, minor: e.minor }));
      break;
    case 'fifo':
      chunks.push(header(e.path, '6', e.mode ?? 0o644, 0, '', x));
      break;
    case 'file': {
      chunks.push(header(e.path, '0', e.mode ?? 0o644, e.data.length, '', x));
      chunks.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
      const pad = (BLOCK - (e.data.length % BLOCK)) % BLOCK;
      if (pad) chunks.push(Buffer.alloc(pad));
      break;
    }
  }
  return chunks;
}

/**
 * The archive bytes for the entries (directories are named with a trailing slash, as GNU tar does).
 * `sorted: false` writes the entries as given: no sorting, no parents added, duplicates kept.
 */
export function writeTar(entries: TarEntry[], opts: { sorted?: boolean } = {}): Buffer {
  if (opts.sorted === false) return Buffer.concat([...entries.flatMap(entryBlocks), Buffer.alloc(2 * BLOCK)]);
  const byPath = new Map<string, TarEntry>();
  for (const e of entries) {
    const p = normalise(e.path);
    if (!p) continue;
    if (byPath.has(p)) throw new Error(`tar: duplicate entry ${p}`);
    byPath.set(p, { ...e, path: p });
  }
  // Every parent directory gets an entry of its own.
  for (const p of [...byPath.keys()]) {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      const have = byPath.get(dir);
      if (!have) byPath.set(dir, { type: 'dir', path: dir });
      else if (have.type !== 'dir') throw new Error(`tar: ${dir} is both a ${have.type} and a directory`);
    }
  }
  // Byte order on the path components, so that a directory comes right before its contents.
  const key = (p: string) => Buffer.from(p.split('/').join('\0'));
  const sorted = [...byPath.values()].sort((a, b) => Buffer.compare(key(a.path), key(b.path)));
  return Buffer.concat([...sorted.flatMap(entryBlocks), Buffer.alloc(2 * BLOCK)]);
}
