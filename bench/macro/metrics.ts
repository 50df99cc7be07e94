// The macro benchmark's figures: what each one measures, its unit, which direction is better, and
// where it lands in the JSON report (runtimes.<name>.<path>.median_<unit>, ...).
import type { Containerd } from '../../harness/containerd.js';
import { summarize, type Summary } from './stats.js';

export interface MetricDef {
  /** Dotted path under runtimes.<name> in the JSON, e.g. "start", "io.write", "density.k10". */
  key: string;
  title: string;
  /** Unit as shown, and as written into JSON keys (unitKey). */
  unit: string;
  unitKey: string;
  better: 'lower' | 'higher';
  /** Chart this figure is drawn in (figures sharing a chart are drawn as groups). */
  chart: string;
  /** Label of the figure inside its chart. */
  group: string;
}

export const METRICS: MetricDef[] = [
  { key: 'start', title: 'Pod start: `ctr run --rm` to first output byte', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'start', group: 'to first output' },
  { key: 'start.exit', title: 'Pod start: `ctr run --rm` to exit', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'start', group: 'to exit' },
  { key: 'exec', title: 'Exec latency: `ctr task exec` of `true` into a running container', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'exec', group: 'exec' },
  { key: 'io.write', title: 'Sequential write: dd bs=1M conv=fsync into the container root fs', unit: 'MB/s', unitKey: 'MBps', better: 'higher', chart: 'io', group: 'write' },
  { key: 'io.read', title: 'Sequential read: dd bs=1M of that file (page cache warm)', unit: 'MB/s', unitKey: 'MBps', better: 'higher', chart: 'io', group: 'read' },
  { key: 'cpu.loop', title: 'CPU: busybox sh arithmetic loop', unit: 'kiter/s', unitKey: 'kiter_per_s', better: 'higher', chart: 'cpu-loop', group: 'shell loop' },
  { key: 'cpu.sha256', title: 'CPU: dd from /dev/zero piped into sha256sum', unit: 'MB/s', unitKey: 'MBps', better: 'higher', chart: 'cpu-sha256', group: 'sha256sum' },
  { key: 'memory.pods_1', title: 'Host memory per pod (PSS of shim and everything under it), 1 idle pod', unit: 'MiB', unitKey: 'MiB', better: 'lower', chart: 'memory', group: '1 pod' },
  { key: 'memory.pods_5', title: 'Host memory per pod (PSS of shim and everything under it), 5 idle pods', unit: 'MiB', unitKey: 'MiB', better: 'lower', chart: 'memory', group: '5 pods' },
  { key: 'density.k1', title: 'Density: start 1 pod at once (`ctr run -d`), until all started', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'density', group: 'K=1' },
  { key: 'density.k5', title: 'Density: start 5 pods at once, until all started', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'density', group: 'K=5' },
  { key: 'density.k10', title: 'Density: start 10 pods at once, until all started', unit: 'ms', unitKey: 'ms', better: 'lower', chart: 'density', group: 'K=10' },
];

export const CHART_TITLES: Record<string, { title: string; unit: string }> = {
  start: { title: 'Pod start (ctr run --rm), lower is better', unit: 'ms' },
  exec: { title: 'Exec latency (ctr task exec), lower is better', unit: 'ms' },
  io: { title: 'Container I/O, higher is better', unit: 'MB/s' },
  'cpu-loop': { title: 'CPU: shell loop, higher is better', unit: 'kiter/s' },
  'cpu-sha256': { title: 'CPU: sha256sum, higher is better', unit: 'MB/s' },
  memory: { title: 'Host memory per pod (PSS), lower is better', unit: 'MiB' },
  density: { title: 'Density: K pods started at once, lower is better', unit: 'ms' },
};

export type MetricResult = { ok: true; summary: Summary; samples: number[]; note?: string } | { ok: false; error: string };

/** results[runtime][metric key] */
export type Results = Record<string, Record<string, MetricResult>>;

export interface MacroContext {
  cd: Containerd;
  image: string;
  /** Runtimes that passed the warm-up, in report order (runc first). */
  runtimes: string[];
  quick: boolean;
  log: (line: string) => void;
  results: Results;
}

export function record(ctx: MacroContext, runtime: string, key: string, samples: number[], note?: string): void {
  (ctx.results[runtime] ??= {})[key] = { ok: true, summary: summarize(samples), samples, ...(note ? { note } : {}) };
}

export function recordError(ctx: MacroContext, runtime: string, key: string, err: unknown): void {
  const error = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').trim().slice(0, 600);
  (ctx.results[runtime] ??= {})[key] = { ok: false, error };
  ctx.log(`macro: ${runtime}: ${key} failed: ${error}`);
}

export function fmt(n: number, unit: string): string {
  const digits = n >= 100 ? 0 : n >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${unit}`;
}
