// A streaming tar reader for image layers: ustar, old GNU and POSIX (PAX) headers, GNU long
// names and link names, base-256 numbers, per-entry and global PAX records with xattrs
// (SCHILY.xattr.*, LIBARCHIVE.xattr.*) and sub-second mtimes. Nothing is ever extracted: each entry
// is handed to the caller, which streams its body elsewhere.
//
// Names stay bytes: a path is a "byte string" (latin1, one char per byte), so a name that is not
// UTF-8 survives unchanged and sorts by its bytes. `display()` turns one into readable text.
//
// Refused with a TarError (and a clear message): bad header checksums, a stream that ends inside
// an entry, sparse files (GNU 'S', GNU.sparse.* records), multi-volume parts, unknown entry types,
// and metadata records past their size limits.
import { ChunkReader, TruncatedError } from './chunks.js';

export const TAR_BLOCK = 512;
/** Largest PAX header or GNU long name/link we read (a path is at most 4096 bytes on Linux). */
export const MAX_META_BYTES = 1024 * 1024;

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface TarEntry {
  type: TarEntryType;
  /** Byte string, as written in the archive (not normalised). */
  path: string;
  /** Symlink target or hardlink target, byte string. */
  linkname: string;
  /** Permission bits with setuid, setgid and sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Body bytes (regular files only; 0 for everything else). */
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  devmajor: number;
  devminor: number;
  /** xattr name (byte string) -> value. */
  xattrs: Map<string, Buffer>;
  /** Where the header started in the uncompressed stream (for error messages). */
  offset: number;
}

export class TarError extends Error {
  override readonly name = 'TarError';
  readonly code = 'KATATS_LAYER_TAR';
}

