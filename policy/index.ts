// The engine's API. Compile once (modules + data), then evaluate rules or queries many times:
//   const p = Policy.compile({ modules: [{ file: 'policy.rego', text }], data }, { regoVersion: 'v0' });
//   const d = p.evaluate('data.agent_policy.CreateContainerRequest', input);   // d.value, d.prints
// Policies and inputs are untrusted: parsing, compiling and evaluating are bounded (see Limits).
import type { Body, Module, RegoVersion } from './ast.js';
import { builtinTable } from './builtins/index.js';
import type { BuiltinTable } from './builtins/types.js';
import { buildProgram, type Program } from './compiler/compile.js';
import { Resolver, Scope, type ResolveEnv } from './compiler/resolve.js';
import { PolicyError } from './errors.js';
import { DEFAULT_LIMITS, EvalCtx, newBudget, type Limits } from './eval/context.js';
import { dataAt, type CT, type DocNode, type Lit } from './eval/docs.js';
import { Explainer, type Failure } from './eval/explain.js';
import { BodyGen } from './eval/gen.js';
import { parseJSON } from './json.js';
import { parseModule, parseQuery, type ParseOptions } from './parser.js';
import { RObject, fromJS, type Value } from './values.js';

export { PolicyError } from './errors.js';
export type { PolicyErrorCode, Location } from './errors.js';
export type { Limits } from './eval/context.js';
export type { Failure } from './eval/explain.js';
export { describeFailure } from './eval/explain.js';
export { parseJSON } from './json.js';
export { RObject, RSet, canonical, toJSON, toJS, fromJS, termText, equal, compare, type Value } from './values.js';

export interface ModuleSource {
  /** The name errors and print() lines carry. */
  file: string;
  text: string;
}

export interface CompileOptions {
  /** Syntax of modules that do not import rego.v1. Default v1 (Kata's generated policies are v0). */
  regoVersion?: RegoVersion;
  /** Evaluation limits (per evaluation); each can be overridden per call. */
  limits?: Partial<Limits>;
  /** Builtin errors fail the evaluation instead of making the call undefined. Default false. */
  strictBuiltinErrors?: boolean;
  /** Deepest syntax nesting accepted. Default 128. */
  maxParseDepth?: number;
  /** Largest module accepted, in characters. Default 4 MiB. */
  maxModuleLength?: number;
}

export interface EvaluateOptions {
  /** Collect print() output (file:line: message). Default true. */
  prints?: boolean;
  /** Record why the decision came out false/undefined. */
  explain?: boolean;
  limits?: Partial<Limits>;
  strictBuiltinErrors?: boolean;
}

export interface Decision {
  /** The value, or undefined when the rule is undefined for this input. */
  value: Value | undefined;
  prints: string[];
  /** With `explain`: the failed checks that best explain a decision other than true (empty when none failed). */
  explanation?: Failure[];
  /** Builtin errors that were treated as undefined (non-strict mode). */
  builtinErrors: { location: string; message: string }[];
  /** Evaluation steps taken. */
  steps: number;
}

export interface QueryResult {
  expressions: { value: Value; text: string; location: { row: number; col: number } }[];
  bindings: Record<string, Value>;
}

interface CompiledQuery {
  run: Lit;
  frameSize: number;
  outputs: { name: string; slot: number }[];
  exprs: { ct: CT | null; text: string; row: number; col: number }[];
}

