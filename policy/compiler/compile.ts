// From parsed modules to a program: the document tree with every rule at its path, names
// resolved, recursion refused, bodies turned into closures, constant rules computed once.
import type { Loc, Module, Rule, Term, TermOf } from '../ast.js';
import type { Builtin } from '../builtins/types.js';
import { PolicyError } from '../errors.js';
import { DocNode, type CompiledBody, type CompiledDef } from '../eval/docs.js';
import { BodyGen, TRUE_CT } from '../eval/gen.js';
import type { Value } from '../values.js';
import type { IR, IRBody } from './ir.js';
import { Resolver, Scope, patternVars, type ResolveEnv } from './resolve.js';

export interface Program {
  root: DocNode;
  modules: Module[];
  builtins: Map<string, Builtin>;
  fnNode(path: string[]): DocNode | undefined;
}

function fail(code: 'rego_compile_error' | 'rego_type_error' | 'rego_recursion_error', msg: string, loc: Loc): never {
  throw new PolicyError(code, msg, { file: loc.file, row: loc.row, col: loc.col });
}

/** The constant part of a rule head's path, and the rest (ref-head keys with variables). */
function headPath(rule: Rule): { path: string[]; suffix: Term[] } {
  const ref = rule.head.ref;
  const path = [...rule.module.package, (ref[0] as TermOf<'var'>).name];
  let i = 1;
  for (; i < ref.length; i++) {
    const t = ref[i]!;
    if (t.type !== 'scalar' || typeof t.value !== 'string') break;
    path.push(t.value);
  }
  return { path, suffix: ref.slice(i) };
}

export function buildProgram(modules: Module[], builtins: Map<string, Builtin>): Program {
  const root = new DocNode([]);
  const fnNode = (path: string[]): DocNode | undefined => {
    let n: DocNode | undefined = root;
    for (const p of path) {
      n = n.children.get(p);
      if (!n) return undefined;
    }
    return n.isFunction ? n : undefined;
  };
  const program: Program = { root, modules, builtins, fnNode };

  // 1. Every rule at its node.
  const packageRules = new Map<string, Set<string>>();
  for (const m of modules) {
    const key = m.package.join('.');
    if (!packageRules.has(key)) packageRules.set(key, new Set());
    let pkg = root;
    for (const p of m.package) pkg = pkg.child(p);
    pkg.isPackage = true;
    for (const r of m.rules) {
      const { path, suffix } = headPath(r);
      let node = root;
      for (const p of path) node = node.child(p);
      packageRules.get(key)!.add((r.head.ref[0] as TermOf<'var'>).name);
      if (r.head.args !== undefined) {
        if (suffix.length > 0) fail('rego_compile_error', 'function names must be constant refs', r.head.loc);
        if (node.arity >= 0 && node.arity !== r.head.args.length) fail('rego_type_error', `conflicting rules ${node.name} found`, r.head.loc);
        node.arity = r.head.args.length;
      } else if (node.arity >= 0) {
        fail('rego_type_error', `conflicting rules ${node.name} found`, r.head.loc);
      }
      if (r.head.member && suffix.length > 0) fail('rego_compile_error', 'multi-value rules must have a constant path', r.head.loc);
      if (r.isDefault) {
        if (suffix.length > 0) fail('rego_compile_error', 'default rules must have a constant path', r.head.loc);
        if (node.defaults.length > 0) fail('rego_type_error', `multiple default rules ${node.name} found`, r.head.loc);
        node.defaults.push(r);
      } else node.rules.push(r);
    }
  }
  checkShapes(root);

  // 2. Resolve and generate each node's definitions.
  const importsOf = new Map<Module, Map<string, string[]>>();
  for (const m of modules) importsOf.set(m, moduleImports(m));
  const irOf = new Map<DocNode, IR[]>();
  const env: Env = { program, packageRules, importsOf };
  const visit = (node: DocNode) => {
    if (node.rules.length > 0 || node.defaults.length > 0) compileNode(node, env, irOf);
    for (const c of node.children.values()) visit(c);
  };
  visit(root);
  checkRecursion(root, irOf);
  return program;
}

