// EROFS on-disk structures (uncompressed subset), as the Linux kernel's fs/erofs/erofs_fs.h
// defines them: the 128-byte superblock at byte 1024, 32-byte compact and 64-byte extended
// inodes, inline xattr bodies, 12-byte directory entries. Little-endian throughout.

export const EROFS_MAGIC = 0xe0f5e1e2;
export const SUPER_OFFSET = 1024;
export const BLOCK_BITS = 12;
export const BLOCK = 1 << BLOCK_BITS;
export const INODE_SLOT = 32;
export const COMPACT_INODE = 32;
export const EXTENDED_INODE = 64;
export const DIRENT = 12;
export const NAME_MAX = 255;

/** i_format data layouts. */
export const FLAT_PLAIN = 0;
export const FLAT_INLINE = 2;

/** Directory entry file types (the kernel's FT_*). */
export const FT = { unknown: 0, file: 1, dir: 2, char: 3, block: 4, fifo: 5, sock: 6, symlink: 7 } as const;

export const S_IFMT = 0o170000;
export const S_IF = { file: 0o100000, dir: 0o040000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000 } as const;

/** xattr name prefixes EROFS stores as an index (erofs_fs.h EROFS_XATTR_INDEX_*). */
const XATTR_PREFIXES: [string, number][] = [
  ['user.', 1],
  ['trusted.', 4],
  ['lustre.', 5],
  ['security.', 6],
];
const XATTR_EXACT: Record<string, number> = { 'system.posix_acl_access': 2, 'system.posix_acl_default': 3 };

/** The index and the rest of an xattr name (byte string), or null when EROFS cannot name it. */
export function xattrIndex(name: string): { index: number; suffix: string } | null {
  const exact = XATTR_EXACT[name];
  if (exact !== undefined) return { index: exact, suffix: '' };
  for (const [prefix, index] of XATTR_PREFIXES) {
    if (name.startsWith(prefix) && name.length > prefix.length) return { index, suffix: name.slice(prefix.length) };
  }
  return null;
}

export interface XattrEntry {
  index: number;
  /** Byte string. */
  suffix: string;
  value: Buffer;
}

/** Entry bytes: 4-byte header, name, value, padded to 4. */
export function xattrEntrySize(e: XattrEntry): number {
  return (4 + e.suffix.length + e.value.length + 3) & ~3;
}

/** The inline xattr body (12-byte header, then the entries), or an empty buffer for none. */
export function encodeXattrBody(entries: XattrEntry[]): Buffer {
  if (!entries.length) return Buffer.alloc(0);
  const size = 12 + entries.reduce((n, e) => n + xattrEntrySize(e), 0);
  const b = Buffer.alloc(size);
  // h_name_filter (0: no filter feature), h_shared_count 0, 7 reserved bytes.
  let at = 12;
  for (const e of entries) {
    b.writeUInt8(e.suffix.length, at);
    b.writeUInt8(e.index, at + 1);
    b.writeUInt16LE(e.value.length, at + 2);
    b.write(e.suffix, at + 4, 'latin1');
    e.value.copy(b, at + 4 + e.suffix.length);
    at += xattrEntrySize(e);
  }
  return b;
}

/** i_xattr_icount for an xattr body of `size` bytes (12 + 4 * (icount - 1)). */
export function xattrIcount(size: number): number {
  return size ? (size - 12) / 4 + 1 : 0;
}

/** Linux's new_encode_dev. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export interface InodeFields {
  extended: boolean;
  layout: number;
  xattrIcount: number;
  mode: number;
  nlink: number;
  size: number;
  /** raw_blkaddr or rdev. */
  u: number;
  ino: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
}

export function encodeInode(f: InodeFields): Buffer {
  if (!f.extended) {
    const b = Buffer.alloc(COMPACT_INODE);
    b.writeUInt16LE((f.layout << 1) | 0, 0);
    b.writeUInt16LE(f.xattrIcount, 2);
    b.writeUInt16LE(f.mode, 4);
    b.writeUInt16LE(f.nlink, 6);
    b.writeUInt32LE(f.size, 8);
    // i_reserved at 12
    b.writeUInt32LE(f.u >>> 0, 16);
    b.writeUInt32LE(f.ino >>> 0, 20);
    b.writeUInt16LE(f.uid, 24);
    b.writeUInt16LE(f.gid, 26);
    return b;
  }
  const b = Buffer.alloc(EXTENDED_INODE);
  b.writeUInt16LE((f.layout << 1) | 1, 0);
  b.writeUInt16LE(f.xattrIcount, 2);
  b.writeUInt16LE(f.mode, 4);
  b.writeBigUInt64LE(BigInt(f.size), 8);
  b.writeUInt32LE(f.u >>> 0, 16);
  b.writeUInt32LE(f.ino >>> 0, 20);
  b.writeUInt32LE(f.uid >>> 0, 24);
  b.writeUInt32LE(f.gid >>> 0, 28);
  b.writeBigInt64LE(BigInt(f.mtimeSec), 32);
  b.writeUInt32LE(f.mtimeNsec, 40);
  b.writeUInt32LE(f.nlink >>> 0, 44);
  return b;
}

export interface SuperBlockFields {
  rootNid: number;
  inodes: number;
  buildTimeSec: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkaddr: number;
  uuid: Buffer;
}

/** The superblock (128 bytes, to be written at SUPER_OFFSET). No checksum: the verity tree covers it. */
export function encodeSuperBlock(f: SuperBlockFields): Buffer {
  const b = Buffer.alloc(128);
  b.writeUInt32LE(EROFS_MAGIC, 0);
  // checksum 0, feature_compat 0 (no SB_CHKSUM)
  b.writeUInt8(BLOCK_BITS, 12);
  b.writeUInt8(0, 13); // sb_extslots
  b.writeUInt16LE(f.rootNid, 14);
  b.writeBigUInt64LE(BigInt(f.inodes), 16);
  b.writeBigInt64LE(BigInt(f.buildTimeSec), 24);
  b.writeUInt32LE(f.buildTimeNsec, 32);
  b.writeUInt32LE(f.blocks, 36);
  b.writeUInt32LE(f.metaBlkaddr, 40);
  b.writeUInt32LE(0, 44); // xattr_blkaddr: no shared xattrs
  f.uuid.copy(b, 48, 0, 16);
  // volume_name (16 bytes) empty, feature_incompat 0: plain uncompressed images only.
  return b;
}

export function encodeDirent(nid: number, nameoff: number, fileType: number): Buffer {
  const b = Buffer.alloc(DIRENT);
  b.writeBigUInt64LE(BigInt(nid), 0);
  b.writeUInt16LE(nameoff, 8);
  b.writeUInt8(fileType, 10);
  return b;
}
