// The file tree of one layer, built from its tar entries the way containerd applies a layer onto
// an overlayfs upper directory: later entries replace earlier ones (a directory over a directory
// keeps its contents), missing parents appear as root-owned 0755 directories, hard links share
// one inode, and OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character device named
// NAME, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. Only metadata lives
// here; file contents are placed by the writer as they stream past.
import { display, type TarEntry } from '../tar/reader.js';
import { NAME_MAX, xattrIndex } from './format.js';

export class LayerFormatError extends Error {
  override readonly name = 'LayerFormatError';
  readonly code = 'KATATS_LAYER_FORMAT';
}

export type NodeKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo';

/** Where a regular file's bytes went: full blocks in the data area, the tail inline or in a block of its own. */
export interface FileData {
  /** First block of the file's whole blocks (and of its padded tail when tailInline is false). */
  block: number;
  /** Blocks written at `block`. */
  blocks: number;
  /** Bytes of the tail kept for inline placement (0 when it went into the data area). */
  tailBytes: number;
  /** Where the tail sits in the tail spool. */
  tailAt: number;
}

export interface Node {
  kind: NodeKind;
  /** Permission bits with setuid, setgid, sticky. */
  perm: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Byte-string names -> values. */
  xattrs: Map<string, Buffer>;
  size: number;
  data?: FileData;
  /** Symlink target (byte string). */
  target?: string;
  devmajor?: number;
  devminor?: number;
  children?: Map<string, Node>;
}

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
const WHITEOUT_META = '.wh..wh.';

function dirNode(): Node {
  return { kind: 'dir', perm: 0o755, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, xattrs: new Map(), size: 0, children: new Map() };
}

/** Path components of a tar name, cleaned as containerd cleans "/" + name (".." stops at the root). */
export function components(name: string): string[] {
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') out.pop();
    else out.push(c);
  }
  return out;
}

function checkName(c: string, full: string): void {
  if (c.length > NAME_MAX) throw new LayerFormatError(`layer: the name ${display(c)} in ${display(full)} is longer than ${NAME_MAX} bytes`);
  if (c.includes('\0')) throw new LayerFormatError(`layer: NUL byte in the path ${display(full)}`);
}

export function checkXattrs(xattrs: Map<string, Buffer>, path: string): void {
  for (const [name, value] of xattrs) {
    if (!xattrIndex(name)) throw new LayerFormatError(`layer: ${display(path)} has the xattr ${display(name)}, which EROFS cannot store (only user.*, trusted.*, security.*, lustre.* and POSIX ACLs)`);
    if (name.length - (name.indexOf('.') + 1) > 255) throw new LayerFormatError(`layer: xattr name ${display(name)} on ${display(path)} is too long`);
    if (value.length > 0xffff) throw new LayerFormatError(`layer: xattr ${display(name)} on ${display(path)} holds ${value.length} bytes (EROFS stores at most 65535)`);
  }
}

/** Tar entries one layer may hold: the tree's metadata stays in memory (a few hundred bytes each). */
export const MAX_ENTRIES = 2_000_000;

export class LayerTree {
  readonly root: Node = dirNode();
  entries = 0;

  constructor(private readonly maxEntries = MAX_ENTRIES) {}

  /** The directory at `parts` (created as needed); refuses a path through a non-directory. */
  private dir(parts: string[], full: string): Node {
    let d = this.root;
    for (const c of parts) {
      checkName(c, full);
      let n = d.children!.get(c);
      if (!n) {
        n = dirNode();
        d.children!.set(c, n);
      } else if (n.kind !== 'dir') {
        const why = n.kind === 'symlink' ? 'a symlink' : `a ${n.kind}`;
        throw new LayerFormatError(`layer: ${display(full)} lies beneath ${display(c)}, which is ${why} in this layer`);
      }
      d = n;
    }
    return d;
  }

  /** The node a hard link's target names, which must exist and not be a directory. */
  private linkTarget(name: string, from: string): Node {
    const parts = components(name);
    let n: Node | undefined = this.root;
    for (const c of parts) n = n?.kind === 'dir' ? n.children!.get(c) : undefined;
    if (!n || !parts.length) throw new LayerFormatError(`layer: hard link ${display(from)} names ${display(name)}, which is not in the layer before it`);
    if (n.kind === 'dir') throw new LayerFormatError(`layer: hard link ${display(from)} names the directory ${display(name)}`);
    return n;
  }

  /**
   * Adds an entry. Returns the node that will receive the body for a regular file, null when the
   * entry holds nothing to store (an opaque marker, AUFS metadata).
   */
  add(e: TarEntry): Node | null {
    if (++this.entries > this.maxEntries) throw new LayerFormatError(`layer: more than ${this.maxEntries} tar entries`);
    const parts = components(e.path);
    if (!parts.length) {
      if (e.type !== 'dir') throw new LayerFormatError(`layer: the root of the layer is a ${e.type} (${display(e.path)})`);
      checkXattrs(e.xattrs, e.path);
      this.setAttrs(this.root, e, true);
      return null;
    }
    const base = parts[parts.length - 1]!;
    const parent = this.dir(parts.slice(0, -1), e.path);
    checkName(base, e.path);
    if (base === OPAQUE) {
      parent.xattrs.set('trusted.overlay.opaque', Buffer.from('y'));
      return null;
    }
    if (base.startsWith(WHITEOUT_META)) return null; // AUFS bookkeeping (.wh..wh.plnk, ...), never content
    if (base.startsWith(WHITEOUT)) {
      const name = base.slice(WHITEOUT.length);
      if (!name || name === '.' || name === '..') throw new LayerFormatError(`layer: whiteout ${display(e.path)} names nothing`);
      parent.children!.set(name, {
        kind: 'char',
        perm: 0,
        uid: e.uid,
        gid: e.gid,
        mtimeSec: e.mtimeSec,
        mtimeNsec: e.mtimeNsec,
        xattrs: new Map(),
        size: 0,
        devmajor: 0,
        devminor: 0,
      });
      return null;
    }
    checkXattrs(e.xattrs, e.path);
    if (e.type === 'hardlink') {
      const target = this.linkTarget(e.linkname, e.path);
      if (parent.children!.get(base) !== target) parent.children!.set(base, target);
      return null;
    }
    const existing = parent.children!.get(base);
    if (e.type === 'dir' && existing?.kind === 'dir') {
      this.setAttrs(existing, e, true);
      return null;
    }
    const n: Node = { kind: e.type, perm: 0, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, xattrs: new Map(), size: 0 };
    this.setAttrs(n, e, false);
    if (e.type === 'dir') n.children = new Map();
    else if (e.type === 'symlink') {
      if (!e.linkname) throw new LayerFormatError(`layer: symlink ${display(e.path)} has an empty target`);
      if (e.linkname.length > 4095) throw new LayerFormatError(`layer: symlink ${display(e.path)} has a target longer than 4095 bytes`);
      n.target = e.linkname;
      n.size = e.linkname.length;
    } else if (e.type === 'char' || e.type === 'block') {
      n.devmajor = e.devmajor;
      n.devminor = e.devminor;
    } else if (e.type === 'file') n.size = e.size;
    parent.children!.set(base, n);
    return n;
  }

  private setAttrs(n: Node, e: TarEntry, merge: boolean): void {
    n.perm = e.mode & 0o7777;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtimeSec = e.mtimeSec;
    n.mtimeNsec = e.mtimeNsec;
    // A directory that is applied again keeps the xattrs it had (containerd sets, never clears).
    if (!merge) n.xattrs = new Map();
    for (const [k, v] of e.xattrs) n.xattrs.set(k, v);
  }
}
