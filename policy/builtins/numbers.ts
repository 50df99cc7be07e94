// Arithmetic. Integers are exact at any size (bigint past 2^53); anything with a fraction is an
// IEEE double. `-` on sets is set difference, as in Rego.
import { BuiltinError } from '../errors.js';
import { RSet, compareNumbers, normInt, type Value } from '../values.js';
import { checkSize, def, int, num, typeErr, type BuiltinTable } from './types.js';

type N = number | bigint;

function isInt(x: N): boolean {
  return typeof x === 'bigint' || Number.isInteger(x);
}

function big(x: N): bigint {
  return typeof x === 'bigint' ? x : BigInt(x);
}

function toFloat(x: N): number {
  return typeof x === 'bigint' ? Number(x) : x;
}

export function add(a: N, b: N): N {
  if (typeof a === 'number' && typeof b === 'number') {
    const r = a + b;
    if (Number.isSafeInteger(r) || !Number.isInteger(a) || !Number.isInteger(b)) return r;
    return normInt(BigInt(a) + BigInt(b));
  }
  if (isInt(a) && isInt(b)) return normInt(big(a) + big(b));
  return toFloat(a) + toFloat(b);
}

export function sub(a: N, b: N): N {
  if (typeof a === 'number' && typeof b === 'number') {
    const r = a - b;
    if (Number.isSafeInteger(r) || !Number.isInteger(a) || !Number.isInteger(b)) return r;
    return normInt(BigInt(a) - BigInt(b));
  }
  if (isInt(a) && isInt(b)) return normInt(big(a) - big(b));
  return toFloat(a) - toFloat(b);
}

export function mul(a: N, b: N): N {
  if (typeof a === 'number' && typeof b === 'number') {
    const r = a * b;
    if (Number.isSafeInteger(r) || !Number.isInteger(a) || !Number.isInteger(b)) return r;
    return normInt(BigInt(a) * BigInt(b));
  }
  if (isInt(a) && isInt(b)) return normInt(big(a) * big(b));
  return toFloat(a) * toFloat(b);
}

function div(a: N, b: N): N {
  if (compareNumbers(b, 0) === 0) throw new BuiltinError('div: divide by zero');
  if (isInt(a) && isInt(b)) {
    const x = big(a);
    const y = big(b);
    if (x % y === 0n) return normInt(x / y);
  }
  return toFloat(a) / toFloat(b);
}

function rem(a: N, b: N): N {
  if (!isInt(a) || !isInt(b)) throw new BuiltinError('rem: modulo on floating-point number');
  if (compareNumbers(b, 0) === 0) throw new BuiltinError('rem: modulo by zero');
  if (typeof a === 'number' && typeof b === 'number') return a % b === 0 ? 0 : a % b;
  return normInt(big(a) % big(b));
}

function checkFinite(fn: string, r: N): N {
  if (typeof r === 'number' && !Number.isFinite(r)) throw new BuiltinError(`${fn}: result out of range`);
  if (typeof r === 'bigint' && (r > 10n ** 4000n || r < -(10n ** 4000n))) throw new BuiltinError(`${fn}: result out of range`);
  return r;
}

function arith(fn: string, op: (a: N, b: N) => N) {
  return (args: Value[]) => checkFinite(fn, op(num(fn, args, 0), num(fn, args, 1)));
}

export function register(t: BuiltinTable): void {
  def(t, 'plus', 2, arith('plus', add));
  def(t, 'mul', 2, arith('mul', mul));
  def(t, 'div', 2, arith('div', div));
  def(t, 'rem', 2, arith('rem', rem));
  def(t, 'minus', 2, (args) => {
    const [a, b] = args;
    if (a instanceof RSet || b instanceof RSet) {
      if (!(a instanceof RSet)) throw typeErr('minus', 1, 'set', a!);
      if (!(b instanceof RSet)) throw typeErr('minus', 2, 'set', b!);
      const out = new RSet();
      for (const v of a.values()) if (!b.has(v)) out.add(v);
      return out;
    }
    if (typeof a !== 'number' && typeof a !== 'bigint') throw typeErr('minus', 1, 'one of {number, set}', a!);
    if (typeof b !== 'number' && typeof b !== 'bigint') throw typeErr('minus', 2, 'one of {number, set}', b!);
    return checkFinite('minus', sub(a, b));
  });
  def(t, 'abs', 1, (args) => {
    const a = num('abs', args, 0);
    return typeof a === 'bigint' ? normInt(a < 0n ? -a : a) : Math.abs(a);
  });
  const rounder = (fn: string, f: (x: number) => number) => (args: Value[]) => {
    const a = num(fn, args, 0);
    if (typeof a === 'bigint') return a;
    const r = f(a);
    return Number.isSafeInteger(r) ? r : normInt(BigInt(r));
  };
  // Go's math.Round: half away from zero
  def(t, 'round', 1, rounder('round', (x) => Math.sign(x) * Math.round(Math.abs(x))));
  def(t, 'ceil', 1, rounder('ceil', Math.ceil));
  def(t, 'floor', 1, rounder('floor', Math.floor));
  def(t, 'numbers.range', 2, (args, b) => {
    const x = int('numbers.range', args, 0);
    const y = int('numbers.range', args, 1);
    checkSize(Math.abs(y - x) + 1, b, 'numbers.range');
    const out: Value[] = [];
    if (x <= y) for (let i = x; i <= y; i++) out.push(i);
    else for (let i = x; i >= y; i--) out.push(i);
    return out;
  });
  def(t, 'numbers.range_step', 3, (args, b) => {
    const x = int('numbers.range_step', args, 0);
    const y = int('numbers.range_step', args, 1);
    const s = int('numbers.range_step', args, 2);
    if (s <= 0) throw new BuiltinError('numbers.range_step: step must be a positive number above zero');
    checkSize(Math.floor(Math.abs(y - x) / s) + 1, b, 'numbers.range_step');
    const out: Value[] = [];
    if (x <= y) for (let i = x; i <= y; i += s) out.push(i);
    else for (let i = x; i >= y; i -= s) out.push(i);
    return out;
  });
  def(t, 'rand.intn', 2, (args, b) => {
    const n = int('rand.intn', args, 1);
    const key = `rand.intn:${JSON.stringify(args[0])}:${n}`;
    const m = b.memo.get(key);
    if (m !== undefined) return m;
    const r = n === 0 ? 0 : Math.floor(Math.random() * Math.abs(n));
    b.memo.set(key, r);
    return r;
  });
}
