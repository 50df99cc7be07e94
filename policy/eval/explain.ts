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

  literalFailed(info: LitInfo, f: Frame): void {
    if (this.failures.length >= this.max) this.failures.shift();
    const operands = info.operands().map((o) => {
      let value: Value | undefined;
      try {
        value = o.det(f);
      } catch {
        value = undefined;
      }
      return { text: o.text, value };
    });
    this.failures.push({
      rule: info.owner,
      location: { file: info.loc.file, row: info.loc.row, col: info.loc.col },
      expression: info.text,
      operands,
      depth: f.ctx.budget.depth,
    });
  }

  /**
   * The failures that explain a denial: the deepest failure of each top-level attempt, last
   * attempt first. A check that failed deep inside a called function names the field.
   */
  explain(limit = 5): Failure[] {
    const out: Failure[] = [];
    let best: Failure | undefined;
    for (const fl of this.failures) {
      if (!best || fl.depth >= best.depth) best = fl;
      if (fl.depth <= 1 && best) {
        out.push(best);
        best = undefined;
      }
    }
    if (best) out.push(best);
    return out.reverse().slice(0, limit);
  }
}

export function describeFailure(fl: Failure): string {
  const ops = fl.operands.map((o) => `${o.text} = ${o.value === undefined ? 'undefined' : termText(o.value)}`).join(', ');
  return `${fl.rule}: ${fl.expression} is false${ops ? ` (${ops})` : ''} at ${fl.location.file}:${fl.location.row}`;
}
