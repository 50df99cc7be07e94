// Writes one layer's tar stream as an uncompressed EROFS image, deterministically: the same tar
// gives the same bytes on any machine (no clock, no randomness; the UUID comes from the caller,
// derived from the content).
//
// Layout, in 4096-byte blocks:
//   0            superblock (at byte 1024)
//   1 .. D       file data, written as the tar streams past: each file's whole blocks, then its
//                tail padded to a block when the tail cannot be kept for inline placement
//   M .. M+K-1   metadata: inodes (32-byte slots; 32-byte compact ones where uid, gid, size, nlink
//                and mtime allow, 64-byte extended ones otherwise), inline xattrs, inline tails of
//                files, directories and symlinks
//   M+K ..       directory and symlink blocks that did not fit inline
// meta_blkaddr is M-1, so nids start at 128 (never 0, which would be a zero inode number) and the
// root directory, placed first, has nid 128 (the superblock's root_nid is 16 bits).
//
// Memory holds the tree's metadata only; file bodies stream to the image, file tails to a spool
// file next to it. Directories are sorted by name bytes, "." and ".." included, as EROFS requires.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { TarEntry, TarReader } from '../tar/reader.js';
import {
  BLOCK,
  COMPACT_INODE,
  DIRENT,
  EXTENDED_INODE,
  FLAT_INLINE,
  FLAT_PLAIN,
  FT,
  INODE_SLOT,
  S_IF,
  SUPER_OFFSET,
  encodeDev,
  encodeDirent,
  encodeInode,
  encodeSuperBlock,
  encodeXattrBody,
  xattrIcount,
  xattrIndex,
  type XattrEntry,
} from './format.js';
import { LayerFormatError, LayerTree, type Node } from './tree.js';

const WRITE_BUFFER = 1024 * 1024;

/**
 * Buffered sequential writes at a file position, double-buffered: one buffer is written while
 * the next fills, so the disk and the parsing overlap.
 */
class SeqWriter {
  private buf: Buffer = Buffer.allocUnsafe(WRITE_BUFFER);
  private spare: Buffer | undefined = Buffer.allocUnsafe(WRITE_BUFFER);
  private used = 0;
  private inFlight: Promise<void> = Promise.resolve();
  constructor(
    private readonly fd: FileHandle,
    /** File position of the next byte handed to the file. */
    public pos: number,
  ) {}

  async write(b: Uint8Array): Promise<void> {
    let at = 0;
    while (at < b.length) {
      const n = Math.min(b.length - at, this.buf.length - this.used);
      this.buf.set(b.subarray(at, at + n), this.used);
      this.used += n;
      at += n;
      if (this.used === this.buf.length) await this.handOff();
    }
  }

  async zero(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, this.buf.length - this.used);
      this.buf.fill(0, this.used, this.used + k);
      this.used += k;
      n -= k;
      if (this.used === this.buf.length) await this.handOff();
    }
  }

  private static async writeAll(fd: FileHandle, b: Buffer, len: number, pos: number): Promise<void> {
    let off = 0;
    while (off < len) {
      const { bytesWritten } = await fd.write(b, off, len - off, pos + off);
      off += bytesWritten;
    }
  }

  /** Starts writing the full buffer and continues in the spare one (after the previous write is done). */
  private async handOff(): Promise<void> {
    await this.inFlight;
    const full = this.buf;
    const len = this.used;
    const at = this.pos;
    this.pos += len;
    this.buf = this.spare ?? Buffer.allocUnsafe(WRITE_BUFFER);
    this.spare = undefined;
    this.used = 0;
    this.inFlight = SeqWriter.writeAll(this.fd, full, len, at).then(() => {
      this.spare = full;
    });
    // A failed write surfaces at the next handOff or flush; never unobserved.
    this.inFlight.catch(() => undefined);
  }

  async flush(): Promise<void> {
    await this.inFlight;
    await SeqWriter.writeAll(this.fd, this.buf, this.used, this.pos);
    this.pos += this.used;
    this.used = 0;
  }

  /** Position of the next byte written, buffered bytes included. */
  get offset(): number {
    return this.pos + this.used;
  }
}

function xattrEntries(n: Node): XattrEntry[] {
  const out: XattrEntry[] = [];
  for (const [name, value] of n.xattrs) {
    const ix = xattrIndex(name);
    if (ix) out.push({ index: ix.index, suffix: ix.suffix, value });
  }
  // Deterministic order: by index, then name bytes.
  return out.sort((a, b) => a.index - b.index || (a.suffix < b.suffix ? -1 : a.suffix > b.suffix ? 1 : 0));
}

