// A deterministic ustar writer: entries sorted by path, parents added and listed before children,
// one fixed mtime, uid/gid 0 with empty user/group names. The same entries always give the same bytes.

export type TarEntry =
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'symlink'; path: string; target: string };

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

function header(path: string, typeflag: string, mode: number, size: number, linkname = ''): Buffer {
  const h = Buffer.alloc(BLOCK, 0);
  const { name, prefix } = splitName(path);
  if (Buffer.byteLength(linkname) > 100) throw new Error(`tar: link target too long: ${linkname}`);
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode & 0o7777, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii'); // uid
  h.write(octal(0, 8), 116, 'ascii'); // gid
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(FIXED_MTIME, 12), 136, 'ascii');
  h.write('        ', 148, 'ascii'); // checksum placeholder: eight spaces
  h.write(typeflag, 156, 'ascii');
  h.write(linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  // uname/gname stay empty; devmajor/devminor are zero.
  h.write(octal(0, 8), 329, 'ascii');
  h.write(octal(0, 8), 337, 'ascii');
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

/** The archive bytes for the entries (directories are named with a trailing slash, as GNU tar does). */
export function writeTar(entries: TarEntry[]): Buffer {
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
  const chunks: Buffer[] = [];
  for (const e of sorted) {
    if (e.type === 'dir') chunks.push(header(e.path + '/', '5', e.mode ?? 0o755, 0));
    else if (e.type === 'symlink') chunks.push(header(e.path, '2', 0o777, 0, e.target));
    else {
      chunks.push(header(e.path, '0', e.mode ?? 0o644, e.data.length));
      chunks.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
      const pad = (BLOCK - (e.data.length % BLOCK)) % BLOCK;
      if (pad) chunks.push(Buffer.alloc(pad));
    }
  }
  chunks.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(chunks);
}
