// A layer file: the layer's tar as a deterministic EROFS image, zero-padded to a 4096-byte
// boundary (EROFS images are whole blocks already), with its dm-verity tree (format 1, sha256,
// 4096-byte blocks, the zero salt by default) appended at that boundary. The root hash depends
// only on the tar: the same layer gives the same file, byte for byte, on any machine.
//
// Written under a temporary name next to OUT, synced, then renamed: a crash leaves either no file
// or the whole file at OUT, never half of one.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ErofsWriter } from './erofs/writer.js';
import { ChunkReader } from './tar/chunks.js';
import { TarReader } from './tar/reader.js';
import { openLayerStream, type Compression } from './tar/source.js';
import { VERITY_BLOCK, verityFormat, ZERO_SALT } from './verity.js';

export interface LayerFile {
  rootHash: string;
  /** sha256 of the blob as read (compressed), "sha256:<hex>". */
  digest: string;
  /** sha256 of the uncompressed tar (the image config's diff_id). */
  diffId: string;
  compression: Compression;
  /** Bytes of the EROFS image (the verity data area); the hash tree starts here. */
  erofsBytes: number;
  /** Whole file. */
  fileBytes: number;
  uncompressedBytes: number;
  inodes: number;
  entries: number;
}

export interface BuildOptions {
  salt?: Buffer;
  /** Refuse a blob whose sha256 differs ("sha256:<hex>"). */
  expectDigest?: string;
  /** Refuse a tar whose sha256 differs. */
  expectDiffId?: string;
}

export class LayerDigestError extends Error {
  override readonly name = 'LayerDigestError';
  readonly code = 'KATATS_LAYER_DIGEST';
}

/** The volume UUID: from the tar's digest, so it is the same wherever the layer is built. */
function uuidOf(diffId: string): Buffer {
  const u = createHash('sha256').update(`katats erofs layer ${diffId}`).digest().subarray(0, 16);
  u[6] = (u[6]! & 0x0f) | 0x80; // RFC 9562 version 8: custom, here content-derived
  u[8] = (u[8]! & 0x3f) | 0x80;
  return Buffer.from(u);
}

async function fsyncDir(dir: string): Promise<void> {
  const fd = await fs.promises.open(dir, 'r');
  try {
    await fd.sync();
  } finally {
    await fd.close();
  }
}

/** Builds the layer file at `out` from the blob's bytes (gzip, zstd or plain tar). */
export async function buildLayerFile(blob: AsyncIterable<Buffer | Uint8Array>, out: string, o: BuildOptions = {}): Promise<LayerFile> {
  const tmp = path.join(path.dirname(out), `.${path.basename(out)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const src = await openLayerStream(blob);
  const writer = await ErofsWriter.open(tmp);
  try {
    const reader = new TarReader(new ChunkReader(src.chunks));
    for (let e = await reader.next(); e; e = await reader.next()) await writer.add(e, reader);
    await reader.drain(); // what follows the end marker still counts for the diffID
    const got = await src.result();
    if (o.expectDigest && got.digest !== o.expectDigest) throw new LayerDigestError(`layer: the blob's digest is ${got.digest}, expected ${o.expectDigest}`);
    if (o.expectDiffId && got.diffId !== o.expectDiffId) throw new LayerDigestError(`layer: the uncompressed tar's digest is ${got.diffId}, expected ${o.expectDiffId}`);
    const fsr = await writer.finish(uuidOf(got.diffId));
    const erofsBytes = fsr.blocks * VERITY_BLOCK;
    const v = await verityFormat(tmp, { salt: o.salt ?? ZERO_SALT, dataBytes: erofsBytes, hashFile: tmp, hashOffset: erofsBytes });
    const fileBytes = erofsBytes + v.hashBlocks * VERITY_BLOCK;
    await fs.promises.rename(tmp, out);
    await fsyncDir(path.dirname(out));
    return {
      rootHash: v.rootHash,
      digest: got.digest,
      diffId: got.diffId,
      compression: src.compression,
      erofsBytes,
      fileBytes,
      uncompressedBytes: got.uncompressedBytes,
      inodes: fsr.inodes,
      entries: fsr.entries,
    };
  } catch (e) {
    src.destroy();
    await writer.abort(tmp);
    throw e;
  }
}
