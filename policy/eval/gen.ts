// Turns resolved bodies (IR) into closures. Each literal is a function of (frame, continuation)
// that calls the continuation once per solution: every solution is explored, in order, as
// regorus does, so print output and conflicts come out the same. Which variables are bound at
// each point is known here, so binding versus comparing is decided once, at compile time.
import type { Loc } from '../ast.js';
import type { Builtin, BuiltinCtx } from '../builtins/types.js';
import { type FnRef, type IR, type IRBody, type IRLit, type IROf, type IRWith } from '../compiler/ir.js';
import { isPattern, patternSlots, schedule, evaluable } from '../compiler/schedule.js';
import { BuiltinError, PolicyError } from '../errors.js';
import { RObject, RSet, equal, printText, type Value } from '../values.js';
import { conflict, type DataOverride, type EvalCtx, type FnOverride, type Frame } from './context.js';
import { callFunction, dataAt, evalNode, subtreeValue, baseAt, type CL, type CT, type Det, type DocNode, type Lit, type Matcher, type Test } from './docs.js';
import type { LitInfo, Operand } from './explain.js';
import { forEach, forEachUntil, index, upsert } from './ops.js';

export interface GenEnv {
  root: DocNode;
  builtins: Map<string, Builtin>;
  /** The function node at a path (from data), or undefined. */
  fnNode(path: string[]): DocNode | undefined;
  slotName(slot: number): string;
  /** Rule or query being compiled, for explanations. */
  owner: string;
}

const TRUE_CT: CT = { det: () => true, gen: (_f, k) => k(true) };

function unsafe(name: string, loc: Loc): never {
  throw new PolicyError('rego_unsafe_var_error', `var ${name.startsWith('$_') ? '_' : name} is unsafe`, { file: loc.file, row: loc.row, col: loc.col });
}

function fromDet(det: Det): CT {
  return {
    det,
    gen: (f, k) => {
      const v = det(f);
      if (v !== undefined) k(v);
    },
  };
}

/** A literal from a test: one solution at most. */
function fromTest(test: Test): CL {
  return {
    test,
    run: (f, k) => {
      if (test(f)) k();
    },
  };
}

/** A literal that iterates: continuations only. */
function fromRun(run: Lit): CL {
  return { test: null, run };
}

/** Literals in sequence: consecutive tests run in a loop, iterating ones with continuations. */
export function seq(cls: CL[]): CL {
  if (cls.length === 0) return fromTest(() => true);
  if (cls.length === 1) return cls[0]!;
  if (cls.every((c) => c.test)) {
    const tests = cls.map((c) => c.test!);
    const n = tests.length;
    return fromTest((f) => {
      for (let i = 0; i < n; i++) if (!tests[i]!(f)) return false;
      return true;
    });
  }
  // from the right: a run of tests before the rest becomes one closure
  let rest: Lit | null = null;
  let i = cls.length - 1;
  while (i >= 0) {
    const c = cls[i]!;
    if (c.test) {
      const tests: Test[] = [];
      while (i >= 0 && cls[i]!.test) tests.unshift(cls[i--]!.test!);
      const n = tests.length;
      const next: Lit | null = rest;
      rest = next
        ? (f, k) => {
            for (let j = 0; j < n; j++) if (!tests[j]!(f)) return;
            next(f, k);
          }
        : (f, k) => {
            for (let j = 0; j < n; j++) if (!tests[j]!(f)) return;
            k();
          };
      continue;
    }
    const a = c.run;
    const b: Lit | null = rest;
    rest = b ? (f, k) => a(f, () => b(f, k)) : a;
    i--;
  }
  return fromRun(rest!);
}

export class BodyGen {
  constructor(private readonly env: GenEnv) {}

  private arity = (t: IR & { k: 'call' }): number | undefined => {
    if (t.fn.kind === 'builtin') {
      const b = this.env.builtins.get(t.fn.name);
      return b && !b.variadic ? b.arity : undefined;
    }
    const n = this.env.fnNode(t.fn.path);
    return n ? n.arity : undefined;
  };

  /** A body: reordered for safety, each literal compiled with what is bound before it. */
  body(b: IRBody, bound: Set<number>): CL {
    const order = schedule(b, bound, this.arity, this.env.slotName);
    return seq(order.map((l) => this.traced(l, this.literal(l, bound))));
  }

