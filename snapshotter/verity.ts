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
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';

export const VERITY_BLOCK = 4096;

/**
 * One digest. crypto.hash (Node 20.12+) skips the Hash object a digest per 4 KiB block would
 * otherwise cost (a quarter of the time here).
 */
const oneShot = (crypto as { hash?: (alg: string, data: Uint8Array, enc: 'buffer') => Buffer }).hash;
function sha256(data: Uint8Array): Buffer {
  return oneShot ? oneShot('sha256', data, 'buffer') : crypto.createHash('sha256').update(data).digest();
}
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
    sha256(this.salted).copy(out, at);
  }

  /** Leaf digests computed elsewhere (a worker) for the blocks from `first` on, in order. */
  putDigests(first: number, digests: Uint8Array): void {
    const n = digests.length / DIGEST;
    if (first !== this.fed || first + n > this.geometry.dataBlocks) throw new RangeError(`verity: digests for blocks ${first}.. out of order or past the end`);
    this.leaves.set(digests, first * DIGEST);
    this.fed += n;
  }

  get blocksFed(): number {
    return this.fed;
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

const READ_CHUNK = 4 * 1024 * 1024;
/** Below this, hashing in the calling thread beats starting workers. */
const PARALLEL_MIN_BYTES = 32 * 1024 * 1024;

/**
 * Leaf digests in worker threads (a 4 KiB digest costs as much again in per-call overhead as in
 * hashing, so one thread reaches about half of what OpenSSL can): each worker takes a chunk of
 * whole blocks and returns their digests. The worker's code is plain JavaScript evaluated in place,
 * so it runs the same from TypeScript sources and from the bundled binary.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const crypto = require('node:crypto');
const salt = Buffer.from(workerData.salt);
const salted = Buffer.alloc(salt.length + ${VERITY_BLOCK});
salt.copy(salted, 0);
const one = typeof crypto.hash === 'function'
  ? (b) => crypto.hash('sha256', b, 'buffer')
  : (b) => crypto.createHash('sha256').update(b).digest();
parentPort.on('message', (m) => {
  const data = new Uint8Array(m.buf, 0, m.len);
  const n = m.len / ${VERITY_BLOCK};
  const out = new Uint8Array(n * ${DIGEST});
  for (let i = 0; i < n; i++) {
    salted.set(data.subarray(i * ${VERITY_BLOCK}, (i + 1) * ${VERITY_BLOCK}), salt.length);
    out.set(one(salted), i * ${DIGEST});
  }
  parentPort.postMessage({ id: m.id, out: out.buffer }, [out.buffer]);
});
`;

class DigestPool {
  private readonly workers: Worker[];
  private readonly pending = new Map<number, { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }>();
  private next = 0;
  private failed: Error | undefined;

  constructor(n: number, salt: Buffer) {
    this.workers = Array.from({ length: n }, () => {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { salt: new Uint8Array(salt) } });
      w.on('message', (m: { id: number; out: ArrayBuffer }) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        p?.resolve(new Uint8Array(m.out));
      });
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (this.pending.size) this.fail(new Error(`verity: a hashing worker exited (${code})`));
      });
      return w;
    });
  }

  private fail(e: Error): void {
    this.failed ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Digests of the whole blocks in buf[0, len); buf's memory moves to the worker. */
  digests(buf: ArrayBuffer, len: number): Promise<Uint8Array> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.workers[id % this.workers.length]!.postMessage({ id, buf, len }, [buf]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/**
 * Builds the tree over the first `dataBytes` of `file` (default: all of it; a partial last block
 * is hashed zero-padded). With `hashFile`, the tree is written there at `hashOffset` bytes (the
 * same file as the data is fine: `hashOffset` must then lie at or after the padded data's end).
 * Big inputs are hashed by worker threads (`workers`, default: up to 2 where the machine has them),
 * reads running ahead of them.
 */
export async function verityFormat(
  file: string,
  o: { salt?: Buffer; dataBytes?: number; hashFile?: string; hashOffset?: number; workers?: number } = {},
): Promise<VerityResult> {
  const salt = o.salt ?? ZERO_SALT;
  const fd = await fs.promises.open(file, 'r');
  let hasher: VerityHasher;
  let padded: number;
  let pool: DigestPool | undefined;
  try {
    const size = o.dataBytes ?? (await fd.stat()).size;
    padded = Math.ceil(size / VERITY_BLOCK) * VERITY_BLOCK;
    hasher = new VerityHasher(padded / VERITY_BLOCK, salt);
    const workers = o.workers ?? (size >= PARALLEL_MIN_BYTES && os.availableParallelism() > 1 ? 2 : 0);
    if (workers > 0) pool = new DigestPool(workers, salt);
    // Chunks in flight, in file order: [first block, digests].
    const inFlight: Promise<[number, Uint8Array]>[] = [];
    const settle = async () => {
      const [first, d] = await inFlight.shift()!;
      hasher.putDigests(first, d);
    };
    // Reads run one chunk ahead of the hashing (the read waits in libuv's pool, not here).
    const readChunk = async (at: number): Promise<{ buf: ArrayBuffer; view: Buffer }> => {
      const want = Math.min(READ_CHUNK, size - at);
      const buf = new ArrayBuffer(Math.ceil(want / VERITY_BLOCK) * VERITY_BLOCK);
      const view = Buffer.from(buf);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fd.read(view, got, want - got, at + got);
        if (bytesRead === 0) throw new Error(`verity: ${file} ends at ${at + got}, before ${size} bytes`);
        got += bytesRead;
      }
      // A partial last block is hashed zero-padded (the buffer is zeroed beyond `want`).
      return { buf, view };
    };
    let ahead = size > 0 ? readChunk(0) : undefined;
    ahead?.catch(() => undefined);
    for (let pos = 0; pos < size; pos += READ_CHUNK) {
      const { buf, view } = await ahead!;
      ahead = pos + READ_CHUNK < size ? readChunk(pos + READ_CHUNK) : undefined;
      ahead?.catch(() => undefined); // awaited on the next round
      const first = pos / VERITY_BLOCK;
      if (pool) {
        const p = pool.digests(buf, view.length).then((d): [number, Uint8Array] => [first, d]);
        p.catch(() => undefined); // awaited in order by settle(); a failure after an earlier one is not unhandled
        inFlight.push(p);
        if (inFlight.length >= 2 * workers) await settle();
      } else hasher.update(view);
    }
    while (inFlight.length) await settle();
  } finally {
    await fd.close();
    await pool?.close();
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
