// The Markdown report: environment, one table per macro figure (with the ratio to runc from the
// same run), runtimes that could not run with their reasons, and the ttrpc micro-benchmark table.
import type { MacroReport } from '../macro/index.js';
import { ratioToRunc } from '../macro/index.js';
import { METRICS } from '../macro/metrics.js';

function n(v: number): string {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export function environmentMarkdown(r: MacroReport): string {
  const e = r.environment;
  const rows: [string, string][] = [
    ['date', e.date],
    ['run', `${r.quick ? 'quick (--quick)' : 'full'}, ${r.durationS} s`],
    ['CPU', `${e.cpuModel}, ${e.cores} cores, ${e.memoryGiB} GiB`],
    ['kernel', e.kernel],
    ['load average before / after', `${e.loadavgStart.join(' ')} / ${e.loadavgEnd?.join(' ') ?? '?'}`],
    ['containerd', `${e.containerd?.version ?? '?'} (${e.containerd?.flavor ?? '?'})`],
    ['runc', e.runc ?? 'not available'],
    ['runsc', e.runsc ?? 'not available'],
    ['busybox (image)', e.busybox ?? '?'],
    ['node', e.node],
    ['/dev/kvm', e.devKvm ? 'present' : 'absent'],
    ...Object.entries(e.virtualization).map(([k, v]): [string, string] => [`virtualization: ${k}`, v]),
  ];
  const table = ['| | |', '|---|---|', ...rows.map(([k, v]) => `| ${k} | ${v.replace(/\|/g, '\\|')} |`)].join('\n');
  const load = e.loadavgStart[0] ?? 0; // before the benchmark started: other work on the machine
  const busy =
    load > e.cores / 2
      ? `\n\nThe machine was busy besides this benchmark (1-minute load average ${load} on ${e.cores} cores before it started): absolute figures are noisy; ratios from the same run hold better.`
      : '';
  return table + busy;
}

export function macroMarkdown(r: MacroReport): string {
  const out: string[] = [];
  out.push('## Environment', '', environmentMarkdown(r), '');
  const missing = r.runtimes.filter((c) => c.unavailable);
  out.push('## Runtimes', '');
  for (const c of r.runtimes) out.push(`- **${c.name}**: ${c.label}${c.version ? `, ${c.version}` : ''}${c.unavailable ? ` — not available: ${c.unavailable}` : ''}`);
  out.push('');
  out.push('## Figures', '');
  out.push(
    'Each figure: median, p95, min and max over the samples (n), and the ratio of the median to runc\'s from the same run ' +
      '(for times and memory above 1 means more than runc; for throughput below 1 means slower than runc).',
    '',
  );
  for (const m of METRICS) {
    out.push(`### ${m.title} (${m.unit}, ${m.better} is better)`, '');
    out.push(`| runtime | median | p95 | min | max | n | x runc |`, '|---|---|---|---|---|---|---|');
    let note = '';
    for (const c of r.runtimes) {
      if (c.unavailable) {
        out.push(`| ${c.name} | not available: ${c.unavailable.replace(/\|/g, '\\|')} | | | | | |`);
        continue;
      }
      const res = r.results[c.name]?.[m.key];
      if (!res) {
        out.push(`| ${c.name} | not measured | | | | | |`);
        continue;
      }
      if (!res.ok) {
        out.push(`| ${c.name} | failed: ${res.error.replace(/\|/g, '\\|')} | | | | | |`);
        continue;
      }
      const s = res.summary;
      const ratio = ratioToRunc(r.results, c.name, m.key);
      out.push(`| ${c.name} | ${n(s.median)} | ${n(s.p95)} | ${n(s.min)} | ${n(s.max)} | ${s.n} | ${ratio === undefined ? '' : ratio.toFixed(2)} |`);
      if (res.note) note += `- ${c.name}: ${res.note}\n`;
    }
    out.push('');
    if (note) out.push(note);
  }
  if (missing.length === 0 && r.cleanup.killed === 0) out.push('Nothing was left behind: containerd stopped with no process to kill and no mount to remove.', '');
  else if (r.cleanup.killed || r.cleanup.unmounted) out.push(`Clean-up had to kill ${r.cleanup.killed} processes and unmount ${r.cleanup.unmounted} mounts.`, '');
  return out.join('\n');
}

/** runsc/runc (and katats/runc) per figure, one line each: what a reader wants first. */
export function ratioSummary(r: MacroReport): string {
  const others = r.runtimes.filter((c) => c.name !== 'runc');
  const out = ['| figure | unit | runc | ' + others.map((c) => `${c.name} | ${c.name}/runc`).join(' | ') + ' |'];
  out.push('|---|---|---|' + others.map(() => '---|---|').join(''));
  for (const m of METRICS) {
    const runc = r.results.runc?.[m.key];
    const cells = others.map((c) => {
      if (c.unavailable) return 'n/a | n/a';
      const res = r.results[c.name]?.[m.key];
      if (!res?.ok) return `failed | `;
      const ratio = ratioToRunc(r.results, c.name, m.key);
      return `${n(res.summary.median)} | ${ratio === undefined ? '' : ratio.toFixed(2)}`;
    });
    out.push(`| ${m.key} | ${m.unit} | ${runc?.ok ? n(runc.summary.median) : 'failed'} | ${cells.join(' | ')} |`);
  }
  return out.join('\n');
}
