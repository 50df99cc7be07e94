// The document tree: data's paths, each holding base data and/or the rules defined there, and
// how a node's value is computed (complete rules with conflicts and defaults, multi-value rules,
// objects built from ref-headed rules, packages as objects of their rules).
import type { Loc, Rule } from '../ast.js';
import { PolicyError } from '../errors.js';
import { RObject, RSet, equal, type Value } from '../values.js';
import { CACHED_UNDEFINED, conflict, type EvalCtx, type Frame } from './context.js';
import { index } from './ops.js';

export type K = (v: Value) => void;
export type Gen = (f: Frame, k: K) => void;
export type Det = (f: Frame) => Value | undefined;
export type Lit = (f: Frame, k: () => void) => void;
/** A literal or body with at most one solution: true when it holds (bindings made). */
export type Test = (f: Frame) => boolean;

/** A compiled literal or body: `test` when it cannot have more than one solution. */
export interface CL {
  test: Test | null;
  run: Lit;
}

/** Destructures a value into a pattern, binding slots: `test` when there is at most one way. */
export interface Matcher {
  test: ((f: Frame, v: Value) => boolean) | null;
  run: (f: Frame, v: Value, k: () => void) => void;
}

/** A compiled term: `det` when it yields at most one value without iterating. */
export interface CT {
  det: Det | null;
  gen: Gen;
}

export interface CompiledBody {
  run: Lit;
  /** The body as one test, when no literal in it iterates. */
  test: Test | null;
  /** Ref-head keys after the node's path (object rules). */
  keys: CT[];
  member: CT | null;
  /** null: the rule's value is true. */
  value: CT | null;
  /**
   * The rule's path, key and value are constants (literal scalars): its first solution decides,
   * so the body stops iterating there (regorus and OPA do the same; it shows in print output).
   */
  firstSolution: boolean;
  loc: Loc;
}

function runBody(b: CompiledBody, f: Frame, k: () => void, first = false): void {
  if (b.test) {
    if (b.test(f)) k();
    return;
  }
  if (!b.firstSolution && !first) return b.run(f, k);
  // the first solution decides: the body's loops see `done` and stop
  f.done = false;
  b.run(f, () => {
    if (f.done) return;
    k();
    f.done = true;
  });
  f.done = false;
}

export interface CompiledDef {
  rule: Rule;
  name: string;
  frameSize: number;
  bodies: CompiledBody[];
  /** Function parameters. */
  args: Matcher[] | null;
  loc: Loc;
}

export class DocNode {
  readonly children = new Map<string, DocNode>();
  complete: CompiledDef[] = [];
  sets: CompiledDef[] = [];
  objects: CompiledDef[] = [];
  functions: CompiledDef[] = [];
  defaultDef: CompiledDef | null = null;
  /** Rules (AST) defined here, before compilation. */
  rules: Rule[] = [];
  defaults: Rule[] = [];
  /** A complete rule whose value is a constant: computed once at compile time. */
  constValue: Value | undefined = undefined;
  /** The rule's value whatever the input and data: constValue, or a constant default and no other rule. */
  fixedValue: Value | undefined = undefined;
  /**
   * Every body of every definition gives the same constant (`true` for most Kata functions):
   * no conflict is possible, so the first body that holds decides. OPA stops there; regorus goes
   * on, which shows only in print output, so this applies when prints are not gathered.
   */
  earlyExit = false;
  arity = -1;
  /** A module's package: its value is an object even with no rule defined ({}). */
  isPackage = false;
  constructor(readonly path: string[]) {}

  get isRule(): boolean {
    return this.rules.length > 0 || this.defaults.length > 0;
  }

  get isFunction(): boolean {
    return this.arity >= 0;
  }

  child(name: string): DocNode {
    let c = this.children.get(name);
    if (!c) {
      c = new DocNode([...this.path, name]);
      this.children.set(name, c);
    }
    return c;
  }

  get name(): string {
    return ['data', ...this.path].join('.');
  }
}

export function newFrame(size: number, ctx: EvalCtx): Frame {
  return { s: new Array<Value | undefined>(size), ctx };
}

/** The value of a rule node (cached per evaluation context). */
export function evalNode(node: DocNode, ctx: EvalCtx, loc: Loc): Value | undefined {
  if (node.constValue !== undefined) return node.constValue;
  const c = ctx.cache.get(node);
  if (c !== undefined) return c === CACHED_UNDEFINED ? undefined : c;
  if (ctx.active.has(node)) {
    throw new PolicyError('rego_recursion_error', `rule ${node.name} is recursive`, { file: loc.file, row: loc.row, col: loc.col });
  }
  ctx.active.add(node);
  ctx.enter(loc);
  const mark = ctx.tracer ? ctx.tracer.mark() : 0;
  defaultsApplied.delete(node);
  let v: Value | undefined;
  try {
    v = computeNode(node, ctx);
  } finally {
    ctx.active.delete(node);
    ctx.leave();
  }
  // The decision's own rule (depth 0 again) keeps its failures when its default decided.
  if (ctx.tracer && v !== undefined && v !== false && !(ctx.budget.depth === 0 && defaultsApplied.has(node))) ctx.tracer.release(mark);
  ctx.cache.set(node, v === undefined ? CACHED_UNDEFINED : v);
  return v;
}