  private traced(l: IRLit, cl: CL): CL {
    let operands: Operand[] | null = null;
    const info: LitInfo = {
      loc: l.loc,
      text: l.text,
      owner: this.env.owner,
      // Compiled on first use: explanations are rare, compile time is not.
      operands: () => (operands ??= this.operandsOf(l)),
    };
    const loc = l.loc;
    if (cl.test) {
      const test = cl.test;
      return fromTest((f) => {
        const ctx = f.ctx;
        ctx.step(loc);
        if (test(f)) return true;
        if (ctx.tracer !== null) ctx.tracer.literalFailed(info, f);
        return false;
      });
    }
    const lit = cl.run;
    return fromRun((f, k) => {
      const ctx = f.ctx;
      ctx.step(loc);
      if (ctx.tracer === null) return lit(f, k);
      let n = 0;
      lit(f, () => {
        n++;
        k();
      });
      if (n === 0) ctx.tracer.literalFailed(info, f);
    });
  }

  /** For explanations: the sides of a failed comparison or call, evaluated after the fact. */
  private operandsOf(l: IRLit): Operand[] {
    const terms: IR[] = [];
    if (l.kind === 'expr') {
      if (l.expr.k === 'call') terms.push(...l.expr.args);
      else terms.push(l.expr);
    } else if (l.kind === 'somein') terms.push(l.coll);
    else if (l.kind === 'every') terms.push(l.domain);
    const out: Operand[] = [];
    for (const a of terms) {
      if (a.k === 'const') continue;
      const det = this.tryDet(a);
      if (det) out.push({ text: sliceText(l, a.loc), det });
    }
    return out;
  }

  private tryDet(t: IR): Det | null {
    // Only non-iterating terms are re-evaluated for an explanation.
    const all = new Set<number>();
    collectSlots(t, all);
    try {
      return this.term(t, all).det;
    } catch {
      return null;
    }
  }

  literal(l: IRLit, bound: Set<number>): CL {
    if (l.withs.length > 0) return this.withLit(l, bound);
    switch (l.kind) {
      case 'some':
        return fromTest(() => true);
      case 'expr':
        return l.negated ? this.negate((b) => this.exprLit(l.expr, b), bound) : this.exprLit(l.expr, bound);
      case 'somein':
        return l.negated ? this.negate((b) => this.someIn(l, b), bound) : this.someIn(l, bound);
      case 'every':
        return l.negated ? this.negate((b) => this.every(l, b), bound) : this.every(l, bound);
    }
  }

  private negate(make: (b: Set<number>) => CL, bound: Set<number>): CL {
    const pos = make(new Set(bound));
    if (pos.test) {
      const t = pos.test;
      return fromTest((f) => {
        const tracer = f.ctx.tracer;
        if (tracer === null) return !t(f);
        const mark = tracer.mark();
        if (t(f)) return false;
        tracer.release(mark);
        return true;
      });
    }
    const run = pos.run;
    return fromTest((f) => {
      let found = false;
      const tracer = f.ctx.tracer;
      const mark = tracer ? tracer.mark() : 0;
      run(f, () => {
        found = true;
      });
      if (found) return false;
      tracer?.release(mark);
      return true;
    });
  }

  private withLit(l: IRLit, bound: Set<number>): CL {
    const inner = this.literal({ ...l, withs: [] } as IRLit, bound);
    const mods = l.withs.map((w) => this.withMod(w, bound));
    const enter = (f: Frame): Frame | null => {
      const ctx = f.ctx;
      let input = ctx.input;
      let data: DataOverride[] | null = ctx.withData ? [...ctx.withData] : null;
      let fns: Map<string, FnOverride> | null = ctx.withFns ? new Map(ctx.withFns) : null;
      for (const m of mods) {
        if (m.fnKey !== null) {
          fns ??= new Map();
          if (m.fn) fns.set(m.fnKey, { fn: m.fn });
          else {
            const v = m.value!(f);
            if (v === undefined) return null;
            fns.set(m.fnKey, { value: v });
          }
          continue;
        }
        const v = m.value!(f);
        if (v === undefined) return null;
        if (m.kind === 'input') input = upsert(m.path.length === 0 ? undefined : input, m.path, v);
        else (data ??= []).push({ path: m.path, value: v });
      }
      return { s: f.s, ctx: ctx.child(input, data, fns) };
    };
    if (inner.test) {
      const t = inner.test;
      return fromTest((f) => {
        const g = enter(f);
        return g !== null && t(g);
      });
    }
    const run = inner.run;
    return fromRun((f, k) => {
      const g = enter(f);
      if (g !== null) run(g, k);
    });
  }

