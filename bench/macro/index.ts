// The macro benchmark: one private containerd with every runtime registered (runc, gVisor's runsc
// through the runc shim, the katats slot), the busybox image imported, then pod start, exec latency,
// container I/O and CPU, host memory per pod and density, each runtime measured in the same run so
// that ratios to runc compare like with like.
import os from 'node:os';
import { startContainerd, type ContainerdFlavor } from '../../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../../harness/images/busybox.js';
import { environment, type Environment } from './env.js';
import { measureDensity } from './density.js';
import { measureExec } from './exec.js';
import { measureMemory } from './memory.js';
import { METRICS, type MacroContext, type Results } from './metrics.js';
import { removePod, timedRunRm } from './pods.js';
import { findRuntimes, type RuntimeCandidate } from './runtimes.js';
import { measureStart } from './start.js';
import { round, withUnit } from './stats.js';
import { FULL_WORKLOAD, QUICK_WORKLOAD, measureWorkload, type WorkloadSize } from './workload.js';

export interface MacroSettings {
  startRuns: number;
  execRuns: number;
  workload: WorkloadSize;
  memoryPods: number[];
  memorySettleMs: number;
  densityPods: number[];
  densityRepetitions: number;
}

export const QUICK: MacroSettings = {
  startRuns: 5, execRuns: 5, workload: QUICK_WORKLOAD, memoryPods: [1, 5], memorySettleMs: 1000, densityPods: [1, 5, 10], densityRepetitions: 1,
};
export const FULL: MacroSettings = {
  startRuns: 20, execRuns: 20, workload: FULL_WORKLOAD, memoryPods: [1, 5], memorySettleMs: 2000, densityPods: [1, 5, 10], densityRepetitions: 3,
};

export interface MacroOptions {
  quick?: boolean;
  flavor?: ContainerdFlavor;
  log?: (line: string) => void;
  /** containerd's and the harness's logs are copied here when something went wrong. */
  logsDir?: string;
  /** The load average before anything of the benchmark ran (default: when the macro benchmark starts). */
  loadavgBefore?: number[];
}

export interface MacroReport {
  quick: boolean;
  settings: MacroSettings;
  environment: Environment;
  runtimes: RuntimeCandidate[];
  results: Results;
  /** What containerd's stop() had to clean up by force (0/0 after a clean run). */
  cleanup: { killed: number; unmounted: number };
  durationS: number;
}

export async function runMacroBench(opts: MacroOptions = {}): Promise<MacroReport> {
  const log = opts.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const settings = opts.quick ? QUICK : FULL;
  const t0 = performance.now();
  const env = environment();
  if (opts.loadavgBefore) env.loadavgStart = opts.loadavgBefore.map((x) => round(x, 2));
  log('macro: finding runtimes');
  const candidates = await findRuntimes(log);
  const image = await busyboxImage({ onProgress: log });
  env.busybox = image.busyboxVersion;
  const usable = candidates.filter((c) => !c.unavailable && c.registration);
  for (const c of candidates) if (c.unavailable) log(`macro: ${c.name}: not available: ${c.unavailable}`);
  const cd = await startContainerd({ flavor: opts.flavor ?? 'bookworm', runtimes: usable.filter((c) => c.name !== 'runc').map((c) => c.registration!), onProgress: log });
  env.containerd = { flavor: cd.binaries.flavor, version: cd.binaries.version };
  env.runc = candidates.find((c) => c.name === 'runc')?.version;
  env.runsc = candidates.find((c) => c.name === 'runsc')?.version;
  for (const c of candidates) env.virtualization[c.name] = c.virtualization;
  const ctx: MacroContext = { cd, image: image.name, runtimes: [], quick: !!opts.quick, log, results: {} };
  let failed = false;
  let cleanup = { killed: 0, unmounted: 0 };
  try {
    log(`macro: containerd ${cd.binaries.version} (${cd.binaries.flavor}) at ${cd.dir}`);
    await cd.importImage(image.archive, BUSYBOX_INDEX);
    // Warm-up: one pod per runtime, not counted; a runtime that cannot start a pod is reported as such.
    for (const c of usable) {
      const r = await timedRunRm(cd, c.name, image.name, `warm-${c.name}`, ['sh', '-c', 'echo ready']).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
      if (r.code === 0 && r.stdout.trim() === 'ready') {
        ctx.runtimes.push(c.name);
        log(`macro: ${c.name}: warm-up pod ok`);
      } else {
        c.unavailable = `cannot start a pod here: ctr run exit ${r.code}: ${r.stderr.trim().slice(-400)}`;
        log(`macro: ${c.name}: not available: ${c.unavailable}`);
        await removePod(cd, c.name, `warm-${c.name}`);
        failed = true;
      }
    }
    log(`macro: pod start, ${settings.startRuns} runs per runtime`);
    await measureStart(ctx, settings.startRuns);
    log(`macro: exec latency, ${settings.execRuns} execs per runtime`);
    await measureExec(ctx, settings.execRuns);
    log('macro: container I/O and CPU');
    await measureWorkload(ctx, settings.workload);
    log(`macro: host memory per pod with ${settings.memoryPods.join(' and ')} idle pods`);
    await measureMemory(ctx, settings.memoryPods, settings.memorySettleMs);
    log(`macro: density, ${settings.densityPods.join('/')} pods at once`);
    await measureDensity(ctx, settings.densityPods, settings.densityRepetitions);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    failed ||= Object.values(ctx.results).some((r) => Object.values(r).some((m) => !m.ok));
    const report = await cd.stop(failed && opts.logsDir ? { keepLogsIn: opts.logsDir } : {});
    cleanup = { killed: report.killed.length, unmounted: report.unmounted.length };
    if (cleanup.killed || cleanup.unmounted) log(`macro: clean-up had to kill ${cleanup.killed} processes and unmount ${cleanup.unmounted} mounts`);
    for (const c of candidates) c.cleanup?.();
  }
  env.loadavgEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  const durationS = round((performance.now() - t0) / 1000, 1);
  return { quick: !!opts.quick, settings, environment: env, runtimes: candidates, results: ctx.results, cleanup, durationS };
}

