// bits.*: on integers of any size (two's complement, as Go's big.Int does).
import { BuiltinError } from '../errors.js';
import { normInt, type Value } from '../values.js';
import { def, num, type BuiltinTable } from './types.js';

function bigOf(fn: string, a: Value[], i: number): bigint {
  const v = num(fn, a, i);
  if (typeof v === 'bigint') return v;
  if (!Number.isInteger(v)) throw new BuiltinError(`${fn}: operand ${i + 1} must be integer number but got floating-point number`, 'eval_type_error');
  return BigInt(v);
}

const MAX_SHIFT = 1n << 16n;

export function register(t: BuiltinTable): void {
  def(t, 'bits.or', 2, (a) => normInt(bigOf('bits.or', a, 0) | bigOf('bits.or', a, 1)));
  def(t, 'bits.and', 2, (a) => normInt(bigOf('bits.and', a, 0) & bigOf('bits.and', a, 1)));
  def(t, 'bits.xor', 2, (a) => normInt(bigOf('bits.xor', a, 0) ^ bigOf('bits.xor', a, 1)));
  def(t, 'bits.negate', 1, (a) => normInt(~bigOf('bits.negate', a, 0)));
  def(t, 'bits.lsh', 2, (a) => {
    const s = bigOf('bits.lsh', a, 1);
    if (s < 0n) throw new BuiltinError('bits.lsh: negative shift');
    if (s > MAX_SHIFT) throw new BuiltinError('bits.lsh: shift too large');
    return normInt(bigOf('bits.lsh', a, 0) << s);
  });
  def(t, 'bits.rsh', 2, (a) => {
    const s = bigOf('bits.rsh', a, 1);
    if (s < 0n) throw new BuiltinError('bits.rsh: negative shift');
    return normInt(bigOf('bits.rsh', a, 0) >> (s > MAX_SHIFT ? MAX_SHIFT : s));
  });
}
