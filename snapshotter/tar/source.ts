// A layer blob as a stream of uncompressed tar bytes: gzip and zstd are recognised by their magic
// bytes (a plain tar passes through), and both the blob and the uncompressed stream are hashed on
// the way, so a caller can check the blob's digest and the layer's diffID (containerd's names for
// sha256 of the compressed and of the uncompressed bytes) without a second read.
import { spawn } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';

export type Compression = 'gzip' | 'zstd' | 'none';

export class LayerSourceError extends Error {
  override readonly name = 'LayerSourceError';
  readonly code = 'KATATS_LAYER_SOURCE';
}

export interface LayerStream {
  compression: Compression;
  /** Uncompressed bytes, in pieces. */
  chunks: AsyncIterator<Buffer>;
  /** After `chunks` is exhausted: sha256 digests ("sha256:<hex>") and byte counts. */
  result(): Promise<{ digest: string; diffId: string; compressedBytes: number; uncompressedBytes: number }>;
  /** Stops reading and releases the decompressor (call when giving up early). */
  destroy(): void;
}

function detect(b: Buffer): Compression {
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
  if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

/** The zstd CLI as a streaming decompressor (Node 20's zlib has no zstd). */
function zstdDecompressor(): { stdin: NodeJS.WritableStream; stdout: Readable; done: Promise<void>; kill: () => void } {
  const child = spawn('zstd', ['-d', '-c', '-q', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => {
    if (stderr.length < 4096) stderr += b.toString('utf8');
  });
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', (e) => reject(new LayerSourceError(`zstd: ${e.message} (is the zstd package installed?)`)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new LayerSourceError(`zstd: ${stderr.trim() || `exit ${code ?? signal}`}`));
    });
  });
  done.catch(() => undefined); // observed by the caller through result()/chunks
  return { stdin: child.stdin, stdout: child.stdout, done, kill: () => child.kill('SIGKILL') };
}

export async function openLayerStream(input: AsyncIterable<Buffer | Uint8Array>): Promise<LayerStream> {
  const it = input[Symbol.asyncIterator]();
  const compressedHash = createHash('sha256');
  let compressedBytes = 0;
  let first: Buffer = Buffer.alloc(0);
  // Enough bytes to recognise the format.
  let exhausted = false;
  while (first.length < 4) {
    const r = await it.next();
    if (r.done) {
      exhausted = true;
      break;
    }
    first = Buffer.concat([first, Buffer.from(r.value)]);
  }
  const compression = detect(first);
  async function* raw(): AsyncGenerator<Buffer> {
    compressedHash.update(first);
    compressedBytes += first.length;
    if (first.length) yield first;
    if (exhausted) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      const b = Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      compressedHash.update(b);
      compressedBytes += b.length;
      yield b;
    }
  }
  const rawStream = Readable.from(raw(), { objectMode: false });
  let plain: Readable;
  let finished: Promise<void>;
  let destroy: () => void;
  if (compression === 'gzip') {
    const gunzip = zlib.createGunzip();
    // The pipeline reports the first error; zlib can emit another after it settled (a truncated
    // stream being destroyed), which without a listener is an uncaught exception in the process.
    gunzip.on('error', () => undefined);
    finished = pipeline(rawStream, gunzip).catch((e: Error) => {
      throw new LayerSourceError(`gzip: ${e.message}`);
    });
    plain = gunzip;
    destroy = () => {
      rawStream.destroy();
      gunzip.destroy();
    };
  } else if (compression === 'zstd') {
    const z = zstdDecompressor();
    // zstd's own verdict names the problem better than the EPIPE its early exit causes here.
    const fed = pipeline(rawStream, z.stdin).catch(async (e: Error) => {
      z.kill();
      await z.done;
      throw new LayerSourceError(`zstd: ${e.message}`);
    });
    finished = Promise.all([z.done, fed]).then(() => undefined);
    plain = z.stdout;
    destroy = () => {
      rawStream.destroy();
      z.kill();
    };
  } else {
    plain = rawStream;
    finished = Promise.resolve();
    destroy = () => rawStream.destroy();
  }
  finished.catch(() => undefined); // surfaced through chunks and result()
  // A plain tar is its own uncompressed stream: hashed once.
  const uncompressedHash: Hash | undefined = compression === 'none' ? undefined : createHash('sha256');
  let uncompressedBytes = 0;
  const plainIt = plain[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let failed: unknown;
  const chunks: AsyncIterator<Buffer> = {
    async next() {
      let r: IteratorResult<Buffer>;
      try {
        r = await plainIt.next();
      } catch (e) {
        failed = e;
        await finished; // the pipeline's error names the real cause (gzip, zstd)
        throw e instanceof Error && !(e instanceof LayerSourceError) ? new LayerSourceError(`${compression}: ${e.message}`) : e;
      }
      if (r.done) {
        await finished;
        return r;
      }
      uncompressedHash?.update(r.value);
      uncompressedBytes += r.value.length;
      return r;
    },
  };
  return {
    compression,
    chunks,
    async result() {
      if (failed) throw failed;
      await finished;
      const digest = 'sha256:' + compressedHash.digest('hex');
      return {
        digest,
        diffId: uncompressedHash ? 'sha256:' + uncompressedHash.digest('hex') : digest,
        compressedBytes,
        uncompressedBytes,
      };
    },
    destroy,
  };
}
