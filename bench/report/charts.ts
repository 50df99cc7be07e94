// Chart specifications from a macro report: one chart per figure family, a bar per runtime.
import { CHART_TITLES, METRICS } from '../macro/metrics.js';
import type { MacroReport } from '../macro/index.js';
import type { Bar, ChartSpec } from './svg.js';

export function macroCharts(r: MacroReport): { name: string; spec: ChartSpec }[] {
  const series = r.runtimes.map((c) => c.name);
  const charts = new Map<string, ChartSpec>();
  for (const m of METRICS) {
    const head = CHART_TITLES[m.chart] ?? { title: m.chart, unit: m.unit };
    const spec = charts.get(m.chart) ?? { title: head.title, unit: head.unit, series, groups: [], footer: [] };
    charts.set(m.chart, spec);
    const bars: Bar[] = r.runtimes.map((c) => {
      if (c.unavailable) return { series: c.name, missing: `not available: ${c.unavailable}` };
      const res = r.results[c.name]?.[m.key];
      if (!res) return { series: c.name, missing: 'not measured' };
      if (!res.ok) return { series: c.name, missing: `failed: ${res.error}` };
      return { series: c.name, median: res.summary.median, min: res.summary.min, max: res.summary.max, p95: res.summary.p95 };
    });
    spec.groups.push({ label: m.group, bars });
  }
  const e = r.environment;
  const foot = `${e.cpuModel}, ${e.cores} cores, kernel ${e.kernel}, containerd ${e.containerd?.version ?? '?'}; ${r.quick ? 'quick run' : 'full run'} ${e.date.slice(0, 16)}Z`;
  for (const spec of charts.values()) spec.footer = [foot];
  return [...charts].map(([name, spec]) => ({ name, spec }));
}
