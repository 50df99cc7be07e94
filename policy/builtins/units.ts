// units.parse (SI and binary suffixes, may be fractional) and units.parse_bytes (whole bytes).
import { BuiltinError } from '../errors.js';
import { normInt } from '../values.js';
import { def, str, type BuiltinTable } from './types.js';

const SI: Record<string, bigint> = { '': 1n, K: 10n ** 3n, M: 10n ** 6n, G: 10n ** 9n, T: 10n ** 12n, P: 10n ** 15n, E: 10n ** 18n };
const BIN: Record<string, bigint> = { ki: 1n << 10n, mi: 1n << 20n, gi: 1n << 30n, ti: 1n << 40n, pi: 1n << 50n, ei: 1n << 60n };
const DEC: Record<string, bigint> = { '': 1n, k: 10n ** 3n, m: 10n ** 6n, g: 10n ** 9n, t: 10n ** 12n, p: 10n ** 15n, e: 10n ** 18n };

function split(fn: string, s: string): [string, string] {
  const t = s.replace(/"/g, '').trim();
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)$/.exec(t);
  if (!m) throw new BuiltinError(`${fn}: could not parse amount to a number`);
  return [m[1]!, m[2]!];
}

/** amount × factor, exact when both are integers. */
function scale(amount: string, factor: bigint): number | bigint {
  if (/^[+-]?\d+$/.test(amount)) return normInt(BigInt(amount) * factor);
  const r = Number(amount) * Number(factor);
  return Number.isInteger(r) && !Number.isSafeInteger(r) ? normInt(BigInt(r)) : r;
}

export function register(t: BuiltinTable): void {
  def(t, 'units.parse', 1, (a) => {
    const [amount, unit] = split('units.parse', str('units.parse', a, 0));
    const bin = BIN[unit.toLowerCase()];
    if (unit.length === 2 && bin !== undefined) return scale(amount, bin);
    // only m is case-sensitive: m is milli, M is mega; k, g, t, p, e may be either case
    if (unit === 'm') return Number(amount) / 1000;
    const f = SI[unit.toUpperCase()];
    if (f === undefined) throw new BuiltinError(`units.parse: unit ${JSON.stringify(unit)} not recognized`);
    return scale(amount, f);
  });
  def(t, 'units.parse_bytes', 1, (a) => {
    const [amount, unit0] = split('units.parse_bytes', str('units.parse_bytes', a, 0));
    const unit = unit0.toLowerCase();
    let factor: bigint | undefined;
    if (unit === '' || unit === 'b') factor = 1n;
    else if (/^[kmgtpe]ib?$/.test(unit)) factor = BIN[unit.slice(0, 2)];
    else if (/^[kmgtpe]b?$/.test(unit)) factor = DEC[unit[0]!];
    if (factor === undefined) throw new BuiltinError(`units.parse_bytes: byte unit ${JSON.stringify(unit0)} not recognized`);
    const v = scale(amount, factor);
    return typeof v === 'number' && !Number.isInteger(v) ? Math.trunc(v) : v;
  });
}
