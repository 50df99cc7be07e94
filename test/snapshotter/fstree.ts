// What a directory tree holds, for comparing a mounted layer image against the tar it came from:
// every name (as bytes), type, permission bits, owner, size, mtime in ns, device numbers, symlink
// target, content digest, xattrs (getfattr) and hard-link groups.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { runToolOk } from '../../sys/exec.js';

export interface FsEntry {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  perm: number;
  uid: number;
  gid: number;
  size: number;
  mtimeNs: bigint;
  rdev?: [number, number];
  target?: string;
  sha256?: string;
  /** name -> hex value */
  xattrs: Record<string, string>;
  ino: bigint;
}

function typeOf(st: fs.BigIntStats): FsEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

/** Byte-string paths (latin1), relative to root ('' for root itself). */
export function walk(root: string): Map<string, FsEntry> {
  const out = new Map<string, FsEntry>();
  const visit = (rel: string) => {
    const abs = Buffer.concat([Buffer.from(root), rel ? Buffer.from('/' + rel, 'latin1') : Buffer.alloc(0)]);
    const st = fs.lstatSync(abs, { bigint: true });
    const e: FsEntry = {
      type: typeOf(st),
      perm: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      mtimeNs: st.mtimeNs,
      xattrs: {},
      ino: st.ino,
    };
    if (e.type === 'char' || e.type === 'block') {
      const d = Number(st.rdev);
      e.rdev = [(d >> 8) & 0xfff, (d & 0xff) | ((d >> 12) & 0xfff00)];
    }
    if (e.type === 'symlink') e.target = (fs.readlinkSync(abs, { encoding: 'buffer' }) as Buffer).toString('latin1');
    if (e.type === 'file') e.sha256 = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    out.set(rel, e);
    if (e.type === 'dir') {
      for (const name of fs.readdirSync(abs, { encoding: 'buffer' }) as Buffer[]) visit(rel ? `${rel}/${name.toString('latin1')}` : name.toString('latin1'));
    }
  };
  visit('');
  return out;
}

function unescapeGetfattr(s: string): string {
  // getfattr writes names with octal escapes for unprintable bytes and backslashes.
  return Buffer.from(s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))).replace(/\\\\/g, '\\'), 'latin1').toString('latin1');
}

/** Fills in xattrs (all namespaces getfattr shows to root) for every entry. */
export async function addXattrs(root: string, tree: Map<string, FsEntry>): Promise<void> {
  const r = await runToolOk('getfattr', ['-R', '-P', '-h', '--absolute-names', '-d', '-m', '-', '-e', 'hex', root], {
    timeoutMs: 60_000,
    timeoutCode: 'TEST_GETFATTR_TIMEOUT',
    maxOutputBytes: 64 * 1024 * 1024,
  });
  let current: string | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      const p = unescapeGetfattr(line.slice('# file: '.length));
      const rootBytes = Buffer.from(root).toString('latin1');
      current = p === rootBytes ? '' : p.startsWith(rootBytes + '/') ? p.slice(rootBytes.length + 1) : undefined;
      continue;
    }
    const m = /^([^=]+)=0x([0-9a-f]*)$/.exec(line);
    if (m && current !== undefined) {
      const e = tree.get(current);
      if (e) e.xattrs[unescapeGetfattr(m[1]!)] = m[2]!;
    }
  }
}

export async function snapshotTree(root: string): Promise<Map<string, FsEntry>> {
  const t = walk(root);
  await addXattrs(root, t);
  return t;
}

/** Hard-link groups: the sorted name lists of every inode with more than one name. */
export function linkGroups(tree: Map<string, FsEntry>): string[][] {
  const byIno = new Map<bigint, string[]>();
  for (const [p, e] of tree) {
    if (e.type === 'dir') continue;
    byIno.set(e.ino, [...(byIno.get(e.ino) ?? []), p]);
  }
  return [...byIno.values()].filter((g) => g.length > 1).map((g) => g.sort()).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
}

/**
 * What the mounted layer should show for a tree GNU tar extracted from the same archive: OCI
 * whiteouts as overlayfs ones (`.wh.X` -> a 0:0 char device X with the whiteout's owner and
 * mtime, permission bits 0; `.wh..wh..opq` -> trusted.overlay.opaque=y on its directory).
 */
export function asOverlay(ref: Map<string, FsEntry>): Map<string, FsEntry> {
  const out = new Map<string, FsEntry>();
  for (const [p, e] of ref) out.set(p, { ...e, xattrs: { ...e.xattrs } });
  for (const [p, e] of ref) {
    const base = p.split('/').pop()!;
    const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
    if (base === '.wh..wh..opq') {
      out.delete(p);
      out.get(dir)!.xattrs['trusted.overlay.opaque'] = Buffer.from('y').toString('hex');
    } else if (base.startsWith('.wh.')) {
      out.delete(p);
      const name = (dir ? `${dir}/` : '') + base.slice(4);
      out.set(name, { type: 'char', perm: 0, uid: e.uid, gid: e.gid, size: 0, mtimeNs: e.mtimeNs, rdev: [0, 0], xattrs: {}, ino: -1n - BigInt(out.size) });
    }
  }
  return out;
}

/** Differences between two trees, as readable lines (empty when they match). Dir sizes and inode numbers are not compared. */
export function diffTrees(want: Map<string, FsEntry>, got: Map<string, FsEntry>, o: { skipRootMtime?: boolean } = {}): string[] {
  const out: string[] = [];
  const show = (p: string) => JSON.stringify(Buffer.from(p, 'latin1').toString('utf8'));
  for (const [p, w] of want) {
    const g = got.get(p);
    if (!g) {
      out.push(`missing ${show(p)}`);
      continue;
    }
    const fields: (keyof FsEntry)[] = ['type', 'perm', 'uid', 'gid', 'target', 'sha256'];
    if (!(p === '' && o.skipRootMtime)) fields.push('mtimeNs');
    if (w.type !== 'dir') fields.push('size');
    for (const f of fields) if (w[f] !== g[f]) out.push(`${show(p)}: ${f} ${String(w[f])} != ${String(g[f])}`);
    if (JSON.stringify(w.rdev) !== JSON.stringify(g.rdev)) out.push(`${show(p)}: rdev ${JSON.stringify(w.rdev)} != ${JSON.stringify(g.rdev)}`);
    const wx = JSON.stringify(Object.entries(w.xattrs).sort());
    const gx = JSON.stringify(Object.entries(g.xattrs).sort());
    if (wx !== gx) out.push(`${show(p)}: xattrs ${wx} != ${gx}`);
  }
  for (const p of got.keys()) if (!want.has(p)) out.push(`unexpected ${show(p)}`);
  const wl = JSON.stringify(linkGroups(want));
  const gl = JSON.stringify(linkGroups(got));
  if (wl !== gl) out.push(`hard links ${wl} != ${gl}`);
  return out;
}

