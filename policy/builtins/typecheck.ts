// is_*, type_name, to_number and v0's cast_* conversions.
import { BuiltinError } from '../errors.js';
import { numberFromText } from '../json.js';
import { RObject, RSet, typeName, type Value } from '../values.js';
import { collection, def, typeErr, type BuiltinTable } from './types.js';

const NUMBER_TEXT = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export function toNumber(fn: string, v: Value): number | bigint {
  switch (typeof v) {
    case 'number':
    case 'bigint':
      return v;
    case 'boolean':
      return v ? 1 : 0;
    case 'string': {
      const s = v.trim() === v ? v : '';
      if (!NUMBER_TEXT.test(s)) throw new BuiltinError(`${fn}: invalid syntax: ${JSON.stringify(v)}`);
      const t = s.startsWith('+') ? s.slice(1) : s;
      return numberFromText(t, /^-?\d+$/.test(t));
    }
    default:
      if (v === null) return 0;
      throw typeErr(fn, 1, 'one of {boolean, null, number, string}', v);
  }
}

export function register(t: BuiltinTable): void {
  def(t, 'is_number', 1, ([v]) => typeof v === 'number' || typeof v === 'bigint');
  def(t, 'is_string', 1, ([v]) => typeof v === 'string');
  def(t, 'is_boolean', 1, ([v]) => typeof v === 'boolean');
  def(t, 'is_array', 1, ([v]) => Array.isArray(v));
  def(t, 'is_set', 1, ([v]) => v instanceof RSet);
  def(t, 'is_object', 1, ([v]) => v instanceof RObject);
  def(t, 'is_null', 1, ([v]) => v === null);
  def(t, 'type_name', 1, ([v]) => typeName(v!));
  def(t, 'to_number', 1, ([v]) => toNumber('to_number', v!));
  def(t, 'cast_array', 1, (a) => collection('cast_array', a, 0).slice());
  def(t, 'cast_set', 1, (a) => RSet.of(collection('cast_set', a, 0)));
  def(t, 'cast_string', 1, ([v]) => {
    if (typeof v !== 'string') throw typeErr('cast_string', 1, 'string', v!);
    return v;
  });
  def(t, 'cast_boolean', 1, ([v]) => {
    if (typeof v !== 'boolean') throw typeErr('cast_boolean', 1, 'boolean', v!);
    return v;
  });
  def(t, 'cast_null', 1, ([v]) => {
    if (v !== null) throw typeErr('cast_null', 1, 'null', v!);
    return null;
  });
  def(t, 'cast_object', 1, ([v]) => {
    if (!(v instanceof RObject)) throw typeErr('cast_object', 1, 'object', v!);
    return v;
  });
}