function checkShapes(node: DocNode): void {
  if (node.isRule && !node.isFunction) {
    const kinds = new Set(node.rules.map((r) => (r.head.member ? 'set' : headPath(r).suffix.length > 0 ? 'object' : 'complete')));
    if (node.defaults.length > 0) kinds.add('complete');
    if (kinds.has('set') && kinds.size > 1) fail('rego_type_error', `conflicting rules ${node.name} found`, node.rules[0]!.head.loc);
    if (kinds.has('complete') && (kinds.has('object') || node.children.size > 0)) {
      const r = node.rules.find((x) => headPath(x).suffix.length > 0) ?? node.rules[0] ?? node.defaults[0]!;
      fail('rego_type_error', `rule ${node.name} conflicts with other rules at the same path`, r.head.loc);
    }
    if (kinds.has('set') && node.children.size > 0) fail('rego_type_error', `rule ${node.name} conflicts with other rules under it`, node.rules[0]!.head.loc);
  }
  if (node.isFunction && node.children.size > 0) fail('rego_type_error', `function ${node.name} conflicts with rules under it`, node.rules[0]!.head.loc);
  for (const c of node.children.values()) checkShapes(c);
}

function moduleImports(m: Module): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const imp of m.imports) {
    const path: string[] = [];
    let t = imp.path;
    if (t.type === 'ref') {
      if (t.head.type !== 'var') fail('rego_compile_error', 'invalid import', imp.loc);
      path.push(t.head.name);
      for (const p of t.path) {
        if (p.type !== 'scalar' || typeof p.value !== 'string') fail('rego_compile_error', 'invalid import path', imp.loc);
        path.push(p.value);
      }
    } else if (t.type === 'var') path.push(t.name);
    else fail('rego_compile_error', 'invalid import', imp.loc);
    t = imp.path;
    if (path[0] === 'future' || path[0] === 'rego') continue;
    const alias = imp.alias ?? path[path.length - 1]!;
    if (alias === 'input' && path.length === 1) continue;
    if (alias === 'data' && path.length === 1) continue;
    if (out.has(alias)) fail('rego_compile_error', `import must not shadow import ${alias}`, imp.loc);
    out.set(alias, path);
  }
  return out;
}

/** What compiling a definition needs to know about the whole program. */
interface Env {
  program: Program;
  packageRules: Map<string, Set<string>>;
  importsOf: Map<Module, Map<string, string[]>>;
}

function compileNode(node: DocNode, env: Env, irOf: Map<DocNode, IR[]>): void {
  const refs: IR[] = [];
  irOf.set(node, refs);
  const defs = node.rules.map((r) => compileDef(r, node, env, refs));
  for (let i = 0; i < node.rules.length; i++) {
    const r = node.rules[i]!;
    const d = defs[i]!;
    if (node.isFunction) node.functions.push(d);
    else if (r.head.member) node.sets.push(d);
    else if (headPath(r).suffix.length > 0) node.objects.push(d);
    else node.complete.push(d);
  }
  if (node.defaults.length > 0) node.defaultDef = compileDef(node.defaults[0]!, node, env, refs);
  node.earlyExit = sameConstantOutputs(node);
  // A rule that is one constant (`policy_data := {...}`) is computed now, not per evaluation.
  if (node.complete.length === 1 && !node.defaultDef && constDefs.has(defs[0]!)) {
    node.constValue = defs[0]!.bodies[0]!.value!.det!(null as never);
  }
  if (node.constValue !== undefined) node.fixedValue = node.constValue;
  else if (node.defaultDef && constDefs.has(node.defaultDef) && defs.length === 0 && node.children.size === 0) {
    node.fixedValue = node.defaultDef.bodies[0]!.value!.det!(null as never);
  }
}

/**
 * Do all bodies of all (non-default) definitions give one and the same scalar constant? Then the
 * first that holds decides: no other can conflict with it.
 */