  private withMod(w: IRWith, bound: Set<number>): { kind: 'input' | 'data' | 'fn'; path: string[]; fnKey: string | null; fn?: FnRef; value?: Det } {
    const t = w.target;
    if (t.kind === 'fn') {
      const key = fnKey(t.fn);
      if (w.valueFn) {
        if (w.valueFn.kind === 'user' && t.fn.kind === 'user') {
          const a = this.env.fnNode(t.fn.path);
          const b = this.env.fnNode(w.valueFn.path);
          if (a && b && a.arity !== b.arity) throw new PolicyError('rego_type_error', `arity mismatch in with: ${a.name} has ${a.arity} arguments, ${b.name} has ${b.arity}`, locOf(w.loc));
        }
        return { kind: 'fn', path: [], fnKey: key, fn: w.valueFn };
      }
      return { kind: 'fn', path: [], fnKey: key, value: this.detOf(w.value, bound) };
    }
    if (t.kind === 'data' && t.path.length === 0) throw new PolicyError('rego_compile_error', 'with keyword cannot replace all of data', locOf(w.loc));
    return { kind: t.kind, path: t.path, fnKey: null, value: this.detOf(w.value, bound) };
  }

  /** A term evaluated to one value (the first, if it iterates). */
  private detOf(t: IR, bound: Set<number>): Det {
    const ct = this.term(t, new Set(bound));
    if (ct.det) return ct.det;
    const g = ct.gen;
    return (f) => {
      let out: Value | undefined;
      g(f, (v) => {
        if (out === undefined) out = v;
      });
      return out;
    };
  }

  // ---- expression literals

  private exprLit(e: IR, bound: Set<number>): CL {
    if (e.k === 'call' && e.fn.kind === 'builtin') {
      if (e.fn.name === 'eq') return this.unify(e.args[0]!, e.args[1]!, bound, e.loc);
      if (e.fn.name === 'assign') return this.bindFrom(e.args[0]!, e.args[1]!, bound);
    }
    if (e.k === 'call' && e.args.length > 0 && this.arity(e) === e.args.length - 1) {
      // f(x, out): the last argument receives the result
      return this.bindFromCT(e.args[e.args.length - 1]!, this.call({ ...e, args: e.args.slice(0, -1) }, bound), bound);
    }
    const ct = this.term(e, bound);
    if (ct.det) {
      const d = ct.det;
      return fromTest((f) => {
        const v = d(f);
        return v !== undefined && v !== false;
      });
    }
    const g = ct.gen;
    return fromRun((f, k) =>
      g(f, (v) => {
        if (v !== false) k();
      }),
    );
  }

  /** `a = b`: binds whichever side has unbound variables, or compares. */
  private unify(a: IR, b: IR, bound: Set<number>, loc: Loc): CL {
    const aOpen = isPattern(a) && hasUnbound(a, bound);
    const bOpen = isPattern(b) && hasUnbound(b, bound);
    if (!aOpen && !bOpen) {
      const ca = this.term(a, bound);
      const cb = this.term(b, bound);
      if (ca.det && cb.det) {
        const da = ca.det;
        const db = cb.det;
        return fromTest((f) => {
          const x = da(f);
          if (x === undefined) return false;
          const y = db(f);
          return y !== undefined && equal(x, y);
        });
      }
      return fromRun((f, k) => ca.gen(f, (x) => cb.gen(f, (y) => (equal(x, y) ? k() : undefined))));
    }
    if (aOpen && !bOpen && evaluable(b, bound)) return this.bindFrom(a, b, bound);
    if (bOpen && !aOpen && evaluable(a, bound)) return this.bindFrom(b, a, bound);
    if (a.k === 'array' && b.k === 'array') {
      if (a.items.length !== b.items.length) return fromTest(() => false);
      return this.pairwise(a.items.map((x, i) => [x, b.items[i]!] as [IR, IR]), bound, loc);
    }
    if (a.k === 'object' && b.k === 'object') {
      const pairs: [IR, IR][] = [];
      if (a.items.length !== b.items.length) return fromTest(() => false);
      for (const [ka, va] of a.items) {
        const m = b.items.find(([kb]) => ka.k === 'const' && kb.k === 'const' && equal(ka.v, kb.v));
        if (!m) return fromTest(() => false);
        pairs.push([va, m[1]]);
      }
      return this.pairwise(pairs, bound, loc);
    }
    if (aOpen && evaluable(b, bound)) return this.bindFrom(a, b, bound);
    if (bOpen && evaluable(a, bound)) return this.bindFrom(b, a, bound);
    const open = [...patternSlots(a), ...patternSlots(b)].find((s) => !bound.has(s));
    return unsafe(open === undefined ? '?' : this.env.slotName(open), loc);
  }

  private bindFrom(pattern: IR, source: IR, bound: Set<number>): CL {
    return this.bindFromCT(pattern, this.term(source, bound), bound);
  }

