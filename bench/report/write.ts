// Writes one benchmark run's reports into its directory: results.json, README.md and SVG charts.
import fs from 'node:fs';
import path from 'node:path';
import type { TtrpcFigure } from '../ttrpc.js';
import { ttrpcTable } from '../ttrpc.js';
import { macroJson, type MacroReport } from '../macro/index.js';
import { macroCharts } from './charts.js';
import { macroMarkdown, ratioSummary } from './markdown.js';
import { barChartSvg, type ChartSpec } from './svg.js';
import type { NetworkReport } from '../network.js';
import { networkCharts, networkJson, networkMarkdown } from './network.js';
import { densityJson, densityMarkdown, type DensityReport } from '../density.js';
import { criStartMarkdown, type CriStartReport } from '../cri-start.js';

export interface BenchRun {
  quick: boolean;
  macro?: MacroReport;
  macroError?: string;
  ttrpc?: TtrpcFigure[];
  ttrpcError?: string;
  network?: NetworkReport;
  networkError?: string;
  density?: DensityReport;
  densityError?: string;
  criStart?: CriStartReport;
  criStartError?: string;
}

function ttrpcChart(rows: TtrpcFigure[]): ChartSpec {
  const series = ['Go->Go', 'TS->TS', 'TS client->Go server', 'Go client->TS server'];
  return {
    title: 'ttrpc round trips per second, higher is better',
    unit: 'k calls/s',
    series,
    legendNote: 'bar: calls per second measured in this run (tinybench / the Go peer), no spread',
    groups: rows.map((x) => ({
      label: `${x.size >= 1024 ? `${x.size / 1024} KiB` : `${x.size} B`} x ${x.inFlight}`,
      bars: [x.goToGo, x.tsToTs, x.tsClientGoServer, x.goClientTsServer].map((v, i) => ({ series: series[i]!, median: v / 1000 })),
    })),
  };
}

/** Writes the files; returns their paths. */
export function writeReports(dir: string, run: BenchRun): string[] {
  fs.mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const put = (name: string, text: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    files.push(p);
  };
  const json: Record<string, unknown> = run.macro ? macroJson(run.macro) : { kind: 'katats benchmark', quick: run.quick };
  if (run.macroError) json.macro_error = run.macroError;
  json.ttrpc = run.ttrpc ?? { error: run.ttrpcError ?? 'not run' };
  json.network = run.network ? networkJson(run.network) : { error: run.networkError ?? 'not run' };
  json.density = run.density ? densityJson(run.density) : { error: run.densityError ?? 'not run' };
  json.cri_start = run.criStart ?? { error: run.criStartError ?? 'not run' };
  put('results.json', JSON.stringify(json, null, 2) + '\n');

  const md: string[] = [`# katats benchmark ${run.macro?.environment.date ?? new Date().toISOString()}${run.quick ? ' (quick)' : ''}`, ''];
  md.push('Produced by `npm run bench` (bench/index.ts). Figures are from one run on one machine: compare the ratios, not absolute times.', '');
  if (run.macro) {
    md.push('## Summary: medians and ratios to runc', '', ratioSummary(run.macro), '');
    md.push('Charts: ' + macroCharts(run.macro).map((c) => `[${c.name}](${c.name}.svg)`).join(', ') + (run.ttrpc ? ', [ttrpc](ttrpc.svg)' : ''), '');
    md.push(macroMarkdown(run.macro));
  } else md.push(`## Macro benchmark`, '', `Not run: ${run.macroError ?? 'skipped'}`, '');
  md.push('## Pod network', '');
  if (run.network) md.push(networkMarkdown(run.network), '', 'Charts: ' + networkCharts(run.network).map((c) => `[${c.name}](${c.name}.svg)`).join(', '), '');
  else md.push(`Not run: ${run.networkError ?? 'skipped'}`, '');
  md.push('## Density (VM factory)', '');
  md.push(run.density ? densityMarkdown(run.density) : `Not run: ${run.densityError ?? 'skipped'}`, '');
  md.push('## CRI pod start (VM factory)', '');
  md.push(run.criStart ? criStartMarkdown(run.criStart) : `Not run: ${run.criStartError ?? 'skipped'}`, '');
  md.push('## ttrpc micro-benchmark', '');
  md.push(run.ttrpc ? ttrpcTable(run.ttrpc) : `Not run: ${run.ttrpcError ?? 'skipped'}`, '');
  put('README.md', md.join('\n'));

  if (run.macro) for (const c of macroCharts(run.macro)) put(`${c.name}.svg`, barChartSvg(c.spec));
  if (run.ttrpc) put('ttrpc.svg', barChartSvg(ttrpcChart(run.ttrpc)));
  if (run.network) for (const c of networkCharts(run.network)) put(`${c.name}.svg`, barChartSvg(c.spec));
  return files;
}
