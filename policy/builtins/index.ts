// The builtin table: every family registered once, shared by all compiled policies.
import { register as aggregates } from './aggregates.js';
import { register as bits } from './bits.js';
import { register as collections } from './collections.js';
import { register as compare } from './compare.js';
import { register as encoding } from './encoding.js';
import { register as misc } from './misc.js';
import { register as numbers } from './numbers.js';
import { register as regex } from './regex.js';
import { register as strings } from './strings.js';
import { register as time } from './time.js';
import { register as typecheck } from './typecheck.js';
import { register as units } from './units.js';
import type { BuiltinTable } from './types.js';

export function builtinTable(): BuiltinTable {
  const t: BuiltinTable = new Map();
  for (const r of [compare, numbers, aggregates, strings, regex, typecheck, collections, encoding, bits, time, units, misc]) r(t);
  t.set('print', { name: 'print', arity: 0, variadic: true, fn: () => true });
  // `=` and `:=` are compiled as unification and assignment; the names exist so they resolve.
  for (const name of ['eq', 'assign']) t.set(name, { name, arity: 2, fn: () => undefined });
  return t;
}

/** OPA's builtins that v1 removed (still callable from v0 modules). */
export const DEPRECATED = new Set(['any', 'all', 're_match', 'set_diff', 'cast_array', 'cast_set', 'cast_string', 'cast_boolean', 'cast_null', 'cast_object', 'net.cidr_overlap']);