function byteOrder(a: string, b: string): number {
  // Byte strings: comparing char codes is comparing bytes; a prefix sorts first.
  return a < b ? -1 : a > b ? 1 : 0;
}

interface DirBlock {
  names: string[];
  bytes: number;
}

interface Plan {
  node: Node;
  nid: number;
  ino: number;
  /** Byte offset in the metadata area. */
  pos: number;
  extended: boolean;
  xbody: Buffer;
  layout: number;
  size: number;
  nlink: number;
  /** Bytes placed inline right after the inode and its xattrs. */
  inline: number;
  /** raw_blkaddr (or rdev for devices). */
  u: number;
  /** Directory: its entries packed into blocks. */
  dirBlocks?: DirBlock[];
  /** Blocks this inode owns after the metadata area (directories, symlinks not inline). */
  extraBlocks: number;
}

export interface ErofsResult {
  /** Image size in blocks (the file is exactly blocks * 4096 bytes). */
  blocks: number;
  inodes: number;
  /** Tar entries seen. */
  entries: number;
}

function packDir(names: string[]): DirBlock[] {
  const blocks: DirBlock[] = [];
  let cur: DirBlock = { names: [], bytes: 0 };
  for (const name of names) {
    const need = DIRENT + name.length;
    if (cur.bytes + need > BLOCK) {
      blocks.push(cur);
      cur = { names: [], bytes: 0 };
    }
    cur.names.push(name);
    cur.bytes += need;
  }
  blocks.push(cur);
  return blocks;
}

const FILE_TYPE: Record<Node['kind'], number> = { file: FT.file, dir: FT.dir, symlink: FT.symlink, char: FT.char, block: FT.block, fifo: FT.fifo };

export class ErofsWriter {
  readonly tree = new LayerTree();
  private readonly data: SeqWriter;
  private readonly spool: SeqWriter;
  /** Next free block of the data area. */
  private dataBlock = 1;

  private constructor(
    private readonly fd: FileHandle,
    private readonly spoolFd: FileHandle,
    private readonly spoolPath: string,
  ) {
    this.data = new SeqWriter(fd, BLOCK);
    this.spool = new SeqWriter(spoolFd, 0);
  }

  /** Writes the image to `out` (created or truncated); `spoolPath` holds file tails until finish(). */
  static async open(out: string, spoolPath = `${out}.tails`): Promise<ErofsWriter> {
    const fd = await fs.promises.open(out, 'w+', 0o644);
    try {
      const spoolFd = await fs.promises.open(spoolPath, 'w+', 0o600);
      return new ErofsWriter(fd, spoolFd, spoolPath);
    } catch (e) {
      await fd.close();
      throw e;
    }
  }

  /** Adds one tar entry, streaming a regular file's body from `reader`. */
  async add(e: TarEntry, reader: TarReader): Promise<void> {
    const node = this.tree.add(e);
    if (!node || node.kind !== 'file') return;
    const size = node.size;
    const full = Math.floor(size / BLOCK) * BLOCK;
    const tail = size - full;
    // A tail is kept for inline placement when it surely fits in a block with an extended inode
    // and this file's xattrs; otherwise it goes into the data area, padded, right after the
    // file's whole blocks (EROFS wants a file's blocks contiguous).
    const inlineTail = tail > 0 && EXTENDED_INODE + encodeXattrBody(xattrEntries(node)).length + tail <= BLOCK;
    node.data = { block: this.dataBlock, blocks: full / BLOCK + (tail && !inlineTail ? 1 : 0), tailBytes: inlineTail ? tail : 0, tailAt: this.spool.offset };
    let off = 0;
    await reader.body(async (piece) => {
      if (off < full) {
        const n = Math.min(piece.length, full - off);
        await this.data.write(piece.subarray(0, n));
        off += n;
        piece = piece.subarray(n);
      }
      if (piece.length) {
        await (inlineTail ? this.spool.write(piece) : this.data.write(piece));
        off += piece.length;
      }
    });
    if (tail && !inlineTail) await this.data.zero(BLOCK - tail);
    this.dataBlock += node.data.blocks;
  }

  /** Lays out and writes the metadata, the superblock; closes the files. */
  async finish(uuid: Buffer): Promise<ErofsResult> {
    try {
      await this.data.flush();
      await this.spool.flush();
      return await this.layOut(uuid);
    } finally {
      await this.fd.close();
      await this.spoolFd.close();
      await fs.promises.rm(this.spoolPath, { force: true });
    }
  }

