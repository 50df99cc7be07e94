// Order statistics of a sample: what every macro figure reports.

export interface Summary {
  n: number;
  median: number;
  p95: number;
  min: number;
  max: number;
  mean: number;
}

/** Linear-interpolated quantile (q in 0..1) of sorted values. */
function quantile(sorted: number[], q: number): number {
  if (sorted.length === 1) return sorted[0]!;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function summarize(values: number[]): Summary {
  if (!values.length) throw new Error('summarize: no values');
  const s = [...values].sort((a, b) => a - b);
  return {
    n: s.length,
    median: quantile(s, 0.5),
    p95: quantile(s, 0.95),
    min: s[0]!,
    max: s[s.length - 1]!,
    mean: s.reduce((a, b) => a + b, 0) / s.length,
  };
}

/** The summary with the unit in every key: { n, median_ms, p95_ms, min_ms, max_ms, mean_ms }. */
export function withUnit(s: Summary, unit: string): Record<string, number> {
  return { n: s.n, [`median_${unit}`]: s.median, [`p95_${unit}`]: s.p95, [`min_${unit}`]: s.min, [`max_${unit}`]: s.max, [`mean_${unit}`]: s.mean };
}

export function round(n: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
