// The syntax tree the parser builds and the compiler annotates. Operators are calls to their
// builtins (OPA's names: plus, equal, eq for `=`, assign for `:=`, internal.member_2 for `in`),
// so `with` can replace them like any other function.
import type { Value } from './values.js';

export interface Loc {
  file: string;
  row: number;
  col: number;
  /** Source offsets of the construct's text, for messages and `opa eval`'s "text". */
  offset: number;
  end: number;
}

export type Scalar = null | boolean | number | bigint | string;

export type Term =
  | { type: 'scalar'; value: Scalar; loc: Loc }
  /** A constant array or object written as plain JSON (big data literals are read in one step). */
  | { type: 'value'; value: Value; loc: Loc }
  | { type: 'var'; name: string; loc: Loc }
  | { type: 'ref'; head: Term; path: Term[]; loc: Loc }
  | { type: 'array'; items: Term[]; loc: Loc }
  | { type: 'set'; items: Term[]; loc: Loc }
  | { type: 'object'; items: [Term, Term][]; loc: Loc }
  | { type: 'arraycompr'; term: Term; body: Body; loc: Loc }
  | { type: 'setcompr'; term: Term; body: Body; loc: Loc }
  | { type: 'objcompr'; key: Term; value: Term; body: Body; loc: Loc }
  | { type: 'call'; fn: Term; args: Term[]; loc: Loc; op?: string };

export type TermOf<T extends Term['type']> = Extract<Term, { type: T }>;

export interface With {
  target: Term;
  value: Term;
  loc: Loc;
}

export type Literal =
  | { kind: 'expr'; expr: Term; negated: boolean; withs: With[]; loc: Loc }
  | { kind: 'some'; vars: TermOf<'var'>[]; withs: With[]; loc: Loc; negated: false }
  | { kind: 'somein'; key?: Term; value: Term; coll: Term; withs: With[]; loc: Loc; negated: boolean }
  | { kind: 'every'; key?: TermOf<'var'>; value: TermOf<'var'>; domain: Term; body: Body; withs: With[]; loc: Loc; negated: boolean };

export type Body = Literal[];

export interface RuleHead {
  /** The head's ref: a name, then dots and brackets (`p`, `a.b[x]`, `f`). */
  ref: Term[];
  /** A function's parameters. */
  args?: Term[];
  /** A multi-value rule's member (`p contains x`, v0 `p[x]`). */
  member?: Term;
  /** The value (`:= v`, `= v`); absent means true. */
  value?: Term;
  assign: boolean;
  loc: Loc;
}

export interface RuleBody {
  body: Body;
  /** An `else` body's value (absent: true, or the head's value for an else without one). */
  value?: Term;
  isElse: boolean;
  loc: Loc;
}

export interface Rule {
  head: RuleHead;
  isDefault: boolean;
  /** The body and its else chain, in order. */
  bodies: RuleBody[];
  loc: Loc;
  module: Module;
}

export interface Import {
  path: Term;
  alias?: string;
  loc: Loc;
}

export type RegoVersion = 'v0' | 'v1';

export interface Module {
  file: string;
  src: string;
  package: string[];
  packageLoc: Loc;
  imports: Import[];
  rules: Rule[];
  version: RegoVersion;
}

export function termText(src: string, t: { loc: Loc }): string {
  return src.slice(t.loc.offset, t.loc.end);
}
