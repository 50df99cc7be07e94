// The pod network benchmark's share of the report (bench/network.ts): JSON with the unit in every
// key and the ratio to runc, a Markdown table, and two charts (latency; throughput both ways).
// A runtime that could not run or failed is shown with its reason, never as a number.
import { NETWORK_FIGURES, type NetworkFigure, type NetworkReport } from '../network.js';
import { round, withUnit } from '../macro/stats.js';
import type { Bar, ChartSpec } from './svg.js';

function bar(r: NetworkReport, name: string, k: NetworkFigure, whiskerToP95: boolean): Bar {
  const rt = r.runtimes.find((x) => x.name === name);
  if (rt?.unavailable) return { series: name, missing: `not available: ${rt.unavailable}` };
  if (rt?.error) return { series: name, missing: `failed: ${rt.error}` };
  const s = r.results[name]?.[k]?.summary;
  if (!s) return { series: name, missing: 'not measured' };
  // Latency: one slow connection among hundreds would flatten the chart; its whisker ends at p95.
  return whiskerToP95 ? { series: name, median: s.median, min: s.min, max: s.p95 } : { series: name, median: s.median, min: s.min, max: s.max, p95: s.p95 };
}

function ratio(r: NetworkReport, name: string, k: NetworkFigure): number | undefined {
  const base = r.results.runc?.[k]?.summary.median;
  const v = r.results[name]?.[k]?.summary.median;
  return base && v !== undefined ? v / base : undefined;
}

export function networkCharts(r: NetworkReport): { name: string; spec: ChartSpec }[] {
  const series = r.runtimes.map((x) => x.name);
  const e = r.environment;
  const virt = r.runtimes.filter((x) => x.virtualization !== 'n/a (no VM)').map((x) => `${x.name} on ${x.virtualization}`);
  const footer = [`${e.cpuModel}, ${e.cores} cores, load ${e.loadavgStart[0] ?? '?'} -> ${e.loadavgEnd[0] ?? '?'}, containerd ${e.containerd}; ${virt.join(', ')}; ${e.date.slice(0, 16)}Z`];
  const [rr, ...transfers] = NETWORK_FIGURES;
  return [
    {
      name: 'network-latency',
      spec: {
        title: 'pod network: HTTP request/response from this machine, lower is better',
        unit: 'ms',
        series,
        legendNote: 'bar: median; whisker: min to p95',
        groups: [{ label: `${rr!.label}, ${r.settings.requests} x ${r.settings.rounds}`, bars: series.map((n) => bar(r, n, 'rr', true)) }],
        footer,
      },
    },
    {
      name: 'network-throughput',
      spec: {
        title: `pod network: ${r.settings.mib} MiB transfers over the CNI bridge, higher is better`,
        unit: 'MiB/s',
        series,
        groups: transfers.map((f) => ({ label: f.label, bars: series.map((n) => bar(r, n, f.key, false)) })),
        footer,
      },
    },
  ];
}

export function networkJson(r: NetworkReport): Record<string, unknown> {
  const runtimes: Record<string, unknown> = {};
  for (const x of r.runtimes) {
    if (x.unavailable || x.error) {
      const why = x.unavailable ? { available: false, reason: x.unavailable } : { error: x.error };
      runtimes[x.name] = { label: x.label, virtualization: x.virtualization, ...why };
      continue;
    }
    const figs: Record<string, unknown> = { label: x.label, virtualization: x.virtualization };
    for (const f of NETWORK_FIGURES) {
      const s = r.results[x.name]?.[f.key]?.summary;
      if (!s) continue;
      const rt = ratio(r, x.name, f.key);
      const stats = Object.fromEntries(Object.entries(withUnit(s, f.unit)).map(([k, v]) => [k, round(v)]));
      figs[f.key] = { ...stats, ...(rt !== undefined ? { ratio_to_runc: round(rt) } : {}) };
    }
    runtimes[x.name] = figs;
  }
  return { settings: r.settings, environment: r.environment, duration_s: r.durationS, runtimes };
}

export function networkMarkdown(r: NetworkReport): string {
  const n = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
  const out: string[] = [];
  const e = r.environment;
  out.push(
    `A runc, gVisor (netstack, and hostinet) and a katats pod on one CNI bridge of a private containerd ${e.containerd}, measured from this machine in the same run (bench/network.ts): ` +
      `${r.settings.rounds} round(s) of ${r.settings.requests} HTTP GETs of a 6-byte file (a new TCP connection each) and one ${r.settings.mib} MiB transfer each way per round. ` +
      `${e.cores} cores, load average ${e.loadavgStart[0] ?? '?'} before, ${e.loadavgEnd[0] ?? '?'} after; ${r.durationS} s.`,
    '',
  );
  out.push('| runtime | virtualization | ' + NETWORK_FIGURES.map((f) => `${f.key}: median (${f.unit === 'MiBps' ? 'MiB/s' : f.unit}) | ratio to runc`).join(' | ') + ' |');
  out.push('|---|---|' + NETWORK_FIGURES.map(() => '---|---|').join(''));
  for (const x of r.runtimes) {
    const why = x.unavailable ? `not available: ${x.unavailable}` : x.error ? `failed: ${x.error}` : undefined;
    const cells = NETWORK_FIGURES.flatMap((f, i) => {
      if (why) return [i ? '-' : why, 'n/a'];
      const s = r.results[x.name]?.[f.key]?.summary;
      const rt = ratio(r, x.name, f.key);
      return [s ? n(s.median) : 'not measured', rt !== undefined ? rt.toFixed(2) : 'n/a'];
    });
    out.push(`| ${x.name} | ${x.virtualization} | ${cells.map((c) => c.replace(/\|/g, '\\|').replace(/\n/g, ' ')).join(' | ')} |`);
  }
  out.push('', NETWORK_FIGURES.map((f) => `${f.key}: ${f.label}`).join('; ') + '.');
  return out.join('\n');
}
