// Why a decision was false. With a tracer attached, every literal of a rule or function body
// that produced no solution is reported with the values of its operands; the explainer keeps the
// failures along the deepest path of calls, which is where a denial's cause is (the outer rules
// fail only because an inner check did). Without a tracer this costs one null check per literal.
import type { Loc } from '../ast.js';
import { termText, type Value } from '../values.js';
import type { Frame } from './context.js';
import type { Det } from './docs.js';

export interface Operand {
  /** The operand's source text (`i_process.Cwd`). */
  text: string;
  det: Det;
}

export interface LitInfo {
  loc: Loc;
  /** The literal's source text. */
  text: string;
  /** The rule or function it belongs to (`data.agent_policy.allow_user`). */
  owner: string;
  operands(): Operand[];
}

export interface Tracer {
  literalFailed(info: LitInfo, f: Frame): void;
  /** A point to come back to: failures after it are dropped if the enclosing check held. */
  mark(): number;
  /** The check begun at `mark` held (a call returned a value, a `not` or `every` held): its inner failures explain nothing. */
  release(mark: number): void;
}

export interface Failure {
  /** Rule or function whose body failed. */
  rule: string;
  location: { file: string; row: number; col: number };
  /** The literal that did not hold. */
  expression: string;
  /** Its operands and the values they had (undefined: the operand was undefined). */
  operands: { text: string; value: Value | undefined }[];
  /** Evaluation nesting (rules and functions) at the failure. */
  depth: number;
}

export class Explainer implements Tracer {
  readonly failures: Failure[] = [];
  constructor(private readonly max = 1000) {}

  mark(): number {
    return this.failures.length;
  }

  release(mark: number): void {
    if (this.failures.length > mark) this.failures.length = mark;
  }

  literalFailed(info: LitInfo, f: Frame): void {
    // Evaluating operands may evaluate rules: their own failures are not this decision's.
    if (this.failures.length >= this.max || this.busy) return;
    this.busy = true;
    let operands: Failure['operands'];
    try {
      operands = this.operands(info, f);
    } finally {
      this.busy = false;
    }
    this.failures.push({
      rule: info.owner,
      location: { file: info.loc.file, row: info.loc.row, col: info.loc.col },
      expression: info.text,
      operands,
      depth: f.ctx.budget.depth,
    });
  }

  private busy = false;

  private operands(info: LitInfo, f: Frame): Failure['operands'] {
    return info.operands().map((o) => {
      let value: Value | undefined;
      try {
        value = o.det(f);
      } catch {
        value = undefined;
      }
      return { text: o.text, value };
    });
  }

  /**
   * The failures that explain a denial: checks that failed inside calls and rules that failed in
   * turn (failures inside a check that held elsewhere are gone), deepest first, latest first.
   */
  explain(limit = 5): Failure[] {
    const seen = new Set<string>();
    const out: Failure[] = [];
    const order = this.failures.map((f, i) => ({ f, i })).sort((a, b) => b.f.depth - a.f.depth || b.i - a.i);
    for (const { f } of order) {
      const key = `${f.location.file}:${f.location.row}:${f.location.col}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(f);
      if (out.length >= limit) break;
    }
    return out;
  }
}

export function describeFailure(fl: Failure): string {
  const ops = fl.operands.map((o) => `${o.text} = ${o.value === undefined ? 'undefined' : clip(termText(o.value))}`).join(', ');
  return `${fl.rule}: ${clip(fl.expression.replace(/\s+/g, ' '))} is false${ops ? ` (${ops})` : ''} at ${fl.location.file}:${fl.location.row}`;
}

function clip(s: string, max = 160): string {
  return s.length > max ? s.slice(0, max - 1) + '…' : s;
}