  private bindFromCT(pattern: IR, src: CT, bound: Set<number>): CL {
    const m = this.match(pattern, bound);
    if (src.det && m.test) {
      const d = src.det;
      const t = m.test;
      return fromTest((f) => {
        const v = d(f);
        return v !== undefined && t(f, v);
      });
    }
    const run = m.run;
    if (src.det) {
      const d = src.det;
      return fromRun((f, k) => {
        const v = d(f);
        if (v !== undefined) run(f, v, k);
      });
    }
    return fromRun((f, k) => src.gen(f, (v) => run(f, v, k)));
  }

  private pairwise(pairs: [IR, IR][], bound: Set<number>, loc: Loc): CL {
    const cls: CL[] = [];
    const todo = [...pairs];
    while (todo.length > 0) {
      const i = todo.findIndex(([x, y]) => {
        const xo = isPattern(x) && hasUnbound(x, bound);
        const yo = isPattern(y) && hasUnbound(y, bound);
        return !(xo && yo) || (x.k === 'array' && y.k === 'array') || (x.k === 'object' && y.k === 'object');
      });
      if (i < 0) return this.unify(todo[0]![0], todo[0]![1], bound, loc);
      const [x, y] = todo.splice(i, 1)[0]!;
      cls.push(this.unify(x, y, bound, loc));
    }
    return seq(cls);
  }

  /** Destructuring: binds unbound variables of `p` from a value, compares the rest. */
  match(p: IR, bound: Set<number>): Matcher {
    const fromMatchTest = (test: (f: Frame, v: Value) => boolean): Matcher => ({
      test,
      run: (f, v, k) => {
        if (test(f, v)) k();
      },
    });
    if (p.k === 'local') {
      const slot = p.slot;
      if (bound.has(slot)) {
        return fromMatchTest((f, v) => {
          const x = f.s[slot];
          return x !== undefined && equal(x, v);
        });
      }
      bound.add(slot);
      return fromMatchTest((f, v) => {
        f.s[slot] = v;
        return true;
      });
    }
    if (p.k === 'array' && hasUnbound(p, bound)) {
      const ms = p.items.map((x) => this.match(x, bound));
      const n = ms.length;
      if (ms.every((m) => m.test)) {
        const ts = ms.map((m) => m.test!);
        return fromMatchTest((f, v) => {
          if (!Array.isArray(v) || v.length !== n) return false;
          for (let i = 0; i < n; i++) if (!ts[i]!(f, v[i]!)) return false;
          return true;
        });
      }
      return {
        test: null,
        run: (f, v, k) => {
          if (!Array.isArray(v) || v.length !== n) return;
          const step = (i: number): void => {
            if (i === n) return k();
            ms[i]!.run(f, v[i]!, () => step(i + 1));
          };
          step(0);
        },
      };
    }
    if (p.k === 'object' && hasUnbound(p, bound)) {
      const keys = p.items.map(([key]) => this.detOf(key, bound));
      const ms = p.items.map(([, val]) => this.match(val, bound));
      const n = ms.length;
      if (ms.every((m) => m.test)) {
        const ts = ms.map((m) => m.test!);
        return fromMatchTest((f, v) => {
          if (!(v instanceof RObject) || v.size !== n) return false;
          for (let i = 0; i < n; i++) {
            const key = keys[i]!(f);
            if (key === undefined) return false;
            const x = v.get(key);
            if (x === undefined || !ts[i]!(f, x)) return false;
          }
          return true;
        });
      }
      return {
        test: null,
        run: (f, v, k) => {
          if (!(v instanceof RObject) || v.size !== n) return;
          const step = (i: number): void => {
            if (i === n) return k();
            const key = keys[i]!(f);
            if (key === undefined) return;
            const x = v.get(key);
            if (x === undefined) return;
            ms[i]!.run(f, x, () => step(i + 1));
          };
          step(0);
        },
      };
    }
    const ct = this.term(p, bound);
    if (ct.det) {
      const d = ct.det;
      return fromMatchTest((f, v) => {
        const x = d(f);
        return x !== undefined && equal(x, v);
      });
    }
    return { test: null, run: (f, v, k) => ct.gen(f, (x) => (equal(x, v) ? k() : undefined)) };
  }

  // ---- some ... in, every

  private someIn(lit: Extract<IRLit, { kind: 'somein' }>, bound: Set<number>): CL {
    const coll = this.term(lit.coll, bound);
    const km = lit.key ? this.match(lit.key, bound) : null;
    const vm = this.match(lit.value, bound);
    const each = (f: Frame, c: Value, k: () => void) => {
      const ctx = f.ctx;
      if (km) {
        forEachUntil(c, f, (key, val) => {
          ctx.step();
          km.run(f, key, () => vm.run(f, val, k));
        });
      } else if (vm.test) {
        const t = vm.test;
        forEachUntil(c, f, (_key, val) => {
          ctx.step();
          if (t(f, val)) k();
        });
      } else {
        forEachUntil(c, f, (_key, val) => {
          ctx.step();
          vm.run(f, val, k);
        });
      }
    };
    if (coll.det) {
      const d = coll.det;
      return fromRun((f, k) => {
        const c = d(f);
        if (c !== undefined) each(f, c, k);
      });
    }
    return fromRun((f, k) => coll.gen(f, (c) => each(f, c, k)));
  }