const RULE_PATH = /^data(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

export class Policy {
  private readonly queries = new Map<string, CompiledQuery>();

  private constructor(
    private readonly program: Program,
    private data: Value,
    private readonly opts: CompileOptions,
  ) {}

  /**
   * The value of rule `data.<path>` when no input or data can change it (`p := 1`, or only
   * `default p := true`), without evaluating; undefined otherwise. Callers skip building an input.
   */
  fixedValue(path: string[]): Value | undefined {
    let n: DocNode | undefined = this.program.root;
    for (const k of path) n = n?.children.get(k);
    return n?.fixedValue;
  }

  /** Parses and compiles modules, with `data` as the base document. Throws PolicyError. */
  static compile(input: { modules: (ModuleSource | Module)[]; data?: unknown }, opts: CompileOptions = {}): Policy {
    const parseOpts: ParseOptions = { regoVersion: opts.regoVersion ?? 'v1', maxDepth: opts.maxParseDepth ?? 128 };
    const maxLen = opts.maxModuleLength ?? 4 * 1024 * 1024;
    const modules = input.modules.map((m) => {
      if ('rules' in m) return m;
      if (m.text.length > maxLen) throw new PolicyError('limit_error', `${m.file}: ${m.text.length} characters exceed the module limit of ${maxLen}`);
      return parseModule(m.text, m.file, parseOpts);
    });
    const data = input.data === undefined ? new RObject() : toValue(input.data);
    if (!(data instanceof RObject)) throw new PolicyError('input_error', 'data must be an object');
    return new Policy(buildProgram(modules, builtinTable()), data, opts);
  }

  /** Replaces the base data document (the agent's policy state), keeping the compiled rules. */
  setData(data: unknown): void {
    const v = toValue(data);
    if (!(v instanceof RObject)) throw new PolicyError('input_error', 'data must be an object');
    this.data = v;
  }

  get builtins(): BuiltinTable {
    return this.program.builtins;
  }

  get modules(): Module[] {
    return this.program.modules;
  }

  /** The value of a rule or document (`data.agent_policy.CreateContainerRequest`) for an input. */
  evaluate(path: string, input?: unknown, opts: EvaluateOptions = {}): Decision {
    if (!RULE_PATH.test(path)) {
      const rs = this.query(path, input, opts);
      const v = rs.results[0]?.expressions[0]?.value;
      return { ...rs.decision, value: rs.results.length === 1 && rs.results[0]!.expressions.length === 1 ? v : undefined };
    }
    const { ctx, explainer } = this.context(input, opts);
    const parts = path.split('.').slice(1);
    const value = this.run(ctx, () => dataAt(this.program.root, ctx, parts, { file: 'query', row: 1, col: 1, offset: 0, end: path.length }));
    return this.decision(ctx, value, explainer);
  }

  /** Every solution of a query, with bindings and expression values, as `opa eval` reports them. */
  query(text: string, input?: unknown, opts: EvaluateOptions & { regoVersion?: RegoVersion } = {}): { results: QueryResult[]; decision: Decision } {
    const q = this.compileQuery(text, opts.regoVersion);
    const { ctx, explainer } = this.context(input, opts);
    const results: QueryResult[] = [];
    const f = { s: new Array<Value | undefined>(q.frameSize), ctx };
    this.run(ctx, () =>
      q.run(f, () => {
        const bindings: Record<string, Value> = {};
        for (const o of q.outputs) {
          const v = f.s[o.slot];
          if (v !== undefined) bindings[o.name] = v;
        }
        const expressions = q.exprs.map((e) => ({ value: e.ct?.det?.(f) ?? true, text: e.text, location: { row: e.row, col: e.col } }));
        results.push({ expressions, bindings });
      }),
    );
    return { results, decision: this.decision(ctx, results.length > 0 ? true : undefined, explainer) };
  }

  private context(input: unknown, opts: EvaluateOptions): { ctx: EvalCtx; explainer: Explainer | null } {
    const limits = { ...DEFAULT_LIMITS, ...this.opts.limits, ...opts.limits };
    const explainer = opts.explain ? new Explainer() : null;
    const inputValue = input === undefined ? undefined : toValue(input);
    const strict = opts.strictBuiltinErrors ?? this.opts.strictBuiltinErrors ?? false;
    const ctx = new EvalCtx(inputValue, this.data, newBudget(limits, opts.prints ?? true), strict, null, null, explainer);
    return { ctx, explainer };
  }

  private run<T>(ctx: EvalCtx, f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof RangeError && /call stack/i.test(e.message)) {
        throw new PolicyError('limit_error', `evaluation nested too deeply (at depth ${ctx.budget.depth})`);
      }
      throw e;
    }
  }

  private decision(ctx: EvalCtx, value: Value | undefined, explainer: Explainer | null): Decision {
    const d: Decision = {
      value,
      prints: ctx.budget.prints ?? [],
      builtinErrors: ctx.budget.builtinErrors.map((e) => ({ location: `${e.loc.file}:${e.loc.row}:${e.loc.col}`, message: e.message })),
      steps: ctx.budget.steps,
    };
    // A value other than true may be a denial too (Kata's {"allowed": false}): the caller judges.
    if (explainer && value !== true) d.explanation = explainer.explain();
    return d;
  }

  private compileQuery(text: string, version?: RegoVersion): CompiledQuery {
    const key = (version ?? '') + '\0' + text;
    const cached = this.queries.get(key);
    if (cached) return cached;
    const body: Body = parseQuery(text, 'query', { regoVersion: version ?? this.opts.regoVersion ?? 'v1', maxDepth: this.opts.maxParseDepth ?? 128 });
    const names: string[] = [];
    const program = this.program;
    const env: ResolveEnv = {
      module: null,
      packageRules: new Set(),
      imports: new Map(),
      isBuiltin: (name) => program.builtins.has(name) || name === 'print',
      isFunction: (path) => program.fnNode(path) !== undefined,
      newSlot: (name) => names.push(name) - 1,
    };
    const resolver = new Resolver(env);
    const r = resolver.body(body, new Scope(null));
    const gen = new BodyGen({ root: program.root, builtins: program.builtins, fnNode: program.fnNode, slotName: (s) => names[s] ?? '?', owner: 'query' });
    const run = gen.body(r.body, new Set()).run;
    const all = new Set(names.map((_, i) => i));
    const exprs = r.body.lits.map((l) => {
      let ct: CT | null = null;
      if (l.kind === 'expr' && !l.negated && !(l.expr.k === 'call' && l.expr.fn.kind === 'builtin' && ['eq', 'assign'].includes(l.expr.fn.name))) {
        try {
          ct = gen.term(l.expr, new Set(all));
        } catch {
          ct = null;
        }
      }
      return { ct, text: text.slice(l.loc.offset, l.loc.end), row: l.loc.row, col: l.loc.col };
    });
    const outputs = names.map((name, slot) => ({ name, slot })).filter((o) => !o.name.startsWith('$'));
    const q: CompiledQuery = { run, frameSize: names.length, outputs, exprs };
    if (this.queries.size > 128) this.queries.clear();
    this.queries.set(key, q);
    return q;
  }
}

function toValue(x: unknown): Value {
  if (typeof x === 'string') return x;
  return fromJS(x);
}

/** JSON text as a value (exact integers, bounded depth). */
export function valueFromJSON(text: string, what = 'json'): Value {
  return parseJSON(text, what);
}