  /** Closes and removes what was written (after a failure). */
  async abort(out: string): Promise<void> {
    await this.fd.close().catch(() => undefined);
    await this.spoolFd.close().catch(() => undefined);
    await fs.promises.rm(this.spoolPath, { force: true });
    await fs.promises.rm(out, { force: true });
  }

  private async layOut(uuid: Buffer): Promise<ErofsResult> {
    const root = this.tree.root;
    // 1. Inodes in depth-first order (root first), children by name bytes; a hard-linked inode
    //    where it is first met. Link counts on the way.
    const order: Node[] = [];
    const refs = new Map<Node, number>();
    const parentOf = new Map<Node, Node>();
    const stack: Node[] = [root];
    parentOf.set(root, root);
    while (stack.length) {
      const n = stack.pop()!;
      order.push(n);
      if (n.kind !== 'dir') continue;
      const names = [...n.children!.keys()].sort(byteOrder);
      for (let i = names.length - 1; i >= 0; i--) {
        const c = n.children!.get(names[i]!)!;
        refs.set(c, (refs.get(c) ?? 0) + 1);
        if (c.kind === 'dir') parentOf.set(c, n);
        if ((refs.get(c) ?? 0) === 1) stack.push(c);
      }
    }
    // Children go onto the stack in reverse name order, so they come off in name order; a
    // hard-linked inode is pushed once, at the first name that reaches it.
    const inodes = order;
    if (inodes.length > 0xffffffff) throw new LayerFormatError('layer: too many inodes');

    // 2. The build time compact inodes inherit: the most common mtime (earliest on a tie; never
    //    one before the epoch, which readers of the unsigned field would misread).
    const counts = new Map<string, { sec: number; nsec: number; n: number }>();
    for (const n of inodes) {
      if (n.mtimeSec < 0) continue;
      const k = `${n.mtimeSec}.${n.mtimeNsec}`;
      const c = counts.get(k);
      if (c) c.n++;
      else counts.set(k, { sec: n.mtimeSec, nsec: n.mtimeNsec, n: 1 });
    }
    let build = { sec: 0, nsec: 0, n: 0 };
    for (const c of counts.values()) {
      if (c.n > build.n || (c.n === build.n && (c.sec < build.sec || (c.sec === build.sec && c.nsec < build.nsec)))) build = c;
    }

    // 3. Sizes and placement in the metadata area.
    const plans = new Map<Node, Plan>();
    let pos = 0;
    for (const [i, n] of inodes.entries()) {
      let nlink: number;
      if (n.kind === 'dir') {
        nlink = 2;
        for (const c of n.children!.values()) if (c.kind === 'dir') nlink++;
      } else nlink = refs.get(n) ?? 1;
      let size = n.size;
      let dirBlocks: DirBlock[] | undefined;
      if (n.kind === 'dir') {
        dirBlocks = packDir(['.', '..', ...n.children!.keys()].sort(byteOrder));
        size = (dirBlocks.length - 1) * BLOCK + dirBlocks[dirBlocks.length - 1]!.bytes;
      }
      const xbody = encodeXattrBody(xattrEntries(n));
      const extended =
        n.uid > 0xffff || n.gid > 0xffff || nlink > 0xffff || size > 0xffffffff || n.mtimeSec !== build.sec || n.mtimeNsec !== build.nsec;
      const isz = extended ? EXTENDED_INODE : COMPACT_INODE;
      // What would go inline: a file's kept tail, a directory's last block, a symlink's target.
      let want = 0;
      if (n.kind === 'file') want = n.data?.tailBytes ?? 0;
      else if (n.kind === 'dir') want = size % BLOCK;
      else if (n.kind === 'symlink') want = size % BLOCK;
      pos = Math.ceil(pos / INODE_SLOT) * INODE_SLOT;
      if (extended && pos % BLOCK === BLOCK - INODE_SLOT) pos += INODE_SLOT; // keep a 64-byte inode in one block
      let inline = 0;
      if (want > 0) {
        const fitsHere = ((pos + isz + xbody.length) % BLOCK) + want <= BLOCK;
        const fitsInABlock = isz + xbody.length + want <= BLOCK;
        if (fitsHere) inline = want;
        else if (fitsInABlock) {
          pos = Math.ceil(pos / BLOCK) * BLOCK;
          inline = want;
        } else if (n.kind === 'file') {
          throw new LayerFormatError('layer: internal error: a kept file tail does not fit inline');
        }
      }
      const layout = inline ? FLAT_INLINE : FLAT_PLAIN;
      let extraBlocks = 0;
      if (n.kind === 'dir' || n.kind === 'symlink') extraBlocks = Math.ceil((size - inline) / BLOCK);
      let u = 0;
      if (n.kind === 'file') u = n.data && n.data.blocks ? n.data.block : 0;
      else if (n.kind === 'char' || n.kind === 'block') u = encodeDev(n.devmajor ?? 0, n.devminor ?? 0);
      plans.set(n, { node: n, nid: 0, ino: i + 1, pos, extended, xbody, layout, size, nlink, inline, u, dirBlocks, extraBlocks });
      pos += isz + xbody.length + inline;
    }
    const metaStart = this.dataBlock;
    const metaBlocks = Math.ceil(pos / BLOCK);
    let extra = metaStart + metaBlocks;
    for (const n of inodes) {
      const p = plans.get(n)!;
      p.nid = (BLOCK + p.pos) / INODE_SLOT;
      if (p.extraBlocks) {
        p.u = extra;
        extra += p.extraBlocks;
      }
    }
    const totalBlocks = extra;
    if (totalBlocks > 0xffffffff) throw new LayerFormatError('layer: image larger than EROFS can address');
    const rootNid = plans.get(root)!.nid;
    if (rootNid > 0xffff) throw new LayerFormatError('layer: internal error: root nid out of range');

    // 4. Directory and symlink bytes, now that every nid is known.
    const content = (p: Plan): Buffer => {
      const n = p.node;
      if (n.kind === 'symlink') return Buffer.from(n.target!, 'latin1');
      const out = Buffer.alloc(p.size);
      let base = 0;
      for (const blk of p.dirBlocks!) {
        let nameAt = blk.names.length * DIRENT;
        for (const [j, name] of blk.names.entries()) {
          const target = name === '.' ? n : name === '..' ? parentOf.get(n)! : n.children!.get(name)!;
          encodeDirent(plans.get(target)!.nid, nameAt, FILE_TYPE[target.kind]).copy(out, base + j * DIRENT);
          out.write(name, base + nameAt, 'latin1');
          nameAt += name.length;
        }
        base += BLOCK;
      }
      return out;
    };

    // 5. Write the metadata area, then the blocks after it.
    const meta = new SeqWriter(this.fd, metaStart * BLOCK);
    const tailBuf = Buffer.alloc(BLOCK);
    const after: { plan: Plan; bytes: Buffer }[] = [];
    for (const n of inodes) {
      const p = plans.get(n)!;
      await meta.zero(metaStart * BLOCK + p.pos - meta.offset);
      const mode = S_IF[n.kind] | (n.kind === 'symlink' ? 0o777 : n.perm);
      await meta.write(
        encodeInode({
          extended: p.extended,
          layout: p.layout,
          xattrIcount: xattrIcount(p.xbody.length),
          mode,
          nlink: p.nlink,
          size: p.size,
          u: p.u,
          ino: p.ino,
          uid: n.uid,
          gid: n.gid,
          mtimeSec: n.mtimeSec,
          mtimeNsec: n.mtimeNsec,
        }),
      );
      await meta.write(p.xbody);
      if (n.kind === 'file') {
        if (p.inline) {
          const { bytesRead } = await this.spoolFd.read(tailBuf, 0, p.inline, n.data!.tailAt);
          if (bytesRead !== p.inline) throw new Error('layer: the tail spool is short');
          await meta.write(tailBuf.subarray(0, p.inline));
        }
      } else if (n.kind === 'dir' || n.kind === 'symlink') {
        const bytes = content(p);
        const head = bytes.length - p.inline;
        if (p.inline) await meta.write(bytes.subarray(head));
        if (p.extraBlocks) after.push({ plan: p, bytes: bytes.subarray(0, head) });
      }
    }
    await meta.zero((metaStart + metaBlocks) * BLOCK - meta.offset);
    for (const { plan, bytes } of after) {
      await meta.zero(plan.u * BLOCK - meta.offset);
      await meta.write(bytes);
    }
    await meta.zero(totalBlocks * BLOCK - meta.offset);
    await meta.flush();

    // 6. Block 0: zeros around the superblock.
    const head = Buffer.alloc(BLOCK);
    encodeSuperBlock({
      rootNid,
      inodes: inodes.length,
      buildTimeSec: build.sec,
      buildTimeNsec: build.nsec,
      blocks: totalBlocks,
      metaBlkaddr: metaStart - 1,
      uuid,
    }).copy(head, SUPER_OFFSET);
    await this.fd.write(head, 0, BLOCK, 0);
    await this.fd.truncate(totalBlocks * BLOCK);
    return { blocks: totalBlocks, inodes: inodes.length, entries: this.tree.entries };
  }
}