  private every(l: Extract<IRLit, { kind: 'every' }>, bound: Set<number>): CL {
    const dom = this.term(l.domain, bound);
    const inner = new Set(bound);
    const km = l.key ? this.match(l.key, inner) : null;
    const vm = this.match(l.value, inner);
    const body = this.body(l.body, inner);
    const loc = l.loc;
    const bodyTest = body.test;
    const bodyRun = body.run;
    return fromTest((f) => {
      let d: Value | undefined;
      dom.gen(f, (v) => {
        if (d === undefined) d = v;
      });
      if (d === undefined || typeof d !== 'object' || d === null) return false;
      let ok = true;
      const ctx = f.ctx;
      const mark = ctx.tracer ? ctx.tracer.mark() : 0;
      const holds = (): boolean => {
        if (bodyTest) return bodyTest(f);
        let matched = false;
        bodyRun(f, () => {
          matched = true;
        });
        return matched;
      };
      const check = (key: Value, val: Value) => {
        if (!ok) return;
        ctx.step();
        let matched = false;
        if (km) km.run(f, key, () => vm.run(f, val, () => (matched ||= holds())));
        else vm.run(f, val, () => (matched ||= holds()));
        if (!matched) ok = false;
      };
      // the body is one level deeper: an explanation prefers its failure to every's own
      ctx.enter(loc);
      try {
        forEach(d, check);
      } finally {
        ctx.leave();
      }
      if (ok) ctx.tracer?.release(mark);
      return ok;
    });
  }

  // ---- terms

  term(t: IR, bound: Set<number>): CT {
    switch (t.k) {
      case 'const': {
        const v = t.v;
        return { det: () => v, gen: (_f, k) => k(v) };
      }
      case 'local': {
        const slot = t.slot;
        if (!bound.has(slot)) unsafe(t.name, t.loc);
        return fromDet((f) => f.s[slot]);
      }
      case 'input':
        return fromDet((f) => f.ctx.input);
      case 'data': {
        const root = this.env.root;
        const loc = t.loc;
        return fromDet((f) => (f.ctx.withData ? dataAt(root, f.ctx, [], loc) : subtreeValue(root, f.ctx)));
      }
      case 'ref':
        return this.ref(t, bound);
      case 'array':
        return this.composite(t.items, bound, (vs) => vs);
      case 'set':
        return this.composite(t.items, bound, (vs) => RSet.of(vs));
      case 'object': {
        const flat: IR[] = [];
        for (const [a, b] of t.items) flat.push(a, b);
        const loc = t.loc;
        return this.composite(flat, bound, (vs) => {
          const o = new RObject();
          for (let i = 0; i < vs.length; i += 2) {
            const prev = o.get(vs[i]!);
            if (prev !== undefined && !equal(prev, vs[i + 1]!)) throw conflict('object keys must be unique', loc);
            o.set(vs[i]!, vs[i + 1]!);
          }
          return o;
        });
      }
      case 'compr':
        return this.compr(t, bound);
      case 'call':
        return this.call(t, bound);
    }
  }

  private composite(items: IR[], bound: Set<number>, build: (vs: Value[]) => Value): CT {
    const cts = items.map((x) => this.term(x, bound));
    if (cts.every((c) => c.det)) {
      const ds = cts.map((c) => c.det!);
      const n = ds.length;
      return fromDet((f) => {
        const vs = new Array<Value>(n);
        for (let i = 0; i < n; i++) {
          const v = ds[i]!(f);
          if (v === undefined) return undefined;
          vs[i] = v;
        }
        return build(vs);
      });
    }
    const n = cts.length;
    return {
      det: null,
      gen: (f, k) => {
        const vs = new Array<Value>(n);
        const step = (i: number): void => {
          if (i === n) return k(build(vs.slice()));
          cts[i]!.gen(f, (v) => {
            vs[i] = v;
            step(i + 1);
          });
        };
        step(0);
      },
    };
  }

