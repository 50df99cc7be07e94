// Name resolution: each variable of a body becomes a frame slot (declared by `some`, `:=`,
// function parameters, or implicitly by use), a root (input, data), an import, or a rule of the
// package (a data path). Functions resolve to user functions or builtins. Output: IR.
import type { Body, Literal, Loc, Module, Term, TermOf } from '../ast.js';
import { DEPRECATED } from '../builtins/index.js';
import { PolicyError } from '../errors.js';
import { RObject, RSet, type Value } from '../values.js';
import type { FnRef, IR, IRBody, IRLit, IRWith } from './ir.js';

export class Scope {
  readonly vars = new Map<string, number>();
  constructor(readonly parent: Scope | null) {}
  lookup(name: string): number | undefined {
    for (let s: Scope | null = this; s; s = s.parent) {
      const v = s.vars.get(name);
      if (v !== undefined) return v;
    }
    return undefined;
  }
}

/** What a module's bodies can see besides their own variables. */
export interface ResolveEnv {
  module: Module | null;
  /** Rule names (first head part) of the module's package, across modules. */
  packageRules: Set<string>;
  /** alias → the import's path (['data', ...] or ['input', ...]). */
  imports: Map<string, string[]>;
  isBuiltin(name: string): boolean;
  /** Is `path` (from data) a user function? */
  isFunction(path: string[]): boolean;
  /** Allocates a frame slot for a variable. */
  newSlot(name: string): number;
}

export function err(msg: string, loc: Loc, code: 'rego_compile_error' | 'rego_type_error' | 'rego_unsafe_var_error' = 'rego_compile_error'): never {
  throw new PolicyError(code, msg, { file: loc.file, row: loc.row, col: loc.col });
}

function isWildcard(name: string): boolean {
  return name.startsWith('$_');
}

export class Resolver {
  constructor(private readonly env: ResolveEnv) {}

  private textOf(loc: Loc): string {
    const src = this.env.module?.src;
    return src ? src.slice(loc.offset, loc.end) : '';
  }

  /** A body in a new scope under `parent`. `head` terms (a rule's key/value) are resolved in it too. */
  body(lits: Body, parent: Scope, head: Term[] = [], declared: TermOf<'var'>[] = []): { body: IRBody; scope: Scope; head: IR[] } {
    const scope = new Scope(parent);
    const slots: number[] = [];
    const declare = (v: TermOf<'var'>, explicit: boolean) => {
      if (scope.vars.has(v.name)) {
        if (explicit && !isWildcard(v.name)) err(`var ${v.name} assigned above`, v.loc);
        return;
      }
      if (v.name === 'input' || v.name === 'data') err(`variables must not shadow ${v.name} (use a different variable name)`, v.loc);
      const s = this.env.newSlot(v.name);
      scope.vars.set(v.name, s);
      slots.push(s);
    };
    for (const v of declared) declare(v, true);
    // Variables a literal declares (`some`, `:=`, `some ... in`) are in scope from that literal
    // on, as in OPA: before it, a comprehension using the name has a variable of its own.
    const explicitOf = (l: Literal): { vars: TermOf<'var'>[]; strict: boolean } => {
      if (l.kind === 'some') return { vars: l.vars, strict: true };
      if (l.kind === 'somein') return { vars: [...patternVars(l.value), ...(l.key ? patternVars(l.key) : [])], strict: false };
      if (l.kind === 'expr' && l.expr.type === 'call' && l.expr.fn.type === 'var' && l.expr.fn.name === 'assign') {
        const lhs = l.expr.args[0]!;
        if (lhs.type !== 'var' && lhs.type !== 'array' && lhs.type !== 'object') err(`cannot assign to ${lhs.type}`, lhs.loc);
        return { vars: patternVars(lhs), strict: true };
      }
      return { vars: [], strict: false };
    };
    const explicitNames = new Set<string>();
    for (const l of lits) for (const v of explicitOf(l).vars) if (!isWildcard(v.name)) explicitNames.add(v.name);
    const implicit = (t: Term) => {
      for (const v of directVars(t)) {
        if (scope.lookup(v.name) !== undefined || explicitNames.has(v.name)) continue;
        if (!isWildcard(v.name) && this.isGlobal(v.name)) continue;
        declare(v, false);
      }
    };
    for (const l of lits) {
      if (l.kind === 'expr') implicit(l.expr);
      else if (l.kind === 'somein') implicit(l.coll);
      else if (l.kind === 'every') implicit(l.domain);
      for (const w of l.withs) {
        // `with f as g`: g names a function, not a variable
        const vp = staticPath(w.value);
        if (vp && scope.lookup(vp[0]!) === undefined && this.fnRef(vp)) continue;
        implicit(w.value);
      }
    }
    for (const h of head) implicit(h);
    const out: IRLit[] = lits.map((l) => {
      const e = explicitOf(l);
      for (const v of e.vars) declare(v, e.strict);
      return this.literal(l, scope);
    });
    return { body: { lits: out, slots }, scope, head: head.map((h) => this.term(h, scope)) };
  }

