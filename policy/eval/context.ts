// The state of one evaluation: input, caches of rule values, `with` overrides, gathered prints,
// and the budget (steps, depth, time, sizes) that bounds what a hostile policy can make us do.
import type { Loc } from '../ast.js';
import { LimitError, PolicyError } from '../errors.js';
import type { FnRef } from '../compiler/ir.js';
import type { Value } from '../values.js';
import type { DocNode } from './docs.js';
import type { Tracer } from './explain.js';

export interface Limits {
  /** Evaluation steps (literals entered, elements iterated) per evaluation. */
  maxSteps: number;
  /** Nesting of rule, function and comprehension evaluation. */
  maxDepth: number;
  /** Longest string a builtin may produce (UTF-16 units). */
  maxStringLength: number;
  /** Most elements a builtin or comprehension may produce in one collection. */
  maxCollectionSize: number;
  /** Wall-clock limit per evaluation in ms (0: none). */
  timeoutMs: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxSteps: 5_000_000,
  maxDepth: 200,
  maxStringLength: 16 * 1024 * 1024,
  maxCollectionSize: 1_000_000,
  timeoutMs: 0,
};

/** Counters shared by a context and the `with` contexts made from it. */
export interface Budget {
  steps: number;
  depth: number;
  deadline: number;
  limits: Limits;
  prints: string[] | null;
  /** Builtin errors swallowed in non-strict mode (for explanations). */
  builtinErrors: { loc: Loc; message: string }[];
  /** Per-evaluation state of nondeterministic builtins (time.now_ns, rand, uuid). */
  memo: Map<string, Value>;
}

/** `with data.x as v`: paths replaced for the literal's evaluation. */
export interface DataOverride {
  path: string[];
  value: Value;
}

export type FnOverride = { fn: FnRef } | { value: Value };

export interface Frame {
  s: (Value | undefined)[];
  ctx: EvalCtx;
  /** The body found the solution it needed (first-solution rules): its loops stop. */
  done?: boolean;
}

const UNDEF = Symbol('undefined');
export type Cached = Value | typeof UNDEF;
export const CACHED_UNDEFINED: typeof UNDEF = UNDEF;

export class EvalCtx {
  cache = new Map<DocNode, Cached>();
  active = new Set<DocNode>();
  constructor(
    public input: Value | undefined,
    public data: Value,
    readonly budget: Budget,
    readonly strict: boolean,
    public withData: DataOverride[] | null = null,
    public withFns: Map<string, FnOverride> | null = null,
    readonly tracer: Tracer | null = null,
  ) {}

  /** A context for a literal with `with` modifiers: own caches, same budget and prints. */
  child(input: Value | undefined, withData: DataOverride[] | null, withFns: Map<string, FnOverride> | null): EvalCtx {
    return new EvalCtx(input, this.data, this.budget, this.strict, withData, withFns, this.tracer);
  }

  step(loc?: Loc): void {
    const b = this.budget;
    if (++b.steps > b.limits.maxSteps) throw new LimitError(`evaluation exceeded ${b.limits.maxSteps} steps`, loc && { file: loc.file, row: loc.row, col: loc.col });
    if ((b.steps & 4095) === 0 && b.deadline && Date.now() > b.deadline) {
      throw new LimitError(`evaluation exceeded ${b.limits.timeoutMs} ms`, loc && { file: loc.file, row: loc.row, col: loc.col });
    }
  }

  enter(loc: Loc): void {
    if (++this.budget.depth > this.budget.limits.maxDepth) {
      this.budget.depth--;
      throw new LimitError(`evaluation nested deeper than ${this.budget.limits.maxDepth}`, { file: loc.file, row: loc.row, col: loc.col });
    }
  }

  leave(): void {
    this.budget.depth--;
  }
}

export function newBudget(limits: Limits, gatherPrints: boolean): Budget {
  return {
    steps: 0,
    depth: 0,
    deadline: limits.timeoutMs > 0 ? Date.now() + limits.timeoutMs : 0,
    limits,
    prints: gatherPrints ? [] : null,
    builtinErrors: [],
    memo: new Map(),
  };
}

export function conflict(msg: string, loc: Loc): PolicyError {
  return new PolicyError('eval_conflict_error', msg, { file: loc.file, row: loc.row, col: loc.col });
}