function setPath(obj: Record<string, unknown>, dotted: string, value: Record<string, unknown>): void {
  const keys = dotted.split('.');
  let cur = obj;
  for (const k of keys.slice(0, -1)) cur = (cur[k] ??= {}) as Record<string, unknown>;
  const last = keys[keys.length - 1]!;
  cur[last] = Object.assign((cur[last] as Record<string, unknown>) ?? {}, value);
}

/** Median of `runtime`'s figure divided by runc's from the same run. */
export function ratioToRunc(results: Results, runtime: string, key: string): number | undefined {
  const a = results[runtime]?.[key];
  const b = results.runc?.[key];
  if (!a?.ok || !b?.ok || !b.summary.median) return undefined;
  return round(a.summary.median / b.summary.median, 3);
}

/** The JSON form: runtimes.<name>.<metric path>.{median_<unit>, p95_<unit>, min_<unit>, max_<unit>, n, ratio_to_runc}. */
export function macroJson(r: MacroReport): Record<string, unknown> {
  const runtimes: Record<string, unknown> = {};
  for (const c of r.runtimes) {
    if (c.unavailable) {
      runtimes[c.name] = { available: false, reason: c.unavailable, label: c.label, virtualization: c.virtualization };
      continue;
    }
    const out: Record<string, unknown> = { available: true, label: c.label, version: c.version ?? null, virtualization: c.virtualization };
    for (const m of METRICS) {
      const res = r.results[c.name]?.[m.key];
      if (!res) continue;
      if (!res.ok) {
        setPath(out, m.key, { error: res.error });
        continue;
      }
      const fig = Object.fromEntries(Object.entries(withUnit(res.summary, m.unitKey)).map(([k, v]) => [k, k === 'n' ? v : round(v)]));
      const ratio = ratioToRunc(r.results, c.name, m.key) ?? null;
      setPath(out, m.key, { ...fig, ratio_to_runc: ratio, samples: res.samples.map((v) => round(v)), ...(res.note ? { note: res.note } : {}) });
    }
    runtimes[c.name] = out;
  }
  return {
    kind: 'katats macro benchmark',
    quick: r.quick,
    duration_s: r.durationS,
    settings: r.settings,
    environment: r.environment,
    metrics: METRICS.map((m) => ({ path: m.key, title: m.title, unit: m.unit, json_unit: m.unitKey, better: m.better })),
    runtimes,
    cleanup: r.cleanup,
  };
}