function computeNode(node: DocNode, ctx: EvalCtx): Value | undefined {
  if (node.isFunction) return undefined;
  if (node.complete.length > 0 || (node.defaultDef && node.sets.length === 0 && node.objects.length === 0)) return evalComplete(node, ctx);
  if (node.sets.length > 0) {
    const s = new RSet();
    for (const d of node.sets) runMulti(d, ctx, (v) => s.add(v), null);
    return s;
  }
  return subtreeObject(node, ctx);
}

function evalComplete(node: DocNode, ctx: EvalCtx): Value | undefined {
  let result: Value | undefined;
  const first = node.earlyExit && ctx.budget.prints === null;
  for (const d of node.complete) {
    const v = runDef(d, ctx, undefined, first);
    if (v === undefined) continue;
    if (first) return v;
    if (result === undefined) result = v;
    else if (!equal(result, v)) throw conflict('complete rules must not produce multiple outputs', d.loc);
  }
  if (result === undefined && node.defaultDef) {
    result = runDef(node.defaultDef, ctx);
    if (ctx.tracer) defaultsApplied.add(node);
  }
  return result;
}

/**
 * Rules whose default gave their value while a tracer was on. The decision's own rule keeps its
 * failures then: with `default r := {"allowed": false}` (Kata's shape) the failed bodies are why.
 */
const defaultsApplied = new WeakSet<DocNode>();

/** One definition of a single-value rule: its body, then each else body until one gives a value. */
export function runDef(d: CompiledDef, ctx: EvalCtx, f: Frame = newFrame(d.frameSize, ctx), first = false): Value | undefined {
  for (const b of d.bodies) {
    let out: Value | undefined;
    const value = b.value;
    if (b.test && (value === null || value.det)) {
      // the common case: one solution at most, one value
      if (!b.test(f)) continue;
      out = value === null ? true : value.det!(f);
      if (out !== undefined) return out;
      continue;
    }
    const collect = () => {
      if (value === null) {
        if (out === undefined) out = true;
        return;
      }
      value.gen(f, (v) => {
        if (out === undefined) out = v;
        else if (!equal(out, v)) throw conflict(d.args ? 'functions must not produce multiple outputs for same inputs' : 'complete rules must not produce multiple outputs', d.loc);
      });
    };
    runBody(b, f, collect, first);
    if (out !== undefined) return out;
  }
  return undefined;
}

/** A multi-value or ref-headed definition: every solution of every body contributes. */
function runMulti(d: CompiledDef, ctx: EvalCtx, addMember: ((v: Value) => void) | null, addEntry: ((keys: Value[], v: Value) => void) | null): void {
  const f = newFrame(d.frameSize, ctx);
  for (const b of d.bodies) {
    runBody(b, f, () => {
      if (addMember && b.member) {
        b.member.gen(f, addMember);
        return;
      }
      if (!addEntry) return;
      const keys: Value[] = [];
      const value = b.value;
      const step = (i: number): void => {
        if (i === b.keys.length) {
          if (value === null) addEntry(keys.slice(), true);
          else value.gen(f, (v) => addEntry(keys.slice(), v));
          return;
        }
        b.keys[i]!.gen(f, (kv) => {
          keys[i] = kv;
          step(i + 1);
        });
      };
      step(0);
    });
  }
}

/** A node that is not a single rule: base data, its children's values and its ref-headed rules. */
function subtreeObject(node: DocNode, ctx: EvalCtx): Value {
  const o = new RObject();
  const owned = new Set<RObject>([o]);
  for (const d of node.objects) {
    runMulti(d, ctx, null, (keys, v) => insert(o, keys, v, owned, d.loc));
  }
  for (const [name, child] of node.children) {
    if (child.isFunction) continue;
    const v = child.isRule ? evalNode(child, ctx, child.rules[0]?.loc ?? child.defaults[0]!.loc) : subtreeValue(child, ctx);
    if (v === undefined) continue;
    const prev = o.get(name);
    if (prev !== undefined) {
      if (prev instanceof RObject && v instanceof RObject && owned.has(prev)) {
        for (const [k, x] of v.entries()) insert(prev, [k], x, owned, node.rules[0]?.loc ?? dummyLoc);
      } else if (!equal(prev, v)) throw conflict('object keys must be unique', node.rules[0]?.loc ?? dummyLoc);
      continue;
    }
    o.set(name, v);
  }
  const base = baseAt(ctx.data, node.path);
  if (base instanceof RObject) {
    for (const [k, v] of base.entries()) if (o.get(k) === undefined) o.set(k, v);
  }
  return o;
}

