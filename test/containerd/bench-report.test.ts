// The macro benchmark's report contract: JSON key paths (runtimes.<name>.start.median_ms ...), ratios
// to runc from the same run, unavailable runtimes and failed figures reported with their reasons,
// and SVG charts that draw "n/a" instead of a number. Synthetic figures: no containerd needed.
import { describe, expect, test } from 'vitest';
import { macroJson, QUICK, type MacroReport } from '../../bench/macro/index.js';
import { summarize } from '../../bench/macro/stats.js';
import { macroCharts } from '../../bench/report/charts.js';
import { macroMarkdown, ratioSummary } from '../../bench/report/markdown.js';
import { barChartSvg, niceScale } from '../../bench/report/svg.js';
import { networkCharts, networkJson, networkMarkdown } from '../../bench/report/network.js';
import { NETWORK_QUICK, type NetworkReport } from '../../bench/network.js';

const ok = (samples: number[]) => ({ ok: true as const, summary: summarize(samples), samples });

function report(): MacroReport {
  return {
    quick: true,
    settings: QUICK,
    durationS: 12.3,
    cleanup: { killed: 0, unmounted: 0 },
    environment: {
      date: '2025-01-01T00:00:00.000Z',
      host: 'h',
      cpuModel: 'AMD EPYC',
      cores: 2,
      memoryGiB: 24,
      kernel: '6.1.0',
      node: 'v20',
      devKvm: true,
      loadavgStart: [0.1, 0.1, 0.1],
      loadavgEnd: [1, 1, 1],
      containerd: { flavor: 'bookworm', version: '1.6.20' },
      virtualization: { runc: 'n/a (no VM)', runsc: 'n/a (no VM)', katats: 'n/a (not available)' },
    },
    runtimes: [
      { name: 'runc', label: 'runc', virtualization: 'n/a (no VM)', version: '1.1.5' },
      { name: 'runsc', label: 'gVisor', virtualization: 'n/a (no VM)', version: '2024' },
      { name: 'katats', label: 'katats', virtualization: 'n/a (not available)', unavailable: 'containerd-shim-katats-v2 is not on PATH' },
    ],
    results: {
      runc: { start: ok([100, 110, 120]), 'start.exit': ok([150, 160, 170]), 'io.write': ok([400, 500]), 'density.k10': ok([1000]) },
      runsc: { start: ok([250, 260, 300]), 'start.exit': ok([300, 320, 340]), 'io.write': { ok: false, error: 'sandbox died' }, 'density.k10': ok([2000]) },
    },
  };
}

describe('macro benchmark report', () => {
  test('JSON: figures under runtimes.<name>.<path> with the unit in the key and the ratio to runc', () => {
    const j = macroJson(report()) as any;
    expect(j.runtimes.runc.start.median_ms).toBe(110);
    expect(j.runtimes.runc.start.ratio_to_runc).toBe(1);
    expect(j.runtimes.runsc.start.median_ms).toBe(260);
    expect(j.runtimes.runsc.start.p95_ms).toBeCloseTo(296);
    expect(j.runtimes.runsc.start.ratio_to_runc).toBeCloseTo(2.364, 3);
    expect(j.runtimes.runsc.start.exit.median_ms).toBe(320);
    expect(j.runtimes.runsc.start.exit.ratio_to_runc).toBe(2);
    expect(j.runtimes.runc.io.write.median_MBps).toBe(450);
    expect(j.runtimes.runsc.io.write).toEqual({ error: 'sandbox died' });
    expect(j.runtimes.runsc.density.k10.ratio_to_runc).toBe(2);
    expect(j.runtimes.katats).toEqual({ available: false, reason: 'containerd-shim-katats-v2 is not on PATH', label: 'katats', virtualization: 'n/a (not available)' });
    expect(j.environment.virtualization.runc).toBe('n/a (no VM)');
  });

  test('Markdown: reasons instead of numbers where a runtime or a figure is missing', () => {
    const md = macroMarkdown(report());
    expect(md).toContain('| katats | not available: containerd-shim-katats-v2 is not on PATH |');
    expect(md).toContain('| runsc | failed: sandbox died |');
    expect(md).toContain('| runsc | 260 | 296 | 250 | 300 | 3 | 2.36 |');
    const summary = ratioSummary(report());
    expect(summary).toContain('| start | ms | 110 | 260 | 2.36 | n/a | n/a |');
  });

  test('SVG: one chart per family, n/a drawn with its reason, well-formed', () => {
    const charts = macroCharts(report());
    expect(charts.map((c) => c.name)).toEqual(['start', 'exec', 'io', 'cpu-loop', 'cpu-sha256', 'memory', 'density']);
    const svg = barChartSvg(charts.find((c) => c.name === 'start')!.spec);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('katats: not available: containerd-shim-katats-v2 is not on PATH');
    expect(svg.match(/>n\/a</g)?.length).toBe(2);
    const io = barChartSvg(charts.find((c) => c.name === 'io')!.spec);
    expect(io).toContain('runsc: failed: sandbox died');
    expect(barChartSvg({ title: 'a <b> & "c"', unit: 'ms', series: ['x'], groups: [] })).toContain('a &lt;b&gt; &amp; &quot;c&quot;');
  });

  test('nice axis scales', () => {
    expect(niceScale(83)).toEqual({ top: 100, step: 20 });
    expect(niceScale(2313)).toEqual({ top: 2500, step: 500 });
    expect(niceScale(0)).toEqual({ top: 1, step: 0.2 });
  });
});

