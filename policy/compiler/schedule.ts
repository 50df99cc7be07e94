// Safety: which literal binds which variable, and an order in which every variable is bound
// before it is read. Like OPA, literals keep their written order unless one reads a variable that
// only a later literal binds; then it moves after that literal. A variable nothing binds is an
// "unsafe" error at compile time.
import { PolicyError } from '../errors.js';
import { closureFree, termSlots, type IR, type IRBody, type IRLit } from './ir.js';

/** Slots that iteration over a ref binds: unbound variables in ref paths (not inside closures). */
export function refOutputs(t: IR, bound: Set<number>, out: Set<number> = new Set()): Set<number> {
  switch (t.k) {
    case 'ref':
      refOutputs(t.head, bound, out);
      for (const p of t.path) {
        if (p.k === 'local') {
          if (!bound.has(p.slot)) out.add(p.slot);
        } else if (p.k === 'array' || p.k === 'object') {
          for (const s of patternSlots(p)) if (!bound.has(s)) out.add(s);
          refOutputs(p, bound, out);
        } else refOutputs(p, bound, out);
      }
      break;
    case 'array':
    case 'set':
      for (const x of t.items) refOutputs(x, bound, out);
      break;
    case 'object':
      for (const [a, b] of t.items) {
        refOutputs(a, bound, out);
        refOutputs(b, bound, out);
      }
      break;
    case 'call':
      for (const a of t.args) refOutputs(a, bound, out);
      break;
  }
  return out;
}

/** Slots in positions a value can be destructured into: vars, array items, object values. */
export function patternSlots(t: IR, out: Set<number> = new Set()): Set<number> {
  if (t.k === 'local') out.add(t.slot);
  else if (t.k === 'array') for (const x of t.items) patternSlots(x, out);
  else if (t.k === 'object') for (const [, v] of t.items) patternSlots(v, out);
  return out;
}

export function isPattern(t: IR): boolean {
  return t.k === 'local' || t.k === 'array' || t.k === 'object';
}

/** Can `t` be evaluated once `bound` is bound (its own iterations bind the rest)? */
export function evaluable(t: IR, bound: Set<number>): boolean {
  const outs = refOutputs(t, bound);
  for (const s of termSlots(t, new Set())) if (!bound.has(s) && !outs.has(s)) return false;
  return true;
}

function patternUnbound(t: IR, bound: Set<number>): boolean {
  for (const s of patternSlots(t)) if (!bound.has(s)) return true;
  return false;
}

/** Slots that unifying a with b binds, given `bound`. */
export function unifyOutputs(a: IR, b: IR, bound: Set<number>): Set<number> {
  const out = new Set<number>();
  const b0 = new Set(bound);
  for (let changed = true; changed; ) {
    changed = false;
    const add = (s: Set<number>) => {
      for (const x of s)
        if (!b0.has(x) && !out.has(x)) {
          out.add(x);
          changed = true;
        }
    };
    const cur = new Set([...b0, ...out]);
    const visit = (x: IR, y: IR) => {
      if (x.k === 'array' && y.k === 'array' && x.items.length === y.items.length) {
        for (let i = 0; i < x.items.length; i++) visit(x.items[i]!, y.items[i]!);
        return;
      }
      if (x.k === 'object' && y.k === 'object') {
        for (const [kx, vx] of x.items) {
          if (kx.k !== 'const') continue;
          const m = y.items.find(([ky]) => ky.k === 'const' && ky.v === kx.v);
          if (m) visit(vx, m[1]);
        }
        return;
      }
      if (isPattern(x) && patternUnbound(x, cur) && evaluable(y, cur) && nonPatternBound(x, cur)) add(patternSlots(x));
      if (isPattern(y) && patternUnbound(y, cur) && evaluable(x, cur) && nonPatternBound(y, cur)) add(patternSlots(y));
      add(refOutputs(x, cur));
      add(refOutputs(y, cur));
    };
    visit(a, b);
  }
  return out;
}

/** A pattern's parts that are not destructured (object keys, nested terms) are evaluable. */
function nonPatternBound(t: IR, bound: Set<number>): boolean {
  if (t.k === 'local') return true;
  if (t.k === 'array') return t.items.every((x) => (isPattern(x) ? nonPatternBound(x, bound) : evaluable(x, bound)));
  if (t.k === 'object') return t.items.every(([k, v]) => evaluable(k, bound) && (isPattern(v) ? nonPatternBound(v, bound) : evaluable(v, bound)));
  return evaluable(t, bound);
}

/** The extra, output argument of a call like `count(x, n)`, if any. */
export type ArityOf = (t: IR & { k: 'call' }) => number | undefined;