function sameConstantOutputs(node: DocNode): boolean {
  const defs = node.isFunction ? node.functions : node.complete;
  if (defs.length === 0 || node.sets.length > 0 || node.objects.length > 0) return false;
  let seen: Term | null = null;
  const same = (t: Term | undefined): boolean => {
    const v: Term = t ?? { type: 'scalar', value: true, loc: node.rules[0]!.loc };
    if (v.type !== 'scalar') return false;
    if (seen === null) seen = v;
    return seen.type === 'scalar' && seen.value === v.value;
  };
  for (const d of defs) {
    const r = d.rule;
    for (const b of r.bodies) if (!same(b.isElse ? b.value : r.head.value)) return false;
  }
  return true;
}

/** Definitions whose value is a constant with no body: `p := {...}`. */
const constDefs = new WeakSet<CompiledDef>();

function compileDef(rule: Rule, node: DocNode, { program, packageRules, importsOf }: Env, refs: IR[]): CompiledDef {
  const m = rule.module;
  const names: string[] = [];
  const env: ResolveEnv = {
    module: m,
    packageRules: packageRules.get(m.package.join('.'))!,
    imports: importsOf.get(m)!,
    isBuiltin: (name) => program.builtins.has(name) || name === 'print',
    isFunction: (path) => program.fnNode(path) !== undefined,
    newSlot: (name) => names.push(name) - 1,
  };
  const resolver = new Resolver(env);
  const gen = new BodyGen({ root: program.root, builtins: program.builtins, fnNode: program.fnNode, slotName: (s) => names[s] ?? '?', owner: node.name });
  const top = new Scope(null);
  const argSlots = new Set<number>();
  let argIRs: IR[] | null = null;
  if (rule.head.args) {
    for (const a of rule.head.args) for (const v of patternVars(a)) if (!top.vars.has(v.name)) top.vars.set(v.name, env.newSlot(v.name));
    argIRs = rule.head.args.map((a) => resolver.term(a, top));
    for (const s of top.vars.values()) argSlots.add(s);
  }
  const suffix = headPath(rule).suffix;
  const bodies: CompiledBody[] = [];
  let constant = false;
  for (const rb of rule.bodies) {
    const valueTerm = rb.isElse ? rb.value : rule.head.value;
    const headTerms: Term[] = [...suffix];
    if (rule.head.member) headTerms.push(rule.head.member);
    if (valueTerm) headTerms.push(valueTerm);
    const r = resolver.body(rb.body, top, headTerms);
    collectRefs(r.body, r.head, refs);
    const bound = new Set(argSlots);
    const body = gen.body(r.body, bound);
    const headIRs = r.head;
    const keys = suffix.map((_, i) => gen.term(headIRs[i]!, bound));
    let j = suffix.length;
    const member = rule.head.member ? gen.term(headIRs[j++]!, bound) : null;
    const value = valueTerm ? gen.term(headIRs[j]!, bound) : null;
    if (rule.bodies.length === 1 && rb.body.length === 0 && valueTerm && headIRs[j]!.k === 'const') constant = true;
    const simple = (t: Term | undefined) => t === undefined || t.type === 'scalar';
    const firstSolution = !rule.head.args && suffix.every((x) => x.type === 'scalar') && simple(rule.head.member) && simple(valueTerm);
    bodies.push({ run: body.run, test: body.test, keys, member, value: value ?? (rule.isDefault ? TRUE_CT : null), firstSolution, loc: rb.loc });
  }
  if (rule.isDefault) {
    // `default p := v`: its value only.
    const r = resolver.body([], top, [rule.head.value!]);
    const v = r.head[0]!;
    if (!isGround(v)) fail('rego_compile_error', 'default rule value cannot contain variables or calls', rule.head.loc);
    bodies.length = 0;
    bodies.push({ run: (_f, k) => k(), test: () => true, keys: [], member: null, value: gen.term(v, new Set(argSlots)), firstSolution: false, loc: rule.loc });
    constant = true; // ground, checked above
  }
  const def: CompiledDef = {
    rule,
    name: node.name,
    frameSize: names.length,
    bodies,
    args: null,
    loc: rule.head.loc,
  };
  if (argIRs) {
    // parameters are matched in order, each binding what it introduces
    const b = new Set<number>();
    def.args = argIRs.map((a) => gen.match(a, b));
  }
  if (constant && !rule.head.args) constDefs.add(def);
  return def;
}

