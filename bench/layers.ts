// Verified layers against today's shared rootfs, the same images through one private containerd:
// `layers` runs them from the tardev snapshotter with shared_fs = none (layer files hot-plugged,
// dm-verity, EROFS, overlay in the guest), `9p` from containerd's overlayfs snapshot shared over
// virtio-9p.
//   npx tsx bench/layers.ts [--n 2] [--mib 64] [--keep-logs DIR]
// Figures (host wall clock, medians of n):
//   start      ctr run --rm of the three-layer image's `true`: a cold pod, VM boot included; for
//              `layers` also the share of it from the VM being ready to the container created
//              (hot-plug and verification of the layers), and the guest's verity-open time per layer
//   big.start  the same with a one-layer image holding MIB MiB of random bytes: the guest reads
//              (verifies) all of it at create
//   big.read   dd of that file in a running container, as dd reports it (MB/s): cold, then again
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { startContainerd, type Containerd } from '../harness/containerd.js';
import { busyboxBinary, busyboxLayer } from '../harness/images/busybox.js';
import { layeredImage, LAYERED_INDEX } from '../harness/images/layered.js';
import { buildOciImage } from '../harness/images/oci.js';
import { writeTar } from '../harness/images/tar.js';
import { SnapshotterProcess, untilContainerdReaches } from '../harness/snapshotter.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';
import { buildHostBinaries } from '../scripts/build.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '2' }, mib: { type: 'string', default: '64' }, 'keep-logs': { type: 'string' } } });
const N = Number(values.n);
const MIB = Number(values.mib);
const say = (s: string) => process.stderr.write(`layers: ${s}\n`);
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

interface Variant {
  name: 'layers' | '9p';
  args: (c: Containerd) => string[];
}

/** Milliseconds between the first log line matching `from` and the last matching `to`. */
function between(file: string, from: string, to: string): number | undefined {
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l) as { time: number; msg: string }; } catch { return undefined; } });
  const a = lines.find((l) => l?.msg === from)?.time;
  const b = lines.filter((l) => l?.msg === to).pop()?.time;
  return a !== undefined && b !== undefined ? b - a : undefined;
}

function verityMs(agentLog: string): number[] {
  return fs.readFileSync(agentLog, 'utf8').split('\n').filter((l) => l.includes('layer verified through dm-verity')).map((l) => (JSON.parse(l) as { ms: number }).ms);
}

let env: KatatsEnv | undefined;
let c: Containerd | undefined;
let sn: SnapshotterProcess | undefined;
try {
  const { binDir } = await buildHostBinaries(say);
  env = await katatsEnv({ onProgress: say, qemuToml: 'shared_fs = "none"' });
  const ninep = path.join(env.dir, 'ninep.toml');
  fs.writeFileSync(ninep, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "none"', 'shared_fs = "virtio-9p"'));
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  c = await startContainerd({ runtimes: [env.runtime], proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }] });
  await sn.start(30_000, c.address);
  await untilContainerdReaches(c, 'tardev');
  const layered = await layeredImage();
  const bigTar = writeTar([{ type: 'file', path: 'big', data: randomBytes(MIB << 20) }]);
  const big = buildOciImage({ name: 'katats.local/bigread:latest', layers: [await busyboxLayer((await busyboxBinary()).file), bigTar], gzip: false });
  const bigArchive = path.join(env.dir, 'big.tar');
  fs.writeFileSync(bigArchive, big.archive);
  for (const sn of [['--snapshotter', 'tardev'], []]) {
    await c.ctrOk(['images', 'import', ...sn, '--index-name', LAYERED_INDEX, layered.archive], { timeoutMs: 600_000 });
    await c.ctrOk(['images', 'import', ...sn, '--index-name', 'katats.local/bigread:index', bigArchive], { timeoutMs: 600_000 });
  }
  const variants: Variant[] = [
    { name: 'layers', args: () => ['--snapshotter', 'tardev'] },
    { name: '9p', args: () => ['--runtime-config-path', ninep] },
  ];
  const out: Record<string, Record<string, number[]>> = { layers: {}, '9p': {} };
  const add = (v: string, k: string, x: number | undefined) => {
    if (x !== undefined) (out[v]![k] ??= []).push(x);
  };
  for (let i = 0; i < N; i++) {
    for (const v of variants) {
      const id = `b-${v.name === '9p' ? 'ninep' : v.name}-${i}`;
      const t0 = performance.now();
      await c.ctrOk(['run', '--rm', ...v.args(c), ...c.runtimeArgs('katats'), layered.name, id, 'true'], { timeoutMs: 600_000 });
      add(v.name, 'start s', (performance.now() - t0) / 1000);
      if (v.name === 'layers') {
        add(v.name, 'ready->created s', (between(path.join(env.logDir, `${id}.log`), 'sandbox VM ready', 'container created') ?? NaN) / 1000);
        for (const ms of verityMs(path.join(env.logDir, `${id}-agent.log`))) add(v.name, 'verity-open per layer ms', ms);
      }
      const bid = `${id}-big`;
      const t1 = performance.now();
      await c.ctrOk(['run', '-d', ...v.args(c), ...c.runtimeArgs('katats'), big.name, bid, 'sleep', '1000'], { timeoutMs: 600_000 });
      add(v.name, 'big.start s', (performance.now() - t1) / 1000);
      if (v.name === 'layers') for (const ms of verityMs(path.join(env.logDir, `${bid}-agent.log`))) if (ms > 0) add(v.name, `big verity-open ms (largest layer)`, ms);
      for (const pass of ['cold', 'again']) {
        // busybox's dd and date print no sub-second times: the guest's uptime around it (10 ms steps).
        const script = 'read a _ < /proc/uptime; dd if=/big of=/dev/null bs=1M 2>/dev/null; read b _ < /proc/uptime; echo "$a $b"';
        const r = await c.ctrOk(['task', 'exec', '--exec-id', `dd-${pass}`, bid, 'sh', '-c', script]);
        const [a, b] = r.stdout.trim().split(' ').map(Number);
        if (a !== undefined && b !== undefined && b > a) add(v.name, `big.read ${pass} MB/s`, MIB / (b - a));
      }
      await c.ctr(['task', 'kill', '-s', 'KILL', bid]);
      await c.ctr(['task', 'rm', '-f', bid]);
      await c.ctr(['container', 'rm', bid]);
      say(`${v.name} round ${i + 1} done`);
    }
  }
  const keys = [...new Set(Object.values(out).flatMap((o) => Object.keys(o)))];
  process.stdout.write(`verified layers (shared_fs none) vs overlayfs over 9p, ${env.accel.toUpperCase()}, n=${N}, big file ${MIB} MiB\n`);
  process.stdout.write(`${'figure'.padEnd(36)} ${'layers'.padStart(10)} ${'9p'.padStart(10)}\n`);
  for (const k of keys) {
    const f = (v: string) => (out[v]![k]?.length ? median(out[v]![k]!).toFixed(k.includes('ms') ? 0 : 2) : '-');
    process.stdout.write(`${k.padEnd(36)} ${f('layers').padStart(10)} ${f('9p').padStart(10)}\n`);
  }
  await c.ctr(['images', 'rm', '--sync', layered.name, LAYERED_INDEX, big.name, 'katats.local/bigread:index']);
} finally {
  if (values['keep-logs'] && env) fs.cpSync(env.logDir, values['keep-logs'], { recursive: true });
  if (sn) await sn.stop().catch((e: unknown) => say(`stopping the snapshotter: ${(e as Error).message}`));
  if (c) await c.stop();
  env?.cleanup();
}
