// Container I/O and CPU, timed inside the container with /proc/uptime (10 ms ticks; every step is
// sized to take about a second on runc): a sequential write with fsync into the root filesystem,
// sequential reads of that file (page cache warm), a busybox sh arithmetic loop, and sha256sum of
// zeros piped from dd. One script per `ctr task exec`, repeated (runtimes taking turns); each
// repetition gives one sample.
import { fmt, record, recordError, type MacroContext } from './metrics.js';
import { removePod, startDetached, timedExec } from './pods.js';

export interface WorkloadSize {
  writeMB: number;
  /** How many times the written file is read back. */
  readPasses: number;
  loopIterations: number;
  sha256MB: number;
  repetitions: number;
}

export const QUICK_WORKLOAD: WorkloadSize = { writeMB: 64, readPasses: 4, loopIterations: 100_000, sha256MB: 32, repetitions: 1 };
export const FULL_WORKLOAD: WorkloadSize = { writeMB: 256, readPasses: 8, loopIterations: 300_000, sha256MB: 64, repetitions: 5 };

/** What a runtime's write figure means beyond the obvious. */
const WRITE_NOTES: Record<string, string> = {
  runc: 'the file lands in the overlayfs upper dir on the host disk; conv=fsync reaches the disk',
  runsc:
    "the file lands in the sentry's overlay on the root fs (runsc's default --overlay2=root:self: an in-sandbox tmpfs whose pages sit in a filestore file in the rootfs dir); conv=fsync does not reach the host disk",
};

export function workloadScript(w: WorkloadSize): string {
  return [
    `read s x < /proc/uptime; dd if=/dev/zero of=/bench.dat bs=1M count=${w.writeMB} conv=fsync 2>/dev/null; read e x < /proc/uptime; echo "write $s $e"`,
    `read s x < /proc/uptime; r=0; while [ $r -lt ${w.readPasses} ]; do dd if=/bench.dat of=/dev/null bs=1M 2>/dev/null; r=$((r+1)); done; read e x < /proc/uptime; echo "read $s $e"`,
    'rm -f /bench.dat',
    `read s x < /proc/uptime; i=0; while [ $i -lt ${w.loopIterations} ]; do i=$((i+1)); done; read e x < /proc/uptime; echo "loop $s $e"`,
    `read s x < /proc/uptime; dd if=/dev/zero bs=1M count=${w.sha256MB} 2>/dev/null | sha256sum >/dev/null; read e x < /proc/uptime; echo "sha256 $s $e"`,
  ].join('\n');
}

/** Seconds per step from the script's output ("write START END" ...). */
export function parseWorkload(stdout: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of stdout.split('\n')) {
    const m = /^(write|read|loop|sha256) ([\d.]+) ([\d.]+)$/.exec(line.trim());
    if (m) out[m[1]!] = Math.max(Number(m[3]) - Number(m[2]), 0.01); // one tick at least
  }
  return out;
}

export async function measureWorkload(ctx: MacroContext, w: WorkloadSize): Promise<void> {
  const script = workloadScript(w);
  const MB = (1024 * 1024) / 1e6; // dd's 1M is a MiB; figures are in MB (10^6 bytes)
  const keys = ['io.write', 'io.read', 'cpu.loop', 'cpu.sha256'];
  const samples: Record<string, Record<string, number[]>> = {};
  const live: string[] = [];
  for (const rt of ctx.runtimes) {
    try {
      await startDetached(ctx.cd, rt, ctx.image, `io-${rt}`, ['sleep', '3600']);
      live.push(rt);
      samples[rt] = Object.fromEntries(keys.map((k) => [k, []]));
    } catch (err) {
      for (const k of keys) recordError(ctx, rt, k, err);
      await removePod(ctx.cd, rt, `io-${rt}`);
    }
  }
  // Runtimes take turns repetition by repetition, so that a busy moment of the machine hits all alike.
  for (let i = 0; i < w.repetitions; i++) {
    for (const rt of [...live]) {
      try {
        const r = await timedExec(ctx.cd, `io-${rt}`, `w${i}`, ['sh', '-c', script], 600_000);
        const s = parseWorkload(r.stdout);
        if (r.code !== 0 || Object.keys(s).length !== 4) throw new Error(`workload script: exit ${r.code}, output ${JSON.stringify(r.stdout.slice(0, 300))}: ${r.stderr.trim().slice(-300)}`);
        const x = samples[rt]!;
        x['io.write']!.push((w.writeMB * MB) / s.write!);
        x['io.read']!.push((w.writeMB * w.readPasses * MB) / s.read!);
        x['cpu.loop']!.push(w.loopIterations / 1000 / s.loop!);
        x['cpu.sha256']!.push((w.sha256MB * MB) / s.sha256!);
        ctx.log(
          `macro: io/cpu ${rt} ${i + 1}/${w.repetitions}: write ${fmt(x['io.write']!.at(-1)!, 'MB/s')}, read ${fmt(x['io.read']!.at(-1)!, 'MB/s')}, ` +
            `loop ${fmt(x['cpu.loop']!.at(-1)!, 'kiter/s')}, sha256 ${fmt(x['cpu.sha256']!.at(-1)!, 'MB/s')}`,
        );
      } catch (err) {
        for (const k of keys) recordError(ctx, rt, k, err);
        live.splice(live.indexOf(rt), 1);
      }
    }
  }
  for (const rt of live) for (const k of keys) record(ctx, rt, k, samples[rt]![k]!, k === 'io.write' ? WRITE_NOTES[rt] : undefined);
  for (const rt of ctx.runtimes) await removePod(ctx.cd, rt, `io-${rt}`);
}