/** A byte string shown as text (UTF-8 where it is, escapes elsewhere). */
export function display(bytes: string): string {
  return JSON.stringify(Buffer.from(bytes, 'latin1').toString('utf8'));
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function cstring(b: Buffer, start: number, len: number): string {
  const field = b.subarray(start, start + len);
  const nul = field.indexOf(0);
  return (nul === -1 ? field : field.subarray(0, nul)).toString('latin1');
}

/** An octal field (spaces and NULs around it allowed) or a GNU base-256 number. */
function number(b: Buffer, start: number, len: number, what: string, at: number): number {
  const f = b.subarray(start, start + len);
  if (f[0]! & 0x80) {
    // Base-256, big-endian two's complement, the top bit of the first byte a marker.
    const negative = (f[0]! & 0x40) !== 0;
    let v = 0n;
    for (let i = 0; i < f.length; i++) {
      let byte = i === 0 ? f[0]! & 0x7f : f[i]!;
      if (negative) byte ^= i === 0 ? 0x7f : 0xff;
      v = (v << 8n) | BigInt(byte);
    }
    if (negative) v = -(v + 1n);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw new TarError(`tar: ${what} out of range in the header at ${at}`);
    return Number(v);
  }
  const s = f.toString('latin1').replace(/\0.*$/s, '').trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarError(`tar: ${what} "${s}" is not an octal number in the header at ${at}`);
  const v = parseInt(s, 8);
  if (!Number.isSafeInteger(v)) throw new TarError(`tar: ${what} out of range in the header at ${at}`);
  return v;
}

function checksumOk(h: Buffer): boolean {
  const stored = h.subarray(148, 156).toString('latin1').replace(/\0.*$/s, '').trim();
  if (!/^[0-7]+$/.test(stored)) return false;
  const want = parseInt(stored, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < TAR_BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += c;
    signed += c > 127 ? c - 256 : c;
  }
  return want === unsigned || want === signed;
}

interface PaxRecords {
  [key: string]: Buffer;
}

/** "LEN KEY=VALUE\n" records; values are bytes (xattr values may be binary). */
function parsePax(body: Buffer, at: number): PaxRecords {
  const out: PaxRecords = Object.create(null) as PaxRecords;
  let pos = 0;
  while (pos < body.length) {
    if (body[pos] === 0) break; // padding some writers leave
    const sp = body.indexOf(0x20, pos);
    if (sp === -1 || sp - pos > 20) throw new TarError(`tar: malformed PAX record in the header at ${at}`);
    const len = Number(body.subarray(pos, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= sp - pos + 1 || pos + len > body.length || body[pos + len - 1] !== 0x0a) {
      throw new TarError(`tar: malformed PAX record length in the header at ${at}`);
    }
    const rec = body.subarray(sp + 1, pos + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new TarError(`tar: PAX record without a key in the header at ${at}`);
    out[rec.subarray(0, eq).toString('latin1')] = Buffer.from(rec.subarray(eq + 1));
    pos += len;
  }
  return out;
}

function paxTime(v: string, at: number): { sec: number; nsec: number } {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(v);
  if (!m) throw new TarError(`tar: PAX time "${v}" is not a number in the header at ${at}`);
  let sec = Number(m[2]);
  let nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9));
  if (m[1] === '-') {
    sec = -sec;
    if (nsec) {
      sec -= 1;
      nsec = 1_000_000_000 - nsec;
    }
  }
  if (!Number.isSafeInteger(sec)) throw new TarError(`tar: PAX time "${v}" out of range in the header at ${at}`);
  return { sec, nsec };
}

function paxInt(v: string, what: string, at: number): number {
  if (!/^\d+$/.test(v)) throw new TarError(`tar: PAX ${what} "${v}" is not a number in the header at ${at}`);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new TarError(`tar: PAX ${what} out of range in the header at ${at}`);
  return n;
}

/** The xattrs named by SCHILY.xattr.NAME (raw) and LIBARCHIVE.xattr.NAME (URL-encoded name, base64 value). */
function paxXattrs(recs: PaxRecords, into: Map<string, Buffer>): void {
  for (const [k, v] of Object.entries(recs)) {
    if (k.startsWith('SCHILY.xattr.')) into.set(k.slice('SCHILY.xattr.'.length), v);
    else if (k.startsWith('LIBARCHIVE.xattr.')) {
      const name = Buffer.from(decodeURIComponent(Buffer.from(k.slice('LIBARCHIVE.xattr.'.length), 'latin1').toString('utf8')), 'utf8').toString('latin1');
      if (!into.has(name)) into.set(name, Buffer.from(v.toString('latin1'), 'base64'));
    }
  }
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
  D: 'dir',
};

export interface TarReaderOptions {
  /** Limit for one PAX header or GNU long name (default MAX_META_BYTES). */
  maxMetaBytes?: number;
}

/**
 * Reads entries one at a time. After next() returns an entry, the caller must consume its body
 * with body() (or leave it: the next call to next() skips it) before asking for the next entry.
 */
export class TarReader {
  private pendingBody = 0;
  private currentSize = 0;
  private globalPax: PaxRecords = Object.create(null) as PaxRecords;
  private ended = false;
  private readonly maxMeta: number;

  constructor(
    private readonly src: ChunkReader,
    o: TarReaderOptions = {},
  ) {
    this.maxMeta = o.maxMetaBytes ?? MAX_META_BYTES;
  }

  private async skipPending(): Promise<void> {
    if (this.pendingBody) {
      const n = this.pendingBody;
      this.pendingBody = 0;
      this.currentSize = 0;
      await this.src.skip(n);
    }
  }

  /** Streams the current entry's body (entry.size bytes; the padding is skipped) to `sink`. */
  async body(sink: (piece: Buffer) => void | Promise<void>): Promise<void> {
    const padded = this.pendingBody;
    const size = this.currentSize;
    this.pendingBody = 0;
    this.currentSize = 0;
    try {
      await this.src.stream(size, sink);
      await this.src.skip(padded - size);
    } catch (err) {
      if (err instanceof TruncatedError) throw new TarError(`tar: the archive is truncated (${err.message})`);
      throw err;
    }
  }

  private async readMeta(size: number, kind: string, at: number): Promise<Buffer> {
    if (size > this.maxMeta) throw new TarError(`tar: ${kind} of ${size} bytes in the header at ${at} (limit ${this.maxMeta})`);
    const padded = Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
    const b = padded ? await this.src.read(padded) : Buffer.alloc(0);
    if (b === null) throw new TarError(`tar: the archive ends inside the ${kind} at ${at}`);
    return b.subarray(0, size);
  }

  /** The next entry, or null at the end of the archive. */
  async next(): Promise<TarEntry | null> {
    if (this.ended) return null;
    try {
      await this.skipPending();
      let longName: string | undefined;
      let longLink: string | undefined;
      let pax: PaxRecords | undefined;
      for (;;) {
        const at = this.src.position;
        const h = await this.src.read(TAR_BLOCK);
        if (h === null) {
          // No end-of-archive marker: accepted where a header would start (Go's reader does too).
          if (longName !== undefined || longLink !== undefined || pax) throw new TarError(`tar: the archive ends after an extended header at ${at}`);
          this.ended = true;
          return null;
        }
        if (isZero(h)) {
          if (longName !== undefined || longLink !== undefined || pax) throw new TarError(`tar: end-of-archive marker right after an extended header at ${at}`);
          this.ended = true;
          return null;
        }
        if (!checksumOk(h)) throw new TarError(`tar: bad header checksum at offset ${at} (not a tar archive, or a corrupt one)`);
        const typeflag = String.fromCharCode(h[156]!);
        const size = number(h, 124, 12, 'size', at);
        if (size < 0) throw new TarError(`tar: negative size in the header at ${at}`);
        const padded = Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
        switch (typeflag) {
          case 'L':
            longName = cstring(await this.readMeta(size, 'GNU long name', at), 0, size);
            continue;
          case 'K':
            longLink = cstring(await this.readMeta(size, 'GNU long link name', at), 0, size);
            continue;
          case 'x':
            pax = Object.assign(pax ?? (Object.create(null) as PaxRecords), parsePax(await this.readMeta(size, 'PAX header', at), at));
            continue;
          case 'g':
            Object.assign(this.globalPax, parsePax(await this.readMeta(size, 'PAX global header', at), at));
            continue;
          case 'V':
            await this.src.skip(padded); // a volume label names the archive, not a file
            continue;
          case 'S':
            throw new TarError(`tar: ${display(longName ?? cstring(h, 0, 100))} is a GNU sparse file; sparse entries are not supported (re-create the layer without --sparse)`);
          case 'M':
          case 'N':
            throw new TarError(`tar: GNU multi-volume and old long-name entries (type ${typeflag}) are not supported (header at ${at})`);
          default:
            break;
        }
        const type = TYPES[typeflag];
        if (!type) throw new TarError(`tar: unknown entry type ${JSON.stringify(typeflag)} in the header at ${at}`);
        const recs: PaxRecords = Object.assign(Object.create(null) as PaxRecords, this.globalPax, pax ?? {});
        for (const k of Object.keys(recs)) {
          if (k.startsWith('GNU.sparse.')) throw new TarError(`tar: ${display(recs['path']?.toString('latin1') ?? cstring(h, 0, 100))} is a sparse file (PAX ${k}); sparse entries are not supported`);
        }
        const magic = h.subarray(257, 263).toString('latin1');
        const ustar = magic === 'ustar\0';
        let path = cstring(h, 0, 100);
        if (ustar) {
          const prefix = cstring(h, 345, 155);
          if (prefix) path = `${prefix}/${path}`;
        }
        if (longName !== undefined) path = longName;
        if (recs['path']) path = recs['path'].toString('latin1');
        let linkname = cstring(h, 157, 100);
        if (longLink !== undefined) linkname = longLink;
        if (recs['linkpath']) linkname = recs['linkpath'].toString('latin1');
        let entryType = type;
        // Old tars mark directories by a trailing slash on a regular entry.
        if (typeflag === '\0' && path.endsWith('/')) entryType = 'dir';
        const e: TarEntry = {
          type: entryType,
          path,
          linkname,
          mode: number(h, 100, 8, 'mode', at) & 0o7777,
          uid: recs['uid'] ? paxInt(recs['uid'].toString('latin1'), 'uid', at) : number(h, 108, 8, 'uid', at),
          gid: recs['gid'] ? paxInt(recs['gid'].toString('latin1'), 'gid', at) : number(h, 116, 8, 'gid', at),
          size: recs['size'] ? paxInt(recs['size'].toString('latin1'), 'size', at) : size,
          mtimeSec: 0,
          mtimeNsec: 0,
          devmajor: type === 'char' || type === 'block' ? number(h, 329, 8, 'devmajor', at) : 0,
          devminor: type === 'char' || type === 'block' ? number(h, 337, 8, 'devminor', at) : 0,
          xattrs: new Map(),
          offset: at,
        };
        if (recs['mtime']) {
          const t = paxTime(recs['mtime'].toString('latin1'), at);
          e.mtimeSec = t.sec;
          e.mtimeNsec = t.nsec;
        } else e.mtimeSec = number(h, 136, 12, 'mtime', at);
        if (e.uid < 0 || e.gid < 0 || e.uid > 0xffffffff || e.gid > 0xffffffff) throw new TarError(`tar: uid/gid out of range for ${display(path)}`);
        paxXattrs(recs, e.xattrs);
        // The body: only regular files keep theirs; anything else's (a GNU dumpdir, a hardlink
        // with data) is skipped.
        const bodyBytes = recs['size'] ? e.size : size;
        this.pendingBody = Math.ceil(bodyBytes / TAR_BLOCK) * TAR_BLOCK;
        if (e.type !== 'file') e.size = 0;
        this.currentSize = e.size;
        return e;
      }
    } catch (err) {
      if (err instanceof TruncatedError) throw new TarError(`tar: the archive is truncated (${err.message})`);
      throw err;
    }
  }

  /** After next() returned null: the bytes after the end-of-archive marker, read and discarded. */
  async drain(): Promise<number> {
    return this.src.drain();
  }
}