/** What a literal binds, or null when it cannot run with `bound`. */
export function literalOutputs(l: IRLit, bound: Set<number>, arity: ArityOf): Set<number> | null {
  const needs = (ts: IR[], outs: Set<number>): boolean => {
    const all = new Set([...bound, ...outs]);
    for (const t of ts) for (const s of termSlots(t, new Set())) if (!all.has(s)) return false;
    return true;
  };
  const withOk = l.withs.every((w) => needs([w.value], new Set()));
  if (!withOk) return null;
  switch (l.kind) {
    case 'some':
      return new Set();
    case 'somein': {
      const outs = refOutputs(l.coll, bound);
      if (!needs([l.coll], outs)) return null;
      const decl = new Set(outs);
      patternSlots(l.value, decl);
      if (l.key) patternSlots(l.key, decl);
      // a some-in's key/value may also be ground terms (filters)
      const all = new Set([...bound, ...decl]);
      if (l.key && !evaluableIn(l.key, all)) return null;
      if (!evaluableIn(l.value, all)) return null;
      return l.negated ? new Set() : decl;
    }
    case 'every': {
      const outs = refOutputs(l.domain, bound);
      if (!needs([l.domain], outs)) return null;
      return new Set();
    }
    case 'expr': {
      const e = l.expr;
      let outs: Set<number>;
      if (e.k === 'call' && e.fn.kind === 'builtin' && e.fn.name === 'eq' && e.args.length === 2) {
        outs = unifyOutputs(e.args[0]!, e.args[1]!, bound);
      } else if (e.k === 'call' && e.fn.kind === 'builtin' && e.fn.name === 'assign' && e.args.length === 2) {
        outs = refOutputs(e.args[1]!, bound);
        if (!needs([e.args[1]!], outs)) return null;
        patternSlots(e.args[0]!, outs);
        for (const s of patternSlots(e.args[0]!)) if (bound.has(s)) return null;
        // object keys in an assignment pattern must be evaluable
        if (!nonPatternBound(e.args[0]!, new Set([...bound, ...outs]))) return null;
      } else if (e.k === 'call' && e.args.length > 0 && arity(e) === e.args.length - 1) {
        const last = e.args[e.args.length - 1]!;
        outs = new Set();
        for (const a of e.args.slice(0, -1)) refOutputs(a, bound, outs);
        if (!needs(e.args.slice(0, -1), outs)) return null;
        const after = new Set([...bound, ...outs]);
        if (isPattern(last) && patternUnbound(last, after)) patternSlots(last, outs);
        else refOutputs(last, after, outs);
      } else {
        outs = refOutputs(e, bound);
      }
      if (!needs([e], outs)) return null;
      return l.negated ? new Set() : outs;
    }
  }
}

function evaluableIn(t: IR, all: Set<number>): boolean {
  return isPattern(t) ? nonPatternBound(t, all) : evaluable(t, all);
}

/**
 * Reorders a body for safety. Returns the literals in run order; throws rego_unsafe_var_error
 * naming the first variable nothing binds.
 */
export function schedule(body: IRBody, bound0: Set<number>, arity: ArityOf, names: (slot: number) => string): IRLit[] {
  const bound = new Set(bound0);
  const placed: IRLit[] = [];
  const done = new Array<boolean>(body.lits.length).fill(false);
  for (;;) {
    const before = placed.length;
    for (let i = 0; i < body.lits.length; i++) {
      if (done[i]) continue;
      const l = body.lits[i]!;
      const outs = literalOutputs(l, bound, arity);
      if (!outs) continue;
      if (!closuresReady(l, bound)) continue;
      done[i] = true;
      placed.push(l);
      for (const s of outs) bound.add(s);
    }
    if (placed.length === body.lits.length) return placed;
    if (placed.length === before) break;
  }
  // Name the first unsafe variable of the first literal that could not be placed.
  const i = done.indexOf(false);
  const l = body.lits[i]!;
  const used = litNeeds(l);
  const own = new Set(body.slots);
  const unsafe = [...used].filter((s) => !bound.has(s)).sort((a, b) => a - b);
  const pick = unsafe.find((s) => !names(s).startsWith('$')) ?? unsafe[0];
  const name = pick === undefined ? '?' : names(pick);
  void own;
  throw new PolicyError('rego_unsafe_var_error', `var ${name.startsWith('$_') ? '_' : name} is unsafe`, { file: l.loc.file, row: l.loc.row, col: l.loc.col });
}

function litNeeds(l: IRLit): Set<number> {
  const out = new Set<number>();
  switch (l.kind) {
    case 'expr':
      termSlots(l.expr, out);
      break;
    case 'somein':
      termSlots(l.coll, out);
      break;
    case 'every':
      termSlots(l.domain, out);
      break;
    case 'some':
      break;
  }
  for (const w of l.withs) termSlots(w.value, out);
  return out;
}

/** Closures (comprehensions, every bodies) read their free variables: those must be bound. */
function closuresReady(l: IRLit, bound: Set<number>): boolean {
  if (l.kind !== 'every') return true;
  const free = new Set<number>();
  const own = new Set<number>(l.body.slots);
  const inner = new Set<number>();
  for (const x of l.body.lits) {
    if (x.kind === 'expr') termSlots(x.expr, inner);
    else if (x.kind === 'somein') {
      termSlots(x.coll, inner);
    } else if (x.kind === 'every') termSlots(x.domain, inner);
  }
  for (const s of inner) if (!own.has(s)) free.add(s);
  for (const s of free) if (!bound.has(s)) return false;
  return true;
}

export { closureFree };