  private isGlobal(name: string): boolean {
    return name === 'input' || name === 'data' || this.env.imports.has(name) || this.env.packageRules.has(name);
  }

  private literal(l: Literal, scope: Scope): IRLit {
    const text = this.textOf(l.loc);
    const withs = l.withs.map((w) => this.withMod(w.target, w.value, w.loc, scope));
    switch (l.kind) {
      case 'expr':
        return { kind: 'expr', expr: this.term(l.expr, scope), negated: l.negated, withs, loc: l.loc, text };
      case 'some':
        return { kind: 'some', slots: l.vars.map((v) => scope.lookup(v.name)!), withs, loc: l.loc, text, negated: false };
      case 'somein': {
        const lit: IRLit = { kind: 'somein', value: this.term(l.value, scope), coll: this.term(l.coll, scope), withs, loc: l.loc, text, negated: l.negated };
        if (l.key) lit.key = this.term(l.key, scope);
        return lit;
      }
      case 'every': {
        const domain = this.term(l.domain, scope);
        const decl = l.key ? [l.key, l.value] : [l.value];
        const inner = this.body(l.body, scope, [], decl);
        const value = this.term(l.value, inner.scope);
        const lit: IRLit = { kind: 'every', value, domain, body: inner.body, withs, loc: l.loc, text, negated: l.negated };
        if (l.key) lit.key = this.term(l.key, inner.scope);
        return lit;
      }
    }
  }

  private withMod(target: Term, value: Term, loc: Loc, scope: Scope): IRWith {
    const path = staticPath(target);
    if (!path) err('with target must be a reference to input, data or a function', target.loc);
    let t: IRWith['target'];
    const resolved = this.globalPath(path, scope);
    if (resolved && (resolved[0] === 'input' || resolved[0] === 'data')) {
      const fnPath = resolved[0] === 'data' && this.env.isFunction(resolved.slice(1)) ? resolved.slice(1) : null;
      t = fnPath ? { kind: 'fn', fn: { kind: 'user', path: fnPath } } : { kind: resolved[0], path: resolved.slice(1) };
    } else if (scope.lookup(path[0]!) === undefined && this.env.isBuiltin(path.join('.'))) {
      t = { kind: 'fn', fn: { kind: 'builtin', name: path.join('.') } };
    } else {
      return err(`with keyword target must reference existing input, data, or a function`, target.loc, 'rego_compile_error');
    }
    const w: IRWith = { target: t, value: { k: 'const', v: null, loc: value.loc }, loc };
    const vpath = staticPath(value);
    if (t.kind === 'fn' && vpath && scope.lookup(vpath[0]!) === undefined) {
      const fn = this.fnRef(vpath);
      if (fn) {
        w.valueFn = fn;
        return w;
      }
    }
    w.value = this.term(value, scope);
    return w;
  }

  /** A name path through imports and package rules to ['data', ...] / ['input', ...], or null for a local. */
  private globalPath(path: string[], scope: Scope): string[] | null {
    const head = path[0]!;
    if (scope.lookup(head) !== undefined) return null;
    if (head === 'input' || head === 'data') return path;
    const imp = this.env.imports.get(head);
    if (imp) return [...imp, ...path.slice(1)];
    if (this.env.packageRules.has(head) && this.env.module) return ['data', ...this.env.module.package, ...path];
    return null;
  }

  private fnRef(path: string[]): FnRef | null {
    const head = path[0]!;
    const imp = this.env.imports.get(head);
    if (imp && imp[0] === 'data') {
      const full = [...imp.slice(1), ...path.slice(1)];
      if (this.env.isFunction(full)) return { kind: 'user', path: full };
    }
    if (head === 'data' && this.env.isFunction(path.slice(1))) return { kind: 'user', path: path.slice(1) };
    if (this.env.module && this.env.packageRules.has(head)) {
      const full = [...this.env.module.package, ...path];
      if (this.env.isFunction(full)) return { kind: 'user', path: full };
    }
    const name = path.join('.');
    if (this.env.isBuiltin(name)) return { kind: 'builtin', name };
    return null;
  }

  term(t: Term, scope: Scope): IR {
    switch (t.type) {
      case 'scalar':
      case 'value':
        return { k: 'const', v: t.value, loc: t.loc };
      case 'var':
        return this.varTerm(t, scope);
      case 'ref': {
        const head = this.term(t.head, scope);
        const path = t.path.map((p) => this.term(p, scope));
        if (head.k === 'ref') return fold({ k: 'ref', head: head.head, path: [...head.path, ...path], loc: t.loc });
        return fold({ k: 'ref', head, path, loc: t.loc });
      }
      case 'array':
        return fold({ k: 'array', items: t.items.map((x) => this.term(x, scope)), loc: t.loc });
      case 'set':
        return fold({ k: 'set', items: t.items.map((x) => this.term(x, scope)), loc: t.loc });
      case 'object':
        return fold({ k: 'object', items: t.items.map(([a, b]) => [this.term(a, scope), this.term(b, scope)] as [IR, IR]), loc: t.loc });
      case 'arraycompr':
      case 'setcompr': {
        const r = this.body(t.body, scope, [t.term]);
        return { k: 'compr', kind: t.type === 'arraycompr' ? 'array' : 'set', term: r.head[0]!, body: r.body, loc: t.loc };
      }
      case 'objcompr': {
        const r = this.body(t.body, scope, [t.key, t.value]);
        return { k: 'compr', kind: 'object', key: r.head[0]!, term: r.head[1]!, body: r.body, loc: t.loc };
      }
      case 'call':
        return this.call(t, scope);
    }
  }

