// How long policy decisions take inside the agent, per request type, for GetMetrics: a count, a
// sum and quantiles over the last decisions (a fixed ring per request type, so memory is bounded
// whatever the host sends). Two figures per decision: the whole check a request pays (decode,
// serialise the input, parse it, evaluate, update the state) and the engine's evaluation alone.

const RING = 1024;

class Series {
  count = 0;
  sum = 0;
  private readonly ring = new Float64Array(RING);

  add(seconds: number): void {
    this.ring[this.count % RING] = seconds;
    this.count++;
    this.sum += seconds;
  }

  quantile(q: number): number {
    const n = Math.min(this.count, RING);
    if (n === 0) return 0;
    const sorted = Array.from(this.ring.subarray(0, n)).sort((a, b) => a - b);
    return sorted[Math.min(n - 1, Math.floor(q * n))]!;
  }
}

export class DecisionTimings {
  private readonly check = new Map<string, Series>();
  private readonly evaluation = new Map<string, Series>();
  private readonly denied = new Map<string, number>();

  record(endpoint: string, checkMs: number, evalMs: number, allowed: boolean): void {
    series(this.check, endpoint).add(checkMs / 1000);
    series(this.evaluation, endpoint).add(evalMs / 1000);
    if (!allowed) this.denied.set(endpoint, (this.denied.get(endpoint) ?? 0) + 1);
  }

  /** Denials of one request type so far. */
  denials(endpoint: string): number {
    return this.denied.get(endpoint) ?? 0;
  }

  /** Prometheus text: two summaries and a denial counter, labelled by request type. */
  text(): string {
    const lines: string[] = [];
    summary(lines, 'katats_agent_policy_check_seconds', 'Policy check of an agent request: decode, input, evaluation, state update', this.check);
    summary(lines, 'katats_agent_policy_eval_seconds', 'Policy evaluation of an agent request (engine only)', this.evaluation);
    lines.push('# HELP katats_agent_policy_denials_total Agent requests the policy denied', '# TYPE katats_agent_policy_denials_total counter');
    for (const [k, n] of [...this.denied].sort()) lines.push(`katats_agent_policy_denials_total{request="${k}"} ${n}`);
    return lines.join('\n') + '\n';
  }
}

function series(m: Map<string, Series>, k: string): Series {
  let s = m.get(k);
  if (!s) {
    s = new Series();
    m.set(k, s);
  }
  return s;
}

function summary(lines: string[], name: string, help: string, m: Map<string, Series>): void {
  lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} summary`);
  for (const [k, s] of [...m].sort(([a], [b]) => (a < b ? -1 : 1))) {
    for (const q of [0.5, 0.9, 0.99]) lines.push(`${name}{request="${k}",quantile="${q}"} ${s.quantile(q)}`);
    lines.push(`${name}_sum{request="${k}"} ${s.sum}`, `${name}_count{request="${k}"} ${s.count}`);
  }
}