  private compr(t: IROf<'compr'>, bound: Set<number>): CT {
    const inner = new Set(bound);
    const run = this.body(t.body, inner).run;
    // a comprehension's failed members are filters, not reasons
    const body: Lit = (f, k) => {
      const tracer = f.ctx.tracer;
      if (tracer === null) return run(f, k);
      const mark = tracer.mark();
      run(f, k);
      tracer.release(mark);
    };
    const term = this.term(t.term, inner);
    const key = t.key ? this.term(t.key, inner) : null;
    const loc = t.loc;
    switch (t.kind) {
      case 'array':
        return fromDet((f) => {
          const out: Value[] = [];
          const max = f.ctx.budget.limits.maxCollectionSize;
          body(f, () =>
            term.gen(f, (v) => {
              if (out.length >= max) throw limit(`comprehension of more than ${max} elements`, loc);
              out.push(v);
            }),
          );
          return out;
        });
      case 'set':
        return fromDet((f) => {
          const out = new RSet();
          const max = f.ctx.budget.limits.maxCollectionSize;
          body(f, () =>
            term.gen(f, (v) => {
              out.add(v);
              if (out.size > max) throw limit(`comprehension of more than ${max} elements`, loc);
            }),
          );
          return out;
        });
      case 'object':
        return fromDet((f) => {
          const out = new RObject();
          const max = f.ctx.budget.limits.maxCollectionSize;
          body(f, () =>
            key!.gen(f, (kv) =>
              term.gen(f, (v) => {
                const prev = out.get(kv);
                if (prev !== undefined) {
                  if (!equal(prev, v)) throw conflict('object keys must be unique', loc);
                  return;
                }
                out.set(kv, v);
                if (out.size > max) throw limit(`comprehension of more than ${max} elements`, loc);
              }),
            ),
          );
          return out;
        });
    }
  }

  // ---- refs

  private ref(t: IROf<'ref'>, bound: Set<number>): CT {
    let head: CT;
    let path = t.path;
    if (t.head.k === 'data') {
      const r = this.dataHead(t);
      head = r.head;
      path = t.path.slice(r.consumed);
    } else {
      head = this.term(t.head, bound);
    }
    // The fast case: every key known without iteration.
    const keyCTs: (CT | null)[] = [];
    const constKeys = path.every((p) => p.k === 'const') ? path.map((p) => (p as IROf<'const'>).v) : null;
    let iterating = false;
    const steps: ((f: Frame, v: Value, k: (v: Value) => void) => void)[] = [];
    for (const p of path) {
      if (p.k === 'local' && !bound.has(p.slot)) {
        iterating = true;
        const slot = p.slot;
        bound.add(slot);
        keyCTs.push(null);
        steps.push((f, v, k) => {
          const ctx = f.ctx;
          forEachUntil(v, f, (key, val) => {
            ctx.step();
            f.s[slot] = key;
            k(val);
          });
        });
        continue;
      }
      if ((p.k === 'array' || p.k === 'object') && hasUnbound(p, bound)) {
        iterating = true;
        const m = this.match(p, bound);
        keyCTs.push(null);
        steps.push((f, v, k) => {
          const ctx = f.ctx;
          forEachUntil(v, f, (key, val) => {
            ctx.step();
            m.run(f, key, () => k(val));
          });
        });
        continue;
      }
      const kc = this.term(p, bound);
      keyCTs.push(kc);
      if (!kc.det) iterating = true;
      steps.push((f, v, k) =>
        kc.gen(f, (key) => {
          const x = index(v, key);
          if (x !== undefined) k(x);
        }),
      );
    }
    if (!iterating && head.det) {
      const hd = head.det;
      if (constKeys) {
        const keys = constKeys;
        if (keys.length === 0) return head;
        if (keys.length === 1) {
          const k0 = keys[0]!;
          if (typeof k0 === 'string') {
            return fromDet((f) => {
              const v = hd(f);
              return v instanceof RObject ? v.m.get(k0) : index(v, k0);
            });
          }
          return fromDet((f) => index(hd(f), k0));
        }
        return fromDet((f) => {
          let v = hd(f);
          for (let i = 0; i < keys.length && v !== undefined; i++) {
            const key = keys[i]!;
            v = v instanceof RObject && typeof key === 'string' ? v.m.get(key) : index(v, key);
          }
          return v;
        });
      }
      const ds = keyCTs.map((c) => c!.det!);
      return fromDet((f) => {
        let v = hd(f);
        for (let i = 0; i < ds.length && v !== undefined; i++) {
          const key = ds[i]!(f);
          if (key === undefined) return undefined;
          v = index(v, key);
        }
        return v;
      });
    }
    const n = steps.length;
    return {
      det: null,
      gen: (f, k) => {
        const walk = (i: number, v: Value): void => {
          if (i === n) return k(v);
          steps[i]!(f, v, (x) => walk(i + 1, x));
        };
        head.gen(f, (v) => walk(0, v));
      },
    };
  }

