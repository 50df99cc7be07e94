// Shared filesystem benchmark: the same container work over 9p (security_model=none), 9p
// (mapped-xattr) and virtio-fs, each through a private containerd and the real shim.
//   npx tsx bench/sharedfs.ts [--n 2] [--files 1000] [--mib 64] [--only virtio-9p-none,virtio-fs]
// Figures (host wall clock, medians of n; the exec figures include one exec's fixed cost, shown
// on its own as `exec`):
//   start        ctr run --rm of `busybox true`: a cold pod, VM boot included
//   exec         ctr task exec of `busybox true`
//   small.write  N files of a few bytes written by the shell (creates through the share)
//   tar.extract  a tar of those N files extracted into a new dir
//   seq.write    a MiB-sized file written with dd (1 MiB blocks, fsync)
//   seq.read     that file read back with dd (the guest's cache may serve it); MiB/s figures
//                subtract `exec`
// Every command runs /bin/busybox by its real path: 9p mapped-xattr cannot follow the image's
// applet symlinks (QEMU reads symlinks as files in that model), which is itself a finding.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { startContainerd, type Containerd } from '../harness/containerd.js';
import { busyboxImage } from '../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '2' },
    files: { type: 'string', default: '500' },
    mib: { type: 'string', default: '256' },
    only: { type: 'string' },
  },
});
const N = Number(values.n);
const FILES = Number(values.files);
const MIB = Number(values.mib);

interface Variant {
  name: string;
  qemuToml: string;
}
const VARIANTS: Variant[] = [
  { name: 'virtio-9p-none', qemuToml: 'shared_fs = "virtio-9p"\nvirtio_9p_security_model = "none"' },
  { name: 'virtio-9p-mapped-xattr', qemuToml: 'shared_fs = "virtio-9p"\nvirtio_9p_security_model = "mapped-xattr"' },
  { name: 'virtio-fs', qemuToml: 'shared_fs = "virtio-fs"' },
].filter((v) => !values.only || values.only.split(',').includes(v.name));

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const say = (s: string) => process.stderr.write(`sharedfs: ${s}\n`);

async function timed(f: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function runVariant(v: Variant, image: { archive: string; name: string }): Promise<Record<string, number | string>> {
  let env: KatatsEnv | undefined;
  let c: Containerd | undefined;
  try {
    env = await katatsEnv({ qemuToml: v.qemuToml, onProgress: () => {} });
    c = await startContainerd({ runtimes: [env.runtime] });
    await c.importImage(image.archive, 'katats.local/busybox:index');
    const rt = c.runtimeArgs('katats');
    const out: Record<string, number | string> = { accel: env.accel.toUpperCase() };
    const starts: number[] = [];
    for (let i = 0; i < N; i++) {
      starts.push(
        await timed(async () => {
          await c!.ctrOk(['run', '--rm', ...rt, image.name, `start${i}`, '/bin/busybox', 'true'], { timeoutMs: 300_000 });
        }),
      );
    }
    out.start = median(starts);
    await c.ctrOk(['run', '-d', ...rt, image.name, 'work', '/bin/busybox', 'sleep', '100000'], { timeoutMs: 300_000 });
    let k = 0;
    const exec = async (script: string) => {
      await c!.ctrOk(['task', 'exec', '--exec-id', `x${k++}`, 'work', '/bin/busybox', 'sh', '-c', script], { timeoutMs: 600_000 });
    };
    const figures: Record<string, number[]> = { exec: [], 'small.write': [], 'tar.extract': [], 'seq.write': [], 'seq.read': [] };
    for (let i = 0; i < N; i++) {
      const d = `/r${i}`;
      figures.exec!.push(await timed(() => exec('true')));
      figures['small.write']!.push(await timed(() => exec(`/bin/busybox mkdir ${d} && cd ${d} && i=0; while [ $i -lt ${FILES} ]; do echo "file $i" > f$i; i=$((i+1)); done`)));
      await exec(`/bin/busybox tar -cf ${d}.tar -C ${d} .`);
      figures['tar.extract']!.push(await timed(() => exec(`/bin/busybox mkdir ${d}x && /bin/busybox tar -xf ${d}.tar -C ${d}x`)));
      figures['seq.write']!.push(await timed(() => exec(`/bin/busybox dd if=/dev/zero of=${d}.big bs=1M count=${MIB} conv=fsync 2>/dev/null`)));
      figures['seq.read']!.push(await timed(() => exec(`/bin/busybox dd if=${d}.big of=/dev/null bs=1M 2>/dev/null`)));
      await exec(`/bin/busybox rm -rf ${d} ${d}x ${d}.tar ${d}.big`);
    }
    for (const [kf, xs] of Object.entries(figures)) out[kf] = median(xs);
    const rate = (k: string) => {
      const ms = (out[k] as number) - (out.exec as number);
      return ms > 0 ? MIB / (ms / 1000) : 'n/a (within exec noise)';
    };
    out['seq.write.MiBps'] = rate('seq.write');
    out['seq.read.MiBps'] = rate('seq.read');
    await c.ctr(['task', 'kill', '-s', 'SIGKILL', 'work']);
    for (let i = 0; i < 50 && !/work\s+\d+\s+STOPPED/.test((await c.ctr(['task', 'ls'])).stdout); i++) await new Promise((r) => setTimeout(r, 200));
    await c.ctr(['task', 'rm', '-f', 'work']);
    await c.ctr(['container', 'rm', 'work']);
    return out;
  } catch (e) {
    return { error: (e as Error).message.split('\n').slice(0, 3).join(' | ') };
  } finally {
    await c?.stop();
    env?.cleanup();
  }
}

const image = await busyboxImage();
const results: Record<string, Record<string, number | string>> = {};
for (const v of VARIANTS) {
  say(`${v.name} ...`);
  results[v.name] = await runVariant(v, image);
  say(`${v.name}: ${JSON.stringify(results[v.name])}`);
}
const cols = ['start', 'exec', 'small.write', 'tar.extract', 'seq.write', 'seq.read'];
const ref = results['virtio-9p-none'];
const lines = [
  `shared filesystem benchmark: ${os.cpus().length} cores, ${os.loadavg()[0]!.toFixed(2)} load, n=${N}, ${FILES} small files, ${MIB} MiB sequential; ms (median), ratio to 9p none`,
  ['variant', 'accel', ...cols].join('\t'),
];
for (const [name, r] of Object.entries(results)) {
  if (r.error) {
    lines.push(`${name}\terror: ${r.error}`);
    continue;
  }
  const cell = (k: string) => {
    const x = r[k] as number;
    const base = ref && !ref.error ? (ref[k] as number) : undefined;
    return `${Math.round(x)}${base ? ` (${(x / base).toFixed(2)}x)` : ''}`;
  };
  lines.push([name, r.accel, ...cols.map(cell)].join('\t'));
}
console.log(lines.join('\n'));
console.log(JSON.stringify(results, null, 2));