function networkReport(): NetworkReport {
  const fig = (samples: number[]) => ({ summary: summarize(samples), samples });
  return {
    settings: NETWORK_QUICK,
    environment: { date: '2025-01-01T00:00:00.000Z', cores: 2, cpuModel: 'AMD EPYC', containerd: '1.7.24 (trixie)', loadavgStart: [3.5], loadavgEnd: [4] },
    durationS: 120,
    runtimes: [
      { name: 'runc', label: 'runc', virtualization: 'n/a (no VM)' },
      { name: 'runsc', label: 'gVisor', virtualization: 'n/a (no VM)', error: 'pod start: sandbox died' },
      { name: 'katats', label: 'katats', virtualization: 'TCG' },
    ],
    results: {
      runc: { rr: fig([1, 2, 3, 100]), down: fig([400]), up: fig([300]) },
      katats: { rr: fig([10, 20, 30]), down: fig([40]) },
    },
  };
}

describe('pod network benchmark report', () => {
  test('JSON: figures with the unit in the key and the ratio to runc; a failed runtime with its reason', () => {
    const j = networkJson(networkReport()) as any;
    expect(j.runtimes.runc.rr.median_ms).toBe(2.5);
    expect(j.runtimes.katats.rr.median_ms).toBe(20);
    expect(j.runtimes.katats.rr.ratio_to_runc).toBe(8);
    expect(j.runtimes.katats.down.median_MiBps).toBe(40);
    expect(j.runtimes.katats.down.ratio_to_runc).toBe(0.1);
    expect(j.runtimes.katats.up).toBeUndefined();
    expect(j.runtimes.runsc).toEqual({ label: 'gVisor', virtualization: 'n/a (no VM)', error: 'pod start: sandbox died' });
  });

  test('Markdown and SVG: numbers where measured, reasons where not', () => {
    const md = networkMarkdown(networkReport());
    expect(md).toContain('| katats | TCG | 20.0 | 8.00 | 40.0 | 0.10 | not measured | n/a |');
    expect(md).toContain('| runsc | n/a (no VM) | failed: pod start: sandbox died | n/a | - | n/a | - | n/a |');
    const charts = networkCharts(networkReport());
    expect(charts.map((c) => c.name)).toEqual(['network-latency', 'network-throughput']);
    // Latency's whisker ends at p95, not at the one slow connection.
    expect(charts[0]!.spec.groups[0]!.bars[0]).toMatchObject({ median: 2.5, min: 1 });
    expect(charts[0]!.spec.groups[0]!.bars[0]!.max).toBeLessThan(100);
    const svg = barChartSvg(charts[1]!.spec);
    expect(svg).toContain('runsc: failed: pod start: sandbox died');
    expect(svg).toContain('katats on TCG');
    expect(svg.match(/>n\/a</g)?.length).toBe(3);
  });
});
