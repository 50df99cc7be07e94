// count, sum, product, max, min, sort (and v0's all/any).
import { BuiltinError } from '../errors.js';
import { RObject, RSet, compare, type Value } from '../values.js';
import { add, mul } from './numbers.js';
import { def, typeErr, type BuiltinTable } from './types.js';

/** Code points in a string (OPA counts runes, not UTF-16 units). */
export function runeCount(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

function members(fn: string, v: Value): Value[] {
  if (Array.isArray(v)) return v;
  if (v instanceof RSet) return v.values();
  throw typeErr(fn, 1, 'one of {array, set}', v);
}

export function register(t: BuiltinTable): void {
  def(t, 'count', 1, ([v]) => {
    if (typeof v === 'string') return runeCount(v);
    if (Array.isArray(v)) return v.length;
    if (v instanceof RObject || v instanceof RSet) return v.size;
    throw typeErr('count', 1, 'one of {array, object, set, string}', v!);
  });
  def(t, 'sum', 1, ([v]) => {
    let acc: number | bigint = 0;
    for (const x of members('sum', v!)) {
      if (typeof x !== 'number' && typeof x !== 'bigint') throw new BuiltinError('sum: operand 1 must be one of {array[number], set[number]}', 'eval_type_error');
      acc = add(acc, x);
    }
    return acc;
  });
  def(t, 'product', 1, ([v]) => {
    let acc: number | bigint = 1;
    for (const x of members('product', v!)) {
      if (typeof x !== 'number' && typeof x !== 'bigint') throw new BuiltinError('product: operand 1 must be one of {array[number], set[number]}', 'eval_type_error');
      acc = mul(acc, x);
    }
    return acc;
  });
  def(t, 'max', 1, ([v]) => {
    const xs = members('max', v!);
    if (xs.length === 0) return undefined;
    return xs.reduce((a, b) => (compare(a, b) >= 0 ? a : b));
  });
  def(t, 'min', 1, ([v]) => {
    const xs = members('min', v!);
    if (xs.length === 0) return undefined;
    return xs.reduce((a, b) => (compare(a, b) <= 0 ? a : b));
  });
  def(t, 'sort', 1, ([v]) => {
    if (v instanceof RSet) return v.values().slice();
    if (!Array.isArray(v)) throw typeErr('sort', 1, 'one of {array, set}', v!);
    return v.slice().sort(compare);
  });
  def(t, 'all', 1, ([v]) => members('all', v!).every((x) => x === true));
  def(t, 'any', 1, ([v]) => members('any', v!).some((x) => x === true));
}