  /** Resolves the constant prefix of a data ref through the document tree at compile time. */
  private dataHead(t: IROf<'ref'>): { head: CT; consumed: number } {
    let node = this.env.root;
    let i = 0;
    const path = t.path;
    const loc = t.loc;
    for (; i < path.length; i++) {
      if (node.isRule) break;
      const p = path[i]!;
      if (p.k !== 'const' || typeof p.v !== 'string') break;
      const c = node.children.get(p.v);
      if (!c) {
        // Off the rule tree: base data (plus `with` overrides).
        const strs: string[] = [...node.path];
        let j = i;
        for (; j < path.length; j++) {
          const q = path[j]!;
          if (q.k !== 'const' || typeof q.v !== 'string') break;
          strs.push(q.v);
        }
        const root = this.env.root;
        return {
          head: fromDet((f) => (f.ctx.withData ? dataAt(root, f.ctx, strs, loc) : baseAt(f.ctx.data, strs))),
          consumed: j,
        };
      }
      node = c;
    }
    const root = this.env.root;
    const full = node.path;
    if (node.isRule) {
      if (node.isFunction) throw new PolicyError('rego_type_error', `function ${node.name} called without arguments`, locOf(loc));
      const target = node;
      return { head: fromDet((f) => (f.ctx.withData ? dataAt(root, f.ctx, full, loc) : evalNode(target, f.ctx, loc))), consumed: i };
    }
    const target = node;
    return { head: fromDet((f) => (f.ctx.withData ? dataAt(root, f.ctx, full, loc) : subtreeValue(target, f.ctx))), consumed: i };
  }

  // ---- calls

  call(t: IROf<'call'>, bound: Set<number>): CT {
    const loc = t.loc;
    if (t.fn.kind === 'builtin') {
      const name = t.fn.name;
      if (name === 'eq' || name === 'assign') {
        throw new PolicyError('rego_compile_error', `${t.op ?? name} cannot be used inside an expression`, locOf(loc));
      }
      if (name === 'print') return this.print(t, bound);
      const b = this.env.builtins.get(name);
      if (!b) throw new PolicyError('rego_type_error', `undefined function ${name}`, locOf(loc));
      if (!b.variadic && t.args.length !== b.arity) {
        throw new PolicyError('rego_type_error', `${name}: arity mismatch: ${t.args.length} arguments given, ${b.arity} expected`, locOf(loc));
      }
    } else {
      const node = this.env.fnNode(t.fn.path);
      if (!node) throw new PolicyError('rego_type_error', `undefined function data.${t.fn.path.join('.')}`, locOf(loc));
      if (t.args.length !== node.arity) {
        throw new PolicyError('rego_type_error', `data.${t.fn.path.join('.')}: arity mismatch: ${t.args.length} arguments given, ${node.arity} expected`, locOf(loc));
      }
    }
    const args = t.args.map((a) => this.term(a, bound));
    const invoke = this.invoker(t.fn, loc);
    const n = args.length;
    const relation = t.fn.kind === 'builtin' ? this.env.builtins.get(t.fn.name)!.relation : undefined;
    if (!relation && args.every((a) => a.det)) {
      const ds = args.map((a) => a.det!);
      if (n === 1) {
        const d0 = ds[0]!;
        return fromDet((f) => {
          const a = d0(f);
          return a === undefined ? undefined : invoke(f.ctx, [a]);
        });
      }
      if (n === 2) {
        const d0 = ds[0]!;
        const d1 = ds[1]!;
        return fromDet((f) => {
          const a = d0(f);
          if (a === undefined) return undefined;
          const b = d1(f);
          return b === undefined ? undefined : invoke(f.ctx, [a, b]);
        });
      }
      return fromDet((f) => {
        const vs = new Array<Value>(n);
        for (let i = 0; i < n; i++) {
          const v = ds[i]!(f);
          if (v === undefined) return undefined;
          vs[i] = v;
        }
        return invoke(f.ctx, vs);
      });
    }
    const fnName = t.fn.kind === 'builtin' ? t.fn.name : '';
    return {
      det: null,
      gen: (f, k) => {
        const vs = new Array<Value>(n);
        const step = (i: number): void => {
          if (i === n) {
            if (relation && !f.ctx.withFns) {
              runRelation(relation, fnName, vs.slice(), f.ctx, loc, k);
              return;
            }
            const r = invoke(f.ctx, vs.slice());
            if (r !== undefined) k(r);
            return;
          }
          args[i]!.gen(f, (v) => {
            vs[i] = v;
            step(i + 1);
          });
        };
        step(0);
      },
    };
  }

