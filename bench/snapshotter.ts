// The snapshotter's layer format, timed: the verity tree (ours vs Debian's veritysetup on the same
// file, same salt, in the same run, alternating), and layer builds (tar -> EROFS + verity tree)
// in MB/s of uncompressed tar, for a layer of many small files and one of a few big ones, plain
// and gzip-compressed.   tsx bench/snapshotter.ts [--verity-mib N] [--layer-mib N] [--rounds N] [--json FILE]
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { writeTar, type TarEntry } from '../harness/images/tar.js';
import { buildLayerFile } from '../snapshotter/layer.js';
import { verityFormat, ZERO_SALT } from '../snapshotter/verity.js';

const { values } = parseArgs({ options: { 'verity-mib': { type: 'string' }, 'layer-mib': { type: 'string' }, rounds: { type: 'string' }, json: { type: 'string' } } });
const VERITY_MIB = Number(values['verity-mib'] ?? 256);
const LAYER_MIB = Number(values['layer-mib'] ?? 128);
const ROUNDS = Number(values.rounds ?? 5);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

async function timed(f: () => Promise<unknown> | unknown): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

/** Incompressible-ish content that gzip still shrinks a little (a real layer's mix). */
function content(n: number): Buffer {
  const b = randomBytes(n);
  for (let i = 0; i < n; i += 64) b.fill(0x20, i, Math.min(n, i + 16));
  return b;
}

function smallFilesLayer(totalMib: number): Buffer {
  const entries: TarEntry[] = [];
  let bytes = 0;
  for (let i = 0; bytes < totalMib * 1024 * 1024; i++) {
    const size = 512 + ((i * 7919) % (48 * 1024));
    entries.push({ type: 'file', path: `usr/lib/pkg${i % 97}/dir${i % 13}/file-${i}.so`, data: content(size), mode: 0o644 });
    if (i % 10 === 0) entries.push({ type: 'symlink', path: `usr/lib/pkg${i % 97}/link-${i}`, target: `dir${i % 13}/file-${i}.so` });
    bytes += size;
  }
  return writeTar(entries);
}

function bigFilesLayer(totalMib: number): Buffer {
  const per = Math.ceil(totalMib / 4) * 1024 * 1024;
  return writeTar([0, 1, 2, 3].map((i): TarEntry => ({ type: 'file', path: `opt/data/blob-${i}.bin`, data: content(per) })));
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-bench-sn-'));
  const results: Record<string, unknown> = {
    host: { cpus: os.cpus().length, model: os.cpus()[0]?.model, kernel: os.release(), node: process.version, load: os.loadavg() },
  };
  try {
    // 1. The verity tree.
    const data = path.join(dir, 'verity.data');
    const fd = fs.openSync(data, 'w');
    for (let i = 0; i < VERITY_MIB; i++) fs.writeSync(fd, randomBytes(1024 * 1024));
    fs.closeSync(fd);
    const bytes = VERITY_MIB * 1024 * 1024;
    const ours: number[] = [];
    const ours2: number[] = [];
    const theirs: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      ours.push(await timed(() => verityFormat(data, { salt: ZERO_SALT, hashFile: path.join(dir, 'ours.hash'), workers: 0 })));
      ours2.push(await timed(() => verityFormat(data, { salt: ZERO_SALT, hashFile: path.join(dir, 'ours2.hash'), workers: 2 })));
      theirs.push(
        await timed(() =>
          execFileSync('veritysetup', ['format', '--no-superblock', '--salt', ZERO_SALT.toString('hex'), data, path.join(dir, 'theirs.hash')], { stdio: 'ignore' }),
        ),
      );
    }
    const theirTree = fs.readFileSync(path.join(dir, 'theirs.hash'));
    const same = fs.readFileSync(path.join(dir, 'ours.hash')).equals(theirTree) && fs.readFileSync(path.join(dir, 'ours2.hash')).equals(theirTree);
    const verity = {
      mib: VERITY_MIB,
      oursMs: median(ours),
      veritysetupMs: median(theirs),
      oursMBps: mbps(bytes, median(ours)),
      ours2WorkersMBps: mbps(bytes, median(ours2)),
      veritysetupMBps: mbps(bytes, median(theirs)),
      ratio: median(theirs) / median(ours),
      ratio2Workers: median(theirs) / median(ours2),
      identicalTrees: same,
    };
    results.verity = verity;
    console.log(
      `verity tree, ${VERITY_MIB} MiB, median of ${ROUNDS}: ours ${verity.oursMBps.toFixed(0)} MB/s (one thread), ` +
        `${verity.ours2WorkersMBps.toFixed(0)} MB/s (2 workers), veritysetup ${verity.veritysetupMBps.toFixed(0)} MB/s: ` +
        `${verity.ratio.toFixed(2)}x / ${verity.ratio2Workers.toFixed(2)}x (trees identical: ${same})`,
    );
    fs.rmSync(data);

    // 2. Layer builds.
    const layers: Record<string, unknown> = {};
    for (const [name, make] of [
      ['small files', smallFilesLayer],
      ['big files', bigFilesLayer],
    ] as const) {
      const tar = make(LAYER_MIB);
      for (const gz of [false, true]) {
        const input = path.join(dir, gz ? 'layer.tar.gz' : 'layer.tar');
        fs.writeFileSync(input, gz ? gzipSync(tar, { level: 6 }) : tar);
        const ms: number[] = [];
        let info;
        for (let r = 0; r < Math.max(3, Math.floor(ROUNDS / 2)); r++) {
          const out = path.join(dir, 'layer.out');
          ms.push(await timed(async () => (info = await buildLayerFile(fs.createReadStream(input, { highWaterMark: 1024 * 1024 }), out))));
          fs.rmSync(out);
        }
        const key = `${name}${gz ? ', gzip' : ''}`;
        const m = median(ms);
        const r = { tarMiB: tar.length / 1048576, ms: m, MBps: mbps(tar.length, m), inodes: info!.inodes, fileMiB: info!.fileBytes / 1048576 };
        layers[key] = r;
        console.log(
          `layer build, ${key}: ${r.tarMiB.toFixed(0)} MiB of tar, ${r.inodes} inodes -> ${r.fileMiB.toFixed(0)} MiB layer file in ${r.ms.toFixed(0)} ms: ${r.MBps.toFixed(0)} MB/s`,
        );
        fs.rmSync(input);
      }
    }
    results.layers = layers;
    if (values.json) fs.writeFileSync(values.json, JSON.stringify(results, null, 2));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
