// The little of tar that policy generation needs: where each file of an OCI archive lies (so a
// blob is read in place, never copied), and a streaming pass over a layer that keeps a few small
// files (/etc/passwd, /etc/group) and notes their whiteouts. ustar, GNU long names and PAX path
// records; anything else is skipped by its size. Both are bounded: header count, metadata and
// kept files have limits, and a truncated or corrupt archive is an error, never a hang.
// TODO(snapshotter): when snapshotter/tar/reader.ts lands on main, read layers with it.
import fs from 'node:fs';

const BLOCK = 512;
/** PAX and GNU long-name records larger than this are refused. */
const MAX_META = 1024 * 1024;

export class TarFormatError extends Error {
  override readonly name = 'TarFormatError';
  readonly code = 'KATATS_TAR_FORMAT';
}

interface Header {
  name: string;
  size: number;
  type: string;
}

function field(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? len : nul).toString('utf8');
}

function octal(b: Buffer, off: number, len: number, what: string): number {
  // base-256 (GNU) for sizes of 8 GiB and more
  if (b[off]! & 0x80) {
    let n = 0;
    for (let i = off + 1; i < off + len; i++) n = n * 256 + b[i]!;
    if (!Number.isSafeInteger(n)) throw new TarFormatError(`tar: ${what} too large`);
    return n;
  }
  const s = field(b, off, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`tar: bad ${what} field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function parseHeader(b: Buffer): Header | null {
  if (b.every((x) => x === 0)) return null;
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : b[i]!;
  if (sum !== octal(b, 148, 8, 'checksum')) throw new TarFormatError('tar: header checksum mismatch');
  const prefix = field(b, 345, 155);
  const name = field(b, 0, 100);
  return { name: prefix && field(b, 257, 6).startsWith('ustar') ? `${prefix}/${name}` : name, size: octal(b, 124, 12, 'size'), type: String.fromCharCode(b[156] || 48) };
}

function paxPath(data: Buffer): string | undefined {
  let off = 0;
  let path: string | undefined;
  while (off < data.length) {
    const sp = data.indexOf(0x20, off);
    if (sp < 0) break;
    const len = parseInt(data.subarray(off, sp).toString('latin1'), 10);
    if (!(len > 0) || off + len > data.length) throw new TarFormatError('tar: bad PAX record');
    const rec = data.subarray(sp + 1, off + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (rec.slice(0, eq) === 'path') path = rec.slice(eq + 1);
    off += len;
  }
  return path;
}

const padded = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

/** Paths normalised as layers and archives spell them: no leading "./" or "/". */
export function normalName(n: string): string {
  return n.replace(/^(\.\/|\/)+/, '').replace(/\/+$/, '');
}

export interface ArchiveEntry {
  offset: number;
  size: number;
}

/** The regular files of a tar file on disk, by name, with where their data starts. */
export function indexTarFile(file: string, maxEntries = 100_000): Map<string, ArchiveEntry> {
  const fd = fs.openSync(file, 'r');
  try {
    const total = fs.fstatSync(fd).size;
    const out = new Map<string, ArchiveEntry>();
    const hb = Buffer.alloc(BLOCK);
    let off = 0;
    let longName: string | undefined;
    for (let n = 0; ; n++) {
      if (n > maxEntries) throw new TarFormatError(`tar: ${file}: more than ${maxEntries} entries`);
      if (off + BLOCK > total) throw new TarFormatError(`tar: ${file}: truncated (no end marker)`);
      fs.readSync(fd, hb, 0, BLOCK, off);
      const h = parseHeader(hb);
      if (!h) return out;
      const dataAt = off + BLOCK;
      if (dataAt + h.size > total) throw new TarFormatError(`tar: ${file}: entry ${h.name} runs past the end`);
      if (h.type === 'L' || h.type === 'x') {
        if (h.size > MAX_META) throw new TarFormatError(`tar: ${file}: metadata record of ${h.size} bytes`);
        const meta = Buffer.alloc(h.size);
        fs.readSync(fd, meta, 0, h.size, dataAt);
        longName = h.type === 'L' ? field(meta, 0, meta.length) : (paxPath(meta) ?? longName);
      } else {
        const name = normalName(longName ?? h.name);
        longName = undefined;
        if (h.type === '0' || h.type === '7') out.set(name, { offset: dataAt, size: h.size });
      }
      off = dataAt + padded(h.size);
    }
  } finally {
    fs.closeSync(fd);
  }
}

export interface LayerScan {
  /** Contents of the wanted files found in the layer. */
  files: Map<string, Buffer>;
  /** Wanted files this layer deletes (a whiteout entry, or an opaque parent directory). */
  whiteouts: Set<string>;
}

/**
 * Reads a layer tar from a stream and keeps the files named in `want` (each at most `maxFile`
 * bytes). The whole stream is consumed, whatever it holds after the end marker.
 */
export async function scanLayer(chunks: AsyncIterable<Buffer>, want: Set<string>, maxFile = 4 * 1024 * 1024): Promise<LayerScan> {
  const files = new Map<string, Buffer>();
  const whiteouts = new Set<string>();
  let buf: Buffer = Buffer.alloc(0);
  let state = 'header' as 'header' | 'data' | 'end';
  let remaining = 0; // bytes of the current entry's data (padded) still to pass
  let keep: { name: string; parts: Buffer[]; size: number; got: number } | null = null;
  let meta: { type: string; parts: Buffer[]; size: number; got: number } | null = null;
  let longName: string | undefined;

  const onHeader = (h: Header) => {
    if (h.type === 'L' || h.type === 'x') {
      if (h.size > MAX_META) throw new TarFormatError(`tar: layer metadata record of ${h.size} bytes`);
      meta = { type: h.type, parts: [], size: h.size, got: 0 };
    } else {
      const name = normalName(longName ?? h.name);
      longName = undefined;
      const base = name.slice(name.lastIndexOf('/') + 1);
      const dir = name.slice(0, name.lastIndexOf('/') + 1);
      if (base === '.wh..wh..opq') {
        for (const w of want) if (w.startsWith(dir)) whiteouts.add(w);
      } else if (base.startsWith('.wh.')) {
        const target = dir + base.slice(4);
        if (want.has(target)) whiteouts.add(target);
      } else if (want.has(name) && (h.type === '0' || h.type === '7')) {
        if (h.size > maxFile) throw new TarFormatError(`tar: layer file ${name} is ${h.size} bytes (limit ${maxFile})`);
        keep = { name, parts: [], size: h.size, got: 0 };
        whiteouts.delete(name);
      }
    }
    remaining = padded(h.size);
    state = remaining > 0 ? 'data' : 'header';
    if (remaining === 0) finishEntry();
  };

  const finishEntry = () => {
    if (keep) {
      files.set(keep.name, Buffer.concat(keep.parts).subarray(0, keep.size));
      keep = null;
    }
    if (meta) {
      const data = Buffer.concat(meta.parts).subarray(0, meta.size);
      longName = meta.type === 'L' ? field(data, 0, data.length) : (paxPath(data) ?? longName);
      meta = null;
    }
  };

  for await (const chunk of chunks) {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    let off = 0;
    while (state !== 'end') {
      if (state === 'header') {
        if (buf.length - off < BLOCK) break;
        const h = parseHeader(buf.subarray(off, off + BLOCK));
        off += BLOCK;
        if (!h) {
          state = 'end';
          break;
        }
        onHeader(h);
      } else {
        const n = Math.min(remaining, buf.length - off);
        if (n === 0) break;
        const piece = buf.subarray(off, off + n);
        const sink = (keep ?? meta) as { parts: Buffer[]; got: number } | null;
        if (sink) {
          sink.parts.push(Buffer.from(piece));
          sink.got += n;
        }
        off += n;
        remaining -= n;
        if (remaining === 0) {
          finishEntry();
          state = 'header';
        }
      }
    }
    buf = state === 'end' ? Buffer.alloc(0) : buf.subarray(off);
  }
  if (state !== 'end' && (state === 'data' || buf.length > 0)) throw new TarFormatError('tar: layer ends inside an entry');
  return { files, whiteouts };
}
