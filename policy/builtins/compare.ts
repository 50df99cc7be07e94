// Comparison operators and membership (`in`). Values of different types compare by Rego's type order.
import { RObject, RSet, compare, equal, type Value } from '../values.js';
import { def, type BuiltinTable } from './types.js';

export function register(t: BuiltinTable): void {
  def(t, 'equal', 2, ([a, b]) => equal(a!, b!));
  def(t, 'neq', 2, ([a, b]) => !equal(a!, b!));
  def(t, 'lt', 2, ([a, b]) => compare(a!, b!) < 0);
  def(t, 'lte', 2, ([a, b]) => compare(a!, b!) <= 0);
  def(t, 'gt', 2, ([a, b]) => compare(a!, b!) > 0);
  def(t, 'gte', 2, ([a, b]) => compare(a!, b!) >= 0);
  def(t, 'internal.member_2', 2, ([x, c]) => member(x!, c!));
  def(t, 'internal.member_3', 3, ([k, x, c]) => member3(k!, x!, c!));
}

function member(x: Value, c: Value): boolean {
  if (Array.isArray(c)) return c.some((e) => equal(e, x));
  if (c instanceof RSet) return c.has(x);
  if (c instanceof RObject) {
    for (const [, v] of c.entries()) if (equal(v, x)) return true;
    return false;
  }
  return false;
}

function member3(k: Value, x: Value, c: Value): boolean {
  if (Array.isArray(c)) {
    if (typeof k !== 'number' || !Number.isInteger(k)) return false;
    const e = c[k];
    return e !== undefined && equal(e, x);
  }
  if (c instanceof RObject) {
    const v = c.get(k);
    return v !== undefined && equal(v, x);
  }
  if (c instanceof RSet) return equal(k, x) && c.has(x);
  return false;
}