  /** The function behind a call, honouring `with` replacements at run time. */
  private invoker(fn: FnRef, loc: Loc): (ctx: EvalCtx, args: Value[]) => Value | undefined {
    const key = fnKey(fn);
    const direct = this.directInvoker(fn, loc);
    return (ctx, args) => {
      if (ctx.withFns !== null) {
        const ov = ctx.withFns.get(key);
        if (ov) {
          if ('value' in ov) return ov.value;
          const other = this.directInvoker(ov.fn, loc);
          // a replacement runs without the replacements of its own name (no self-recursion)
          const fns = new Map(ctx.withFns);
          fns.delete(key);
          return other(ctx.child(ctx.input, ctx.withData, fns), args);
        }
      }
      return direct(ctx, args);
    };
  }

  private directInvoker(fn: FnRef, loc: Loc): (ctx: EvalCtx, args: Value[]) => Value | undefined {
    if (fn.kind === 'user') {
      const node = this.env.fnNode(fn.path);
      if (!node) throw new PolicyError('rego_type_error', `undefined function data.${fn.path.join('.')}`, locOf(loc));
      return (ctx, args) => callFunction(node, args, ctx, loc);
    }
    const b = this.env.builtins.get(fn.name);
    if (!b) throw new PolicyError('rego_type_error', `undefined function ${fn.name}`, locOf(loc));
    const impl = b.fn;
    const name = fn.name;
    return (ctx, args) => {
      try {
        return impl(args, builtinCtx(ctx));
      } catch (e) {
        return builtinFailure(e, name, ctx, loc);
      }
    };
  }

  private print(t: IROf<'call'>, bound: Set<number>): CT {
    const args = t.args.map((a) => this.term(a, new Set(bound)));
    const prefix = `${t.loc.file}:${t.loc.row}: `;
    return fromDet((f) => {
      const prints = f.ctx.budget.prints;
      if (prints === null) return true;
      const parts: string[] = [];
      for (const a of args) {
        if (a.det) parts.push(printText(a.det(f)));
        else {
          const s = new RSet();
          a.gen(f, (v) => s.add(v));
          parts.push(s.size === 0 ? '<undefined>' : s.size === 1 ? printText(s.values()[0]!) : printText(s));
        }
      }
      prints.push(prefix + parts.join(' '));
      return true;
    });
  }
}

function runRelation(rel: NonNullable<Builtin['relation']>, name: string, args: Value[], ctx: EvalCtx, loc: Loc, k: (v: Value) => void): void {
  try {
    rel(args, builtinCtx(ctx), k);
  } catch (e) {
    if (e instanceof BuiltinError) builtinFailure(e, name, ctx, loc);
    else throw e;
  }
}

function builtinCtx(ctx: EvalCtx): BuiltinCtx {
  return ctx.budget;
}

function builtinFailure(e: unknown, name: string, ctx: EvalCtx, loc: Loc): undefined {
  if (e instanceof BuiltinError) {
    if (ctx.strict) throw new PolicyError(e.code, e.message.startsWith(name) ? e.message : `${name}: ${e.message}`, locOf(loc));
    if (ctx.budget.builtinErrors.length < 100) ctx.budget.builtinErrors.push({ loc, message: e.message });
    return undefined;
  }
  if (e instanceof RangeError && /call stack/i.test(e.message)) {
    throw new PolicyError('limit_error', `${name}: nesting too deep`, locOf(loc));
  }
  throw e;
}

function limit(msg: string, loc: Loc): PolicyError {
  return new PolicyError('limit_error', msg, locOf(loc));
}

export function locOf(loc: Loc): { file: string; row: number; col: number } {
  return { file: loc.file, row: loc.row, col: loc.col };
}

export function fnKey(fn: FnRef): string {
  return fn.kind === 'builtin' ? fn.name : 'data.' + fn.path.join('.');
}

function hasUnbound(t: IR, bound: Set<number>): boolean {
  for (const s of patternSlots(t)) if (!bound.has(s)) return true;
  return false;
}

function collectSlots(t: IR, out: Set<number>): void {
  switch (t.k) {
    case 'local':
      out.add(t.slot);
      break;
    case 'ref':
      collectSlots(t.head, out);
      t.path.forEach((p) => collectSlots(p, out));
      break;
    case 'array':
    case 'set':
      t.items.forEach((x) => collectSlots(x, out));
      break;
    case 'object':
      t.items.forEach(([a, b]) => {
        collectSlots(a, out);
        collectSlots(b, out);
      });
      break;
    case 'call':
      t.args.forEach((a) => collectSlots(a, out));
      break;
  }
}

function sliceText(l: IRLit, loc: Loc): string {
  const start = loc.offset - l.loc.offset;
  const end = loc.end - l.loc.offset;
  return start >= 0 && end <= l.text.length ? l.text.slice(start, end) : '';
}

export { TRUE_CT };
