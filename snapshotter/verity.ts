// dm-verity hash trees, format 1 (sha256, 4096-byte data and hash blocks), byte for byte as
// `veritysetup format --format=1 --no-superblock` lays them out: every digest is sha256(salt ||
// block); the leaf level hashes the data blocks, each level above hashes the one below, a level
// is zero-padded to whole hash blocks, and the levels are stored top level first. The root hash
// is the digest of the top level's single block (of the only data block when there is one).
//
// One difference on purpose: veritysetup ignores a partial last data block (a change in the tail
// of a 1,000,000-byte file leaves its root hash unchanged), while here a partial last block is
// hashed as if zero-padded to a whole block. Layer files are padded before the tree is appended,
// so both agree on them and the tail is protected.
import { createHash } from 'node:crypto';
import fs from 'node:fs';

export const VERITY_BLOCK = 4096;
const DIGEST = 32;
const HASHES_PER_BLOCK = VERITY_BLOCK / DIGEST;
/** The zero salt AKS's tardev snapshotter uses (as long as a digest). */
export const ZERO_SALT = Buffer.alloc(DIGEST);

export interface VerityGeometry {
  dataBlocks: number;
  /** Hash levels; 0 when there is at most one data block (its digest is the root hash). */
  levels: number;
  /** Blocks of level i (level 0 hashes the data). */
  levelBlocks: number[];
  /** Where level i starts, in blocks from the start of the hash area (top level at 0). */
  levelStart: number[];
  hashBlocks: number;
}

export function verityGeometry(dataBlocks: number): VerityGeometry {
  if (!Number.isSafeInteger(dataBlocks) || dataBlocks < 1) throw new RangeError(`verity: ${dataBlocks} data blocks (need at least one)`);
  let levels = 0;
  while ((dataBlocks - 1) / HASHES_PER_BLOCK ** levels >= 1) levels++;
  const levelBlocks: number[] = [];
  for (let i = 0; i < levels; i++) levelBlocks.push(Math.ceil(dataBlocks / HASHES_PER_BLOCK ** (i + 1)));
  const levelStart = new Array<number>(levels).fill(0);
  let at = 0;
  for (let i = levels - 1; i >= 0; i--) {
    levelStart[i] = at;
    at += levelBlocks[i]!;
  }
  return { dataBlocks, levels, levelBlocks, levelStart, hashBlocks: at };
}

export function parseSalt(hex: string): Buffer {
  if (hex === '-' || hex === '') return Buffer.alloc(0);
  if (!/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length > 512) throw new Error(`verity: salt must be an even number of hex digits (at most 256 bytes), got "${hex}"`);
  return Buffer.from(hex, 'hex');
}

/**
 * Hashes data blocks as they come (whole blocks, any number per call) and builds the tree at the
 * end. Memory: the tree only, about 1/127 of the data.
 */
export class VerityHasher {
  readonly geometry: VerityGeometry;
  private readonly salted: Buffer;
  private readonly leaves: Buffer;
  private fed = 0;

  constructor(
    dataBlocks: number,
    private readonly salt: Buffer = ZERO_SALT,
  ) {
    this.geometry = verityGeometry(dataBlocks);
    // salt || block in one buffer: one hash update per block is the fast path.
    this.salted = Buffer.alloc(salt.length + VERITY_BLOCK);
    salt.copy(this.salted, 0);
    this.leaves = Buffer.alloc(Math.max(1, this.geometry.levelBlocks[0] ?? 0) * VERITY_BLOCK);
  }

  private digestInto(block: Uint8Array, out: Buffer, at: number): void {
    this.salted.set(block, this.salt.length);
    createHash('sha256').update(this.salted).digest().copy(out, at);
  }

  /** Feeds whole blocks; `chunk.length` must be a multiple of 4096. */
  update(chunk: Uint8Array): void {
    if (chunk.length % VERITY_BLOCK) throw new RangeError('verity: update() takes whole 4096-byte blocks');
    for (let off = 0; off < chunk.length; off += VERITY_BLOCK) {
      if (this.fed >= this.geometry.dataBlocks) throw new RangeError(`verity: more than the ${this.geometry.dataBlocks} data blocks announced`);
      this.digestInto(chunk.subarray(off, off + VERITY_BLOCK), this.leaves, this.fed * DIGEST);
      this.fed++;
    }
  }

