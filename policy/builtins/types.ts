// The shape of a builtin: a pure function of its arguments (values), or a relation that yields
// several values (walk). A type or domain error is thrown as BuiltinError; the evaluator turns it
// into undefined (the default, as OPA and regorus do) or a fatal error in strict mode.
import { BuiltinError, LimitError } from '../errors.js';
import { RObject, RSet, typeName, type Value } from '../values.js';
import type { Limits } from '../eval/context.js';

export interface BuiltinCtx {
  limits: Limits;
  /** Per-evaluation memo for nondeterministic builtins (so time.now_ns is stable within a query). */
  memo: Map<string, Value>;
}

export interface Builtin {
  name: string;
  /** Number of operands (the output is one more, optional, argument). */
  arity: number;
  fn: (args: Value[], b: BuiltinCtx) => Value | undefined;
  /** A relation: every value it yields is a solution. */
  relation?: (args: Value[], b: BuiltinCtx, k: (v: Value) => void) => void;
  /** Variadic builtins take any number of operands (print). */
  variadic?: boolean;
}

export type BuiltinTable = Map<string, Builtin>;

export function def(table: BuiltinTable, name: string, arity: number, fn: Builtin['fn']): void {
  table.set(name, { name, arity, fn });
}

/** OPA's wording for a bad operand type. */
export function typeErr(fn: string, pos: number, want: string, got: Value): BuiltinError {
  return new BuiltinError(`${fn}: operand ${pos} must be ${want} but got ${typeName(got)}`, 'eval_type_error');
}

export function str(fn: string, args: Value[], i: number): string {
  const v = args[i]!;
  if (typeof v !== 'string') throw typeErr(fn, i + 1, 'string', v);
  return v;
}

export function num(fn: string, args: Value[], i: number): number | bigint {
  const v = args[i]!;
  if (typeof v !== 'number' && typeof v !== 'bigint') throw typeErr(fn, i + 1, 'number', v);
  return v;
}

export function bool(fn: string, args: Value[], i: number): boolean {
  const v = args[i]!;
  if (typeof v !== 'boolean') throw typeErr(fn, i + 1, 'boolean', v);
  return v;
}

export function arr(fn: string, args: Value[], i: number): Value[] {
  const v = args[i]!;
  if (!Array.isArray(v)) throw typeErr(fn, i + 1, 'array', v);
  return v;
}

export function obj(fn: string, args: Value[], i: number): RObject {
  const v = args[i]!;
  if (!(v instanceof RObject)) throw typeErr(fn, i + 1, 'object', v);
  return v;
}

export function set(fn: string, args: Value[], i: number): RSet {
  const v = args[i]!;
  if (!(v instanceof RSet)) throw typeErr(fn, i + 1, 'set', v);
  return v;
}

/** An integer operand as a JS number (OPA's int-only builtins); rejects non-integers. */
export function int(fn: string, args: Value[], i: number): number {
  const v = num(fn, args, i);
  if (typeof v === 'bigint') {
    throw new BuiltinError(`${fn}: operand ${i + 1} must be integer number but got out-of-range number`, 'eval_type_error');
  }
  if (!Number.isInteger(v)) throw new BuiltinError(`${fn}: operand ${i + 1} must be integer number but got floating-point number`, 'eval_type_error');
  return v;
}

/** Members of an array or set (OPA's "any<array, set>"). */
export function collection(fn: string, args: Value[], i: number): Value[] {
  const v = args[i]!;
  if (Array.isArray(v)) return v;
  if (v instanceof RSet) return v.values();
  throw typeErr(fn, i + 1, 'one of {array, set}', v);
}

/** Limits are never swallowed as "undefined": `not f(x)` must not turn a limit into an allow. */
export function checkString(s: string, b: BuiltinCtx, fn: string): string {
  if (s.length > b.limits.maxStringLength) throw new LimitError(`${fn}: result of ${s.length} characters exceeds the limit of ${b.limits.maxStringLength}`);
  return s;
}

export function checkSize(n: number, b: BuiltinCtx, fn: string): void {
  if (n > b.limits.maxCollectionSize) throw new LimitError(`${fn}: result of ${n} elements exceeds the limit of ${b.limits.maxCollectionSize}`);
}