const dummyLoc: Loc = { file: '', row: 0, col: 0, offset: 0, end: 0 };

function insert(o: RObject, keys: Value[], v: Value, owned: Set<RObject>, loc: Loc): void {
  let cur = o;
  for (let i = 0; i < keys.length - 1; i++) {
    const k = keys[i]!;
    let next = cur.get(k);
    if (next === undefined) {
      const n = new RObject();
      owned.add(n);
      cur.set(k, n);
      next = n;
    } else if (!(next instanceof RObject) || !owned.has(next)) {
      throw conflict('object keys must be unique', loc);
    }
    cur = next as RObject;
  }
  const last = keys[keys.length - 1]!;
  const prev = cur.get(last);
  if (prev === undefined) cur.set(last, v);
  else if (!equal(prev, v)) throw conflict('object keys must be unique', loc);
}

/** The whole document under a node: rules evaluated, base data merged. */
export function subtreeValue(node: DocNode, ctx: EvalCtx): Value | undefined {
  if (node.isRule) return evalNode(node, ctx, node.rules[0]?.loc ?? node.defaults[0]!.loc);
  if (node.children.size === 0 && !node.isPackage) return baseAt(ctx.data, node.path);
  const c = ctx.cache.get(node);
  if (c !== undefined) return c === CACHED_UNDEFINED ? undefined : c;
  const v = subtreeObject(node, ctx);
  ctx.cache.set(node, v);
  return v;
}

export function baseAt(data: Value, path: string[]): Value | undefined {
  let v: Value | undefined = data;
  for (const p of path) {
    if (!(v instanceof RObject)) return undefined;
    v = v.get(p);
  }
  return v;
}

/** Calls a user function; undefined when no definition applies. */
export function callFunction(node: DocNode, args: Value[], ctx: EvalCtx, loc: Loc): Value | undefined {
  // No try/finally: an exception ends the whole evaluation, and its context with it.
  ctx.enter(loc);
  const mark = ctx.tracer ? ctx.tracer.mark() : 0;
  const first = node.earlyExit && ctx.budget.prints === null;
  let result: Value | undefined;
  for (const d of node.functions) {
    const f = newFrame(d.frameSize, ctx);
    if (!bindArgs(d.args!, f, args)) continue;
    const v = runDef(d, ctx, f, first);
    if (v === undefined) continue;
    if (first) {
      result = v;
      break;
    }
    if (result === undefined) result = v;
    else if (!equal(result, v)) throw conflict('functions must not produce multiple outputs for same inputs', loc);
  }
  if (result === undefined && node.defaultDef) result = runDef(node.defaultDef, ctx);
  if (ctx.tracer && result !== undefined && result !== false) ctx.tracer.release(mark);
  ctx.leave();
  return result;
}

function bindArgs(ms: Matcher[], f: Frame, args: Value[]): boolean {
  for (let i = 0; i < ms.length; i++) {
    const m = ms[i]!;
    if (m.test) {
      if (!m.test(f, args[i]!)) return false;
      continue;
    }
    // a parameter pattern with several ways to match: the first one binds
    let ok = false;
    m.run(f, args[i]!, () => {
      ok = true;
    });
    if (!ok) return false;
  }
  return true;
}

/** data at a path of strings, honouring `with data...` overrides. */
export function dataAt(root: DocNode, ctx: EvalCtx, path: string[], loc: Loc): Value | undefined {
  const ovs = ctx.withData;
  if (ovs) {
    for (let i = ovs.length - 1; i >= 0; i--) {
      const ov = ovs[i]!;
      if (ov.path.length <= path.length && ov.path.every((p, j) => p === path[j])) {
        let v: Value | undefined = ov.value;
        for (let j = ov.path.length; j < path.length && v !== undefined; j++) v = index(v, path[j]!);
        return v;
      }
    }
  }
  let node = root;
  let i = 0;
  let v: Value | undefined;
  for (; i < path.length; i++) {
    if (node.isRule) break;
    const c = node.children.get(path[i]!);
    if (!c) break;
    node = c;
  }
  if (node.isRule) {
    v = node.isFunction ? undefined : evalNode(node, ctx, loc);
  } else if (i < path.length) {
    v = baseAt(ctx.data, node.path);
  } else {
    v = subtreeValue(node, ctx);
  }
  for (; i < path.length && v !== undefined; i++) v = index(v, path[i]!);
  if (ovs && v !== undefined) {
    for (const ov of ovs) {
      if (ov.path.length > path.length && path.every((p, j) => p === ov.path[j])) v = patch(v, ov.path.slice(path.length), ov.value);
    }
  }
  return v;
}

function patch(v: Value, path: string[], value: Value): Value {
  if (path.length === 0) return value;
  const o = v instanceof RObject ? v.clone() : new RObject();
  o.set(path[0]!, patch(o.get(path[0]!) ?? new RObject(), path.slice(1), value));
  return o;
}