  /** The root hash and the hash area (levelStart order, top level first). */
  finish(): { rootHash: Buffer; tree: Buffer } {
    const g = this.geometry;
    if (this.fed !== g.dataBlocks) throw new RangeError(`verity: ${this.fed} of ${g.dataBlocks} data blocks fed`);
    const rootHash = Buffer.alloc(DIGEST);
    if (g.levels === 0) {
      // The single data block's digest, kept where level 0 would be.
      this.leaves.copy(rootHash, 0, 0, DIGEST);
      return { rootHash, tree: Buffer.alloc(0) };
    }
    const tree = Buffer.alloc(g.hashBlocks * VERITY_BLOCK);
    this.leaves.copy(tree, g.levelStart[0]! * VERITY_BLOCK, 0, g.levelBlocks[0]! * VERITY_BLOCK);
    for (let i = 1; i < g.levels; i++) {
      const below = tree.subarray(g.levelStart[i - 1]! * VERITY_BLOCK, (g.levelStart[i - 1]! + g.levelBlocks[i - 1]!) * VERITY_BLOCK);
      const at = g.levelStart[i]! * VERITY_BLOCK;
      for (let b = 0; b < g.levelBlocks[i - 1]!; b++) this.digestInto(below.subarray(b * VERITY_BLOCK, (b + 1) * VERITY_BLOCK), tree, at + b * DIGEST);
    }
    const top = g.levelStart[g.levels - 1]! * VERITY_BLOCK;
    this.digestInto(tree.subarray(top, top + VERITY_BLOCK), rootHash, 0);
    return { rootHash, tree };
  }
}

export interface VerityResult {
  rootHash: string;
  salt: string;
  dataBlocks: number;
  hashBlocks: number;
  /** Bytes of data hashed, the zero padding of a partial last block included. */
  dataBytes: number;
}

const READ_CHUNK = 1024 * 1024;

/**
 * Builds the tree over the first `dataBytes` of `file` (default: all of it; a partial last block
 * is hashed zero-padded). With `hashFile`, the tree is written there at `hashOffset` bytes (the
 * same file as the data is fine: `hashOffset` must then lie at or after the padded data's end).
 */
export async function verityFormat(
  file: string,
  o: { salt?: Buffer; dataBytes?: number; hashFile?: string; hashOffset?: number } = {},
): Promise<VerityResult> {
  const salt = o.salt ?? ZERO_SALT;
  const fd = await fs.promises.open(file, 'r');
  let hasher: VerityHasher;
  let padded: number;
  try {
    const size = o.dataBytes ?? (await fd.stat()).size;
    padded = Math.ceil(size / VERITY_BLOCK) * VERITY_BLOCK;
    hasher = new VerityHasher(padded / VERITY_BLOCK, salt);
    const buf = Buffer.alloc(READ_CHUNK);
    let pos = 0;
    while (pos < size) {
      const want = Math.min(READ_CHUNK, size - pos);
      const { bytesRead } = await fd.read(buf, 0, want, pos);
      if (bytesRead === 0) throw new Error(`verity: ${file} ends at ${pos}, before ${size} bytes`);
      pos += bytesRead;
      let n = bytesRead;
      if (pos === size && n % VERITY_BLOCK) {
        const end = Math.ceil(n / VERITY_BLOCK) * VERITY_BLOCK;
        buf.fill(0, n, end);
        n = end;
      } else if (n % VERITY_BLOCK) {
        // A short read inside the file: keep whole blocks only, re-read the rest.
        pos -= n % VERITY_BLOCK;
        n -= n % VERITY_BLOCK;
      }
      hasher.update(buf.subarray(0, n));
    }
  } finally {
    await fd.close();
  }
  const { rootHash, tree } = hasher.finish();
  if (o.hashFile !== undefined) {
    const offset = o.hashOffset ?? 0;
    if (o.hashFile === file && offset < padded) throw new RangeError(`verity: hash offset ${offset} overlaps the data (${padded} bytes padded)`);
    const out = await fs.promises.open(o.hashFile, fs.existsSync(o.hashFile) ? 'r+' : 'w');
    try {
      if (o.hashFile === file && offset > (await out.stat()).size) await out.truncate(offset);
      await out.write(tree, 0, tree.length, offset);
      await out.sync();
    } finally {
      await out.close();
    }
  }
  return {
    rootHash: rootHash.toString('hex'),
    salt: salt.toString('hex'),
    dataBlocks: hasher.geometry.dataBlocks,
    hashBlocks: hasher.geometry.hashBlocks,
    dataBytes: padded,
  };
}

/** The lines `veritysetup format` prints, for the same data, salt and block sizes. */
export function veritysetupReport(name: string, r: VerityResult): string {
  return [
    `VERITY header information for ${name}`,
    'UUID:            \t',
    'Hash type:       \t1',
    `Data blocks:     \t${r.dataBlocks}`,
    `Data block size: \t${VERITY_BLOCK}`,
    `Hash blocks:     \t${r.hashBlocks}`,
    `Hash block size: \t${VERITY_BLOCK}`,
    'Hash algorithm:  \tsha256',
    `Salt:            \t${r.salt || '-'}`,
    `Root hash:      \t${r.rootHash}`,
  ].join('\n');
}