  private varTerm(t: TermOf<'var'>, scope: Scope): IR {
    const slot = scope.lookup(t.name);
    if (slot !== undefined) return { k: 'local', slot, name: t.name, loc: t.loc };
    if (t.name === 'input') return { k: 'input', loc: t.loc };
    if (t.name === 'data') return { k: 'data', loc: t.loc };
    const imp = this.env.imports.get(t.name);
    if (imp) {
      const head: IR = imp[0] === 'input' ? { k: 'input', loc: t.loc } : { k: 'data', loc: t.loc };
      if (imp.length === 1) return head;
      return { k: 'ref', head, path: imp.slice(1).map((s) => ({ k: 'const', v: s, loc: t.loc })), loc: t.loc };
    }
    if (this.env.packageRules.has(t.name) && this.env.module) {
      const path = [...this.env.module.package, t.name];
      return { k: 'ref', head: { k: 'data', loc: t.loc }, path: path.map((s) => ({ k: 'const', v: s, loc: t.loc })), loc: t.loc };
    }
    return err(`var ${t.name} is undeclared`, t.loc);
  }

  private call(t: TermOf<'call'>, scope: Scope): IR {
    const args = t.args.map((a) => this.term(a, scope));
    const path = staticPath(t.fn);
    if (!path) return err('invalid function reference', t.fn.loc, 'rego_type_error');
    if (scope.lookup(path[0]!) !== undefined) return err(`${path.join('.')} is a variable, not a function`, t.fn.loc, 'rego_type_error');
    const fn = this.fnRef(path);
    if (!fn) return err(`undefined function ${path.join('.')}`, t.fn.loc, 'rego_type_error');
    if (fn.kind === 'builtin' && this.env.module?.version === 'v1' && DEPRECATED.has(fn.name)) {
      return err(`deprecated built-in function calls in expression: ${fn.name}`, t.fn.loc, 'rego_type_error');
    }
    const ir: IR = { k: 'call', fn, args, loc: t.loc };
    if (t.op) ir.op = t.op;
    return ir;
  }
}

/** A var or a ref of a var and string parts, as names. */
export function staticPath(t: Term): string[] | null {
  if (t.type === 'var') return [t.name];
  if (t.type === 'ref' && t.head.type === 'var') {
    const out = [t.head.name];
    for (const p of t.path) {
      if (p.type !== 'scalar' || typeof p.value !== 'string') return null;
      out.push(p.value);
    }
    return out;
  }
  return null;
}

/** Variables a term binds when it is the left side of `:=` or a `some ... in` pattern. */
export function patternVars(t: Term): TermOf<'var'>[] {
  const out: TermOf<'var'>[] = [];
  const visit = (x: Term) => {
    if (x.type === 'var') out.push(x);
    else if (x.type === 'array') x.items.forEach(visit);
    else if (x.type === 'object') x.items.forEach(([, v]) => visit(v));
  };
  visit(t);
  return out;
}

/** Variables used directly in a term (not inside comprehension bodies, not function names). */
function directVars(t: Term): TermOf<'var'>[] {
  const out: TermOf<'var'>[] = [];
  const visit = (x: Term) => {
    switch (x.type) {
      case 'var':
        out.push(x);
        break;
      case 'ref':
        visit(x.head);
        x.path.forEach(visit);
        break;
      case 'array':
      case 'set':
        x.items.forEach(visit);
        break;
      case 'object':
        x.items.forEach(([a, b]) => {
          visit(a);
          visit(b);
        });
        break;
      case 'call':
        x.args.forEach(visit);
        break;
    }
  };
  visit(t);
  return out;
}

/** Constant folding: composites of constants become one constant value. */
function fold(t: IR): IR {
  switch (t.k) {
    case 'array':
      if (t.items.every((x) => x.k === 'const')) return { k: 'const', v: t.items.map((x) => (x as { v: Value }).v), loc: t.loc };
      return t;
    case 'set':
      if (t.items.every((x) => x.k === 'const')) return { k: 'const', v: RSet.of(t.items.map((x) => (x as { v: Value }).v)), loc: t.loc };
      return t;
    case 'object':
      if (t.items.every(([a, b]) => a.k === 'const' && b.k === 'const')) {
        const o = new RObject();
        for (const [a, b] of t.items) o.set((a as { v: Value }).v, (b as { v: Value }).v);
        return { k: 'const', v: o, loc: t.loc };
      }
      return t;
    case 'ref':
      if (t.head.k === 'const') {
        // a constant composite indexed by constants: fold when defined
        return t;
      }
      return t;
    default:
      return t;
  }
}
