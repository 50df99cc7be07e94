// The resolved form of a rule body: every variable is a frame slot or a root (input, data),
// every function is a builtin or a user function's path, constants are folded.
import type { Loc } from '../ast.js';
import type { Value } from '../values.js';

export type FnRef = { kind: 'builtin'; name: string } | { kind: 'user'; path: string[] };

export type IR =
  | { k: 'const'; v: Value; loc: Loc }
  | { k: 'local'; slot: number; name: string; loc: Loc }
  | { k: 'input'; loc: Loc }
  | { k: 'data'; loc: Loc }
  | { k: 'ref'; head: IR; path: IR[]; loc: Loc }
  | { k: 'array'; items: IR[]; loc: Loc }
  | { k: 'set'; items: IR[]; loc: Loc }
  | { k: 'object'; items: [IR, IR][]; loc: Loc }
  | { k: 'compr'; kind: 'array' | 'set' | 'object'; term: IR; key?: IR; body: IRBody; loc: Loc }
  | { k: 'call'; fn: FnRef; args: IR[]; loc: Loc; op?: string };

export type IROf<K extends IR['k']> = Extract<IR, { k: K }>;

export interface IRWith {
  /** `input...`, `data...` (a path of constants) or a function (builtin name or user path). */
  target: { kind: 'input' | 'data'; path: string[] } | { kind: 'fn'; fn: FnRef };
  value: IR;
  /** The value names a function (`with f as g`), not a value. */
  valueFn?: FnRef;
  loc: Loc;
}

export type IRLit =
  | { kind: 'expr'; expr: IR; negated: boolean; withs: IRWith[]; loc: Loc; text: string }
  | { kind: 'some'; slots: number[]; withs: IRWith[]; loc: Loc; text: string; negated: false }
  | { kind: 'somein'; key?: IR; value: IR; coll: IR; withs: IRWith[]; loc: Loc; text: string; negated: boolean }
  | { kind: 'every'; key?: IR; value: IR; domain: IR; body: IRBody; withs: IRWith[]; loc: Loc; text: string; negated: boolean };

export interface IRBody {
  lits: IRLit[];
  /** Slots declared in this body (for safety checks and resets). */
  slots: number[];
}

/** Slots a term reads or binds (outside nested comprehension bodies, which are closures). */
export function termSlots(t: IR, out: Set<number>): Set<number> {
  switch (t.k) {
    case 'local':
      out.add(t.slot);
      break;
    case 'ref':
      termSlots(t.head, out);
      for (const p of t.path) termSlots(p, out);
      break;
    case 'array':
    case 'set':
      for (const x of t.items) termSlots(x, out);
      break;
    case 'object':
      for (const [a, b] of t.items) {
        termSlots(a, out);
        termSlots(b, out);
      }
      break;
    case 'call':
      for (const a of t.args) termSlots(a, out);
      break;
    case 'compr':
      closureFree(t, out);
      break;
  }
  return out;
}

/** Slots a comprehension reads from its surroundings: those used inside but not declared inside. */
export function closureFree(t: IROf<'compr'>, out: Set<number>): Set<number> {
  const inner = new Set<number>();
  termSlots(t.term, inner);
  if (t.key) termSlots(t.key, inner);
  bodySlots(t.body, inner);
  const own = new Set(allDeclared(t.body));
  for (const s of inner) if (!own.has(s)) out.add(s);
  return out;
}

export function bodySlots(b: IRBody, out: Set<number>): Set<number> {
  for (const l of b.lits) litSlots(l, out);
  return out;
}

export function litSlots(l: IRLit, out: Set<number>): Set<number> {
  switch (l.kind) {
    case 'expr':
      termSlots(l.expr, out);
      break;
    case 'some':
      for (const s of l.slots) out.add(s);
      break;
    case 'somein':
      if (l.key) termSlots(l.key, out);
      termSlots(l.value, out);
      termSlots(l.coll, out);
      break;
    case 'every': {
      termSlots(l.domain, out);
      const inner = bodySlots(l.body, new Set());
      const own = new Set(allDeclared(l.body));
      if (l.key) termSlots(l.key, own);
      termSlots(l.value, own);
      for (const s of inner) if (!own.has(s)) out.add(s);
      break;
    }
  }
  for (const w of l.withs) termSlots(w.value, out);
  return out;
}

/** Every slot declared by a body and the closures inside it. */
export function allDeclared(b: IRBody): number[] {
  const out = [...b.slots];
  const visit = (t: IR): void => {
    switch (t.k) {
      case 'compr':
        out.push(...allDeclared(t.body));
        visit(t.term);
        if (t.key) visit(t.key);
        break;
      case 'ref':
        visit(t.head);
        t.path.forEach(visit);
        break;
      case 'array':
      case 'set':
        t.items.forEach(visit);
        break;
      case 'object':
        t.items.forEach(([a, b]) => {
          visit(a);
          visit(b);
        });
        break;
      case 'call':
        t.args.forEach(visit);
        break;
    }
  };
  for (const l of b.lits) {
    if (l.kind === 'expr') visit(l.expr);
    else if (l.kind === 'somein') {
      visit(l.coll);
    } else if (l.kind === 'every') {
      visit(l.domain);
      out.push(...allDeclared(l.body));
      if (l.key) visit(l.key);
      visit(l.value);
    }
    for (const w of l.withs) visit(w.value);
  }
  return out;
}
