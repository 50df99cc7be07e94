// A small SVG bar chart writer: groups along the x axis, one bar per series (runtime) in each group,
// the bar at the median with a whisker from min to max and a tick at p95. A series without a value
// in a group is drawn as "n/a" and its reason listed under the chart.

export interface Bar {
  series: string;
  median?: number;
  min?: number;
  max?: number;
  p95?: number;
  /** Why there is no value (runtime not available, metric failed). */
  missing?: string;
}

export interface ChartSpec {
  title: string;
  unit: string;
  /** Series in drawing order; colours follow this order. */
  series: string[];
  groups: { label: string; bars: Bar[] }[];
  /** Lines under the chart (notes, environment). */
  footer?: string[];
  /** What a bar shows, under the legend (default: median with min-max whisker and p95 tick). */
  legendNote?: string;
}

const COLOURS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948'];
const W = 760;

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** A "nice" axis maximum and step (1, 2, 2.5, 5 x 10^k) with about `ticks` steps. */
export function niceScale(max: number, ticks = 5): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step) * step, step };
}

function num(n: number): string {
  if (n === 0) return '0';
  const a = Math.abs(n);
  if (a >= 1000) return n.toFixed(0);
  if (a >= 100) return n.toFixed(0);
  if (a >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** An axis label with just the decimals the step needs (0, 2.5, 5 ... or 0, 0.2, 0.4 ...). */
function tickLabel(v: number, step: number): string {
  const decimals = (String(Number(step.toPrecision(6))).split('.')[1] ?? '').length;
  return v.toFixed(decimals);
}

/** Wraps text into lines of at most `width` characters at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let cur = '';
  for (const word of text.split(/\s+/)) {
    if (cur && cur.length + 1 + word.length > width) {
      lines.push(cur);
      cur = word;
    } else cur = cur ? `${cur} ${word}` : word;
  }
  if (cur) lines.push(cur);
  return lines;
}

export function barChartSvg(spec: ChartSpec): string {
  const missing: string[] = [];
  for (const g of spec.groups) {
    for (const b of g.bars) if (b.median === undefined && b.missing) {
      const line = `${b.series}: ${b.missing}`;
      if (!missing.includes(line)) missing.push(line);
    }
  }
  const footLines = [...missing.flatMap((m) => wrap(m, 110)), ...(spec.footer ?? []).flatMap((f) => wrap(f, 110))];
  const top = 84;
  const plotH = 260;
  const left = 70;
  const right = 20;
  const bottomAxis = top + plotH;
  const H = bottomAxis + 40 + footLines.length * 15 + 10;
  const plotW = W - left - right;
  const values = spec.groups.flatMap((g) => g.bars.flatMap((b) => [b.max ?? b.median ?? 0, b.median ?? 0]));
  const { top: yTop, step } = niceScale(Math.max(...values, 0));
  const y = (v: number) => bottomAxis - (v / yTop) * plotH;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(spec.title)}</text>`);
  // Legend.
  let lx = left;
  spec.series.forEach((s, i) => {
    out.push(`<rect x="${lx}" y="36" width="12" height="12" fill="${COLOURS[i % COLOURS.length]}"/>`);
    out.push(`<text x="${lx + 16}" y="46">${escapeXml(s)}</text>`);
    lx += 24 + s.length * 7;
  });
  out.push(`<text x="${left}" y="64" fill="#555" font-size="11">${escapeXml(spec.legendNote ?? 'bar: median; whisker: min to max; red tick: p95')}</text>`);
  // Axis and grid.
  for (let v = 0; v <= yTop + step / 2; v += step) {
    out.push(`<line x1="${left}" x2="${W - right}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" fill="#333">${tickLabel(v, step)}</text>`);
  }
  out.push(`<text transform="translate(16 ${top + plotH / 2}) rotate(-90)" text-anchor="middle" fill="#333">${escapeXml(spec.unit)}</text>`);
  out.push(`<line x1="${left}" x2="${W - right}" y1="${bottomAxis}" y2="${bottomAxis}" stroke="#333"/>`);
  // Bars.
  const groupW = plotW / Math.max(spec.groups.length, 1);
  const barW = Math.min(60, (groupW * 0.8) / Math.max(spec.series.length, 1));
  spec.groups.forEach((g, gi) => {
    const gx = left + gi * groupW + (groupW - barW * spec.series.length) / 2;
    spec.series.forEach((s, si) => {
      const b = g.bars.find((x) => x.series === s);
      const x = gx + si * barW;
      const cx = x + barW / 2;
      const colour = COLOURS[si % COLOURS.length];
      if (!b || b.median === undefined) {
        out.push(`<rect x="${(x + 2).toFixed(1)}" y="${bottomAxis - 18}" width="${(barW - 4).toFixed(1)}" height="18" fill="none" stroke="#bbb" stroke-dasharray="3 2"/>`);
        out.push(`<text x="${cx.toFixed(1)}" y="${bottomAxis - 5}" text-anchor="middle" fill="#888" font-size="10">n/a</text>`);
        return;
      }
      out.push(`<rect x="${(x + 2).toFixed(1)}" y="${y(b.median).toFixed(1)}" width="${(barW - 4).toFixed(1)}" height="${(bottomAxis - y(b.median)).toFixed(1)}" fill="${colour}"><title>${escapeXml(`${s} ${g.label}: median ${num(b.median)} ${spec.unit}`)}</title></rect>`);
      if (b.min !== undefined && b.max !== undefined) {
        out.push(`<line x1="${cx.toFixed(1)}" x2="${cx.toFixed(1)}" y1="${y(b.min).toFixed(1)}" y2="${y(b.max).toFixed(1)}" stroke="#222"/>`);
        for (const v of [b.min, b.max]) out.push(`<line x1="${(cx - 5).toFixed(1)}" x2="${(cx + 5).toFixed(1)}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" stroke="#222"/>`);
      }
      if (b.p95 !== undefined) out.push(`<line x1="${(cx - 3).toFixed(1)}" x2="${(cx + 3).toFixed(1)}" y1="${y(b.p95).toFixed(1)}" y2="${y(b.p95).toFixed(1)}" stroke="#d00" stroke-width="2"/>`);
      const labelY = Math.min(y(b.max ?? b.median), y(b.median)) - 5;
      out.push(`<text x="${cx.toFixed(1)}" y="${labelY.toFixed(1)}" text-anchor="middle" font-size="10">${num(b.median)}</text>`);
    });
    out.push(`<text x="${(left + gi * groupW + groupW / 2).toFixed(1)}" y="${bottomAxis + 18}" text-anchor="middle">${escapeXml(g.label)}</text>`);
  });
  footLines.forEach((l, i) => out.push(`<text x="${left}" y="${bottomAxis + 40 + i * 15}" fill="#555" font-size="11">${escapeXml(l)}</text>`));
  out.push('</svg>');
  return out.join('\n') + '\n';
}