function isGround(t: IR): boolean {
  switch (t.k) {
    case 'const':
      return true;
    case 'array':
    case 'set':
      return t.items.every(isGround);
    case 'object':
      return t.items.every(([a, b]) => isGround(a) && isGround(b));
    default:
      return false;
  }
}

/** Data refs and user calls a definition makes (for the recursion check). */
function collectRefs(b: IRBody, head: IR[], out: IR[]): void {
  const visit = (t: IR): void => {
    switch (t.k) {
      case 'ref':
        if (t.head.k === 'data') out.push(t);
        else visit(t.head);
        t.path.forEach(visit);
        break;
      case 'data':
        out.push(t);
        break;
      case 'array':
      case 'set':
        t.items.forEach(visit);
        break;
      case 'object':
        t.items.forEach(([a, c]) => {
          visit(a);
          visit(c);
        });
        break;
      case 'compr':
        visit(t.term);
        if (t.key) visit(t.key);
        collectRefs(t.body, [], out);
        break;
      case 'call':
        if (t.fn.kind === 'user') out.push(t);
        t.args.forEach(visit);
        break;
    }
  };
  for (const l of b.lits) {
    if (l.kind === 'expr') visit(l.expr);
    else if (l.kind === 'somein') {
      visit(l.coll);
      visit(l.value);
      if (l.key) visit(l.key);
    } else if (l.kind === 'every') {
      visit(l.domain);
      collectRefs(l.body, [], out);
    }
    for (const w of l.withs) {
      visit(w.value);
      if (w.valueFn?.kind === 'user') out.push({ k: 'call', fn: w.valueFn, args: [], loc: w.loc });
    }
  }
  head.forEach(visit);
}

function checkRecursion(root: DocNode, irOf: Map<DocNode, IR[]>): void {
  const depsOf = (node: DocNode): DocNode[] => {
    const out: DocNode[] = [];
    for (const t of irOf.get(node) ?? []) {
      let n: DocNode = root;
      if (t.k === 'call' && t.fn.kind === 'user') {
        for (const p of t.fn.path) n = n.children.get(p) ?? n;
        out.push(n);
        continue;
      }
      const path = t.k === 'ref' ? t.path : [];
      let i = 0;
      for (; i < path.length; i++) {
        if (n.isRule) break;
        const p = path[i]!;
        if (p.k !== 'const' || typeof p.v !== 'string') break;
        const c = n.children.get(p.v);
        if (!c) {
          n = root;
          i = -1;
          break;
        }
        n = c;
      }
      if (i === -1) continue;
      if (n.isRule) out.push(n);
      else collectRules(n, out);
    }
    return out;
  };
  const state = new Map<DocNode, number>(); // 1 visiting, 2 done
  const stack: DocNode[] = [];
  const dfs = (n: DocNode): void => {
    state.set(n, 1);
    stack.push(n);
    for (const d of depsOf(n)) {
      const s = state.get(d);
      if (s === 1) {
        const cyc = stack.slice(stack.indexOf(d)).map((x) => x.name);
        const r = d.rules[0] ?? d.defaults[0]!;
        fail('rego_recursion_error', `rule ${d.name} is recursive: ${[...cyc, d.name].join(' -> ')}`, r.head.loc);
      }
      if (s === undefined) dfs(d);
    }
    stack.pop();
    state.set(n, 2);
  };
  const all: DocNode[] = [];
  collectRules(root, all);
  for (const n of all) if (!state.has(n)) dfs(n);
}

function collectRules(n: DocNode, out: DocNode[]): void {
  if (n.isRule) {
    out.push(n);
    return;
  }
  for (const c of n.children.values()) collectRules(c, out);
}

export type { Value };
