// String builtins. Positions and lengths count code points (OPA counts runes), not UTF-16 units.
import { BuiltinError } from '../errors.js';
import { RSet, termText, type Value } from '../values.js';
import { arr, checkString, collection, def, int, num, obj, str, typeErr, type BuiltinTable } from './types.js';

const SURROGATE = /[\uD800-\uDFFF]/;

/** The string as code points when it has astral characters, else null (UTF-16 indexing is exact). */
function runes(s: string): string[] | null {
  return SURROGATE.test(s) ? Array.from(s) : null;
}

function runeIndexOf(s: string, sub: string, from = 0): number {
  const rs = runes(s);
  if (!rs) return s.indexOf(sub, from);
  const u = s.indexOf(sub, unitOffset(rs, from));
  return u < 0 ? -1 : Array.from(s.slice(0, u)).length;
}

function unitOffset(rs: string[], runeIdx: number): number {
  let n = 0;
  for (let i = 0; i < runeIdx && i < rs.length; i++) n += rs[i]!.length;
  return n;
}

// Go's unicode.IsSpace (TrimSpace) — not JS's trim, which also strips U+FEFF.
const SPACE_L = /^[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+/;
const SPACE_R = /[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+$/;

function trimLeft(s: string, cut: string): string {
  if (!SURROGATE.test(cut) && !SURROGATE.test(s)) {
    let i = 0;
    while (i < s.length && cut.includes(s[i]!)) i++;
    return i === 0 ? s : s.slice(i);
  }
  const set = new Set(Array.from(cut));
  const rs = Array.from(s);
  let i = 0;
  while (i < rs.length && set.has(rs[i]!)) i++;
  return rs.slice(i).join('');
}

function trimRight(s: string, cut: string): string {
  if (!SURROGATE.test(cut) && !SURROGATE.test(s)) {
    let j = s.length;
    while (j > 0 && cut.includes(s[j - 1]!)) j--;
    return j === s.length ? s : s.slice(0, j);
  }
  const set = new Set(Array.from(cut));
  const rs = Array.from(s);
  let j = rs.length;
  while (j > 0 && set.has(rs[j - 1]!)) j--;
  return rs.slice(0, j).join('');
}

function stringsOf(fn: string, v: Value, pos: number): string[] {
  if (typeof v === 'string') return [v];
  const xs = Array.isArray(v) ? v : v instanceof RSet ? v.values() : null;
  if (!xs) throw typeErr(fn, pos, 'one of {string, array[string], set[string]}', v);
  return xs.map((x) => {
    if (typeof x !== 'string') throw typeErr(fn, pos, 'one of {string, array[string], set[string]}', v);
    return x;
  });
}

/** Go's strings.Replace(s, old, new, n) with n < 0 for all. */
function goReplace(s: string, old: string, rep: string, n = -1): string {
  if (old === '') {
    const rs = Array.from(s);
    const out: string[] = [];
    let done = 0;
    for (let i = 0; i <= rs.length; i++) {
      if (n < 0 || done < n) {
        out.push(rep);
        done++;
      }
      if (i < rs.length) out.push(rs[i]!);
    }
    return out.join('');
  }
  // indexOf and concatenation (ropes) beat split/join by 3x on the short strings policies use
  let j = s.indexOf(old);
  if (j < 0) return s;
  let out = '';
  let i = 0;
  for (let done = 0; j >= 0 && (n < 0 || done < n); done++) {
    out += s.slice(i, j) + rep;
    i = j + old.length;
    j = s.indexOf(old, i);
  }
  return out + s.slice(i);
}

export function register(t: BuiltinTable): void {
  def(t, 'concat', 2, (args, b) => {
    const sep = str('concat', args, 0);
    const xs = collection('concat', args, 1);
    for (const x of xs) if (typeof x !== 'string') throw typeErr('concat', 2, 'one of {array[string], set[string]}', args[1]!);
    return checkString((xs as string[]).join(sep), b, 'concat');
  });
  def(t, 'contains', 2, (a) => str('contains', a, 0).includes(str('contains', a, 1)));
  def(t, 'startswith', 2, (a) => str('startswith', a, 0).startsWith(str('startswith', a, 1)));
  def(t, 'endswith', 2, (a) => str('endswith', a, 0).endsWith(str('endswith', a, 1)));
  def(t, 'lower', 1, (a) => str('lower', a, 0).toLowerCase());
  def(t, 'upper', 1, (a) => str('upper', a, 0).toUpperCase());
  def(t, 'indexof', 2, (a) => runeIndexOf(str('indexof', a, 0), str('indexof', a, 1)));
  def(t, 'indexof_n', 2, (a) => {
    const s = str('indexof_n', a, 0);
    const sub = str('indexof_n', a, 1);
    const out: Value[] = [];
    if (sub === '') return out;
    const rs = runes(s);
    for (let i = s.indexOf(sub); i >= 0; i = s.indexOf(sub, i + 1)) out.push(rs ? Array.from(s.slice(0, i)).length : i);
    return out;
  });
  def(t, 'replace', 3, (a, b) => checkString(goReplace(str('replace', a, 0), str('replace', a, 1), str('replace', a, 2)), b, 'replace'));
  def(t, 'strings.replace_n', 2, (a, b) => {
    const pats = obj('strings.replace_n', a, 0);
    const s = str('strings.replace_n', a, 1);
    const pairs: [string, string][] = [];
    for (const [k, v] of pats.entries()) {
      if (typeof k !== 'string') throw typeErr('strings.replace_n', 1, 'object[string: string]', pats);
      if (typeof v !== 'string') throw typeErr('strings.replace_n', 1, 'object[string: string]', pats);
      pairs.push([k, v]);
    }
    // Go's strings.NewReplacer: at each position the first pattern (in argument order) that matches.
    let out = '';
    let i = 0;
    outer: while (i <= s.length) {
      for (const [k, v] of pairs) {
        if (k === '') continue;
        if (s.startsWith(k, i)) {
          out += v;
          i += k.length;
          continue outer;
        }
      }
      if (i < s.length) out += s[i];
      i++;
    }
    return checkString(out, b, 'strings.replace_n');
  });
  def(t, 'split', 2, (a) => {
    const s = str('split', a, 0);
    const d = str('split', a, 1);
    return d === '' ? Array.from(s) : s.split(d);
  });
  def(t, 'substring', 3, (a) => {
    const s = str('substring', a, 0);
    const start = int('substring', a, 1);
    const len = int('substring', a, 2);
    if (start < 0) throw new BuiltinError('substring: negative offset');
    const rs = runes(s);
    const n = rs ? rs.length : s.length;
    if (start >= n) return '';
    const end = len < 0 || start + len > n ? n : start + len;
    return rs ? rs.slice(start, end).join('') : s.slice(start, end);
  });
  def(t, 'trim', 2, (a) => trimRight(trimLeft(str('trim', a, 0), str('trim', a, 1)), str('trim', a, 1)));
  def(t, 'trim_left', 2, (a) => trimLeft(str('trim_left', a, 0), str('trim_left', a, 1)));
  def(t, 'trim_right', 2, (a) => trimRight(str('trim_right', a, 0), str('trim_right', a, 1)));
  def(t, 'trim_prefix', 2, (a) => {
    const s = str('trim_prefix', a, 0);
    const p = str('trim_prefix', a, 1);
    return s.startsWith(p) ? s.slice(p.length) : s;
  });
  def(t, 'trim_suffix', 2, (a) => {
    const s = str('trim_suffix', a, 0);
    const p = str('trim_suffix', a, 1);
    return p !== '' && s.endsWith(p) ? s.slice(0, s.length - p.length) : s;
  });
  def(t, 'trim_space', 1, (a) => str('trim_space', a, 0).replace(SPACE_L, '').replace(SPACE_R, ''));
  def(t, 'strings.reverse', 1, (a) => Array.from(str('strings.reverse', a, 0)).reverse().join(''));
  def(t, 'strings.count', 2, (a) => {
    const s = str('strings.count', a, 0);
    const sub = str('strings.count', a, 1);
    if (sub === '') return Array.from(s).length + 1;
    return s.split(sub).length - 1;
  });
  def(t, 'strings.any_prefix_match', 2, (a) => {
    const xs = stringsOf('strings.any_prefix_match', a[0]!, 1);
    const ps = stringsOf('strings.any_prefix_match', a[1]!, 2);
    return xs.some((x) => ps.some((p) => x.startsWith(p)));
  });
  def(t, 'strings.any_suffix_match', 2, (a) => {
    const xs = stringsOf('strings.any_suffix_match', a[0]!, 1);
    const ps = stringsOf('strings.any_suffix_match', a[1]!, 2);
    return xs.some((x) => ps.some((p) => x.endsWith(p)));
  });
  def(t, 'format_int', 2, (a) => {
    const n = num('format_int', a, 0);
    const base = int('format_int', a, 1);
    if (![2, 8, 10, 16].includes(base)) throw new BuiltinError('format_int: operand 2 must be one of {2, 8, 10, 16}');
    const i = typeof n === 'bigint' ? n : BigInt(Math.trunc(n));
    return i.toString(base);
  });
  def(t, 'sprintf', 2, (a, b) => checkString(sprintf(str('sprintf', a, 0), arr('sprintf', a, 1)), b, 'sprintf'));
}

/** Go's fmt verbs as OPA's sprintf exposes them: %v %s %d %f %e %g %x %X %o %b %q %t %T %%. */
export function sprintf(format: string, args: Value[]): string {
  let out = '';
  let ai = 0;
  for (let i = 0; i < format.length; i++) {
    const c = format[i]!;
    if (c !== '%') {
      out += c;
      continue;
    }
    i++;
    let flags = '';
    while (i < format.length && '+-# 0'.includes(format[i]!)) flags += format[i++];
    let width = '';
    while (i < format.length && format[i]! >= '0' && format[i]! <= '9') width += format[i++];
    let prec: number | undefined;
    if (format[i] === '.') {
      i++;
      let p = '';
      while (i < format.length && format[i]! >= '0' && format[i]! <= '9') p += format[i++];
      prec = p === '' ? 0 : Number(p);
    }
    const verb = format[i];
    if (verb === undefined) {
      out += '%!(NOVERB)';
      break;
    }
    if (verb === '%') {
      out += '%';
      continue;
    }
    if (ai >= args.length) {
      out += `%!${verb}(MISSING)`;
      continue;
    }
    const v = args[ai++]!;
    out += pad(formatVerb(verb, v, flags, prec), width ? Number(width) : 0, flags);
  }
  if (ai < args.length) {
    out += '%!(EXTRA ' + args.slice(ai).map((v) => `${goType(v)}=${plain(v)}`).join(', ') + ')';
  }
  return out;
}

function goType(v: Value): string {
  if (typeof v === 'string') return 'string';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v))) return typeof v === 'bigint' ? '*big.Int' : 'int';
  if (typeof v === 'number') return 'float64';
  return 'ast.Value';
}

function plain(v: Value): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : goFloatG(v);
  if (typeof v === 'bigint') return v.toString();
  return termText(v);
}

function pad(s: string, width: number, flags: string): string {
  if (s.length >= width) return s;
  if (flags.includes('-')) return s + ' '.repeat(width - s.length);
  if (flags.includes('0') && /^[+-]?[0-9.]/.test(s)) {
    const sign = /^[+-]/.test(s) ? s[0]! : '';
    return sign + '0'.repeat(width - s.length) + s.slice(sign.length);
  }
  return ' '.repeat(width - s.length) + s;
}

function formatVerb(verb: string, v: Value, flags: string, prec: number | undefined): string {
  const isNum = typeof v === 'number' || typeof v === 'bigint';
  const isInt = typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v));
  const sign = (s: string) => (flags.includes('+') && !s.startsWith('-') ? '+' + s : flags.includes(' ') && !s.startsWith('-') ? ' ' + s : s);
  switch (verb) {
    case 'v':
      if (typeof v === 'string') return v;
      if (isNum) return isInt ? String(v) : goFloatG(v as number);
      return termText(v);
    case 's':
      if (typeof v === 'string') return prec !== undefined ? Array.from(v).slice(0, prec).join('') : v;
      // a big integer is a *big.Int in OPA, which prints itself; small ones are Go ints
      if (typeof v === 'bigint') return v.toString();
      if (isNum) return isInt ? `%!s(${goType(v)}=${String(v)})` : `%!s(float64=${goFloatG(v as number)})`;
      return termText(v);
    case 'd':
      if (isInt) return sign(String(v));
      return `%!d(${goType(v)}=${plain(v)})`;
    case 'f':
    case 'F':
      if (isNum) return sign(Number(v).toFixed(prec ?? 6));
      return `%!f(${goType(v)}=${plain(v)})`;
    case 'e':
    case 'E': {
      if (!isNum) return `%!e(${goType(v)}=${plain(v)})`;
      const s = goExp(Number(v).toExponential(prec ?? 6));
      return sign(verb === 'E' ? s.toUpperCase() : s);
    }
    case 'g':
    case 'G':
      if (!isNum) return `%!g(${goType(v)}=${plain(v)})`;
      if (isInt && prec === undefined) return sign(String(v));
      return sign(prec === undefined ? goFloatG(Number(v)) : goExp(Number(v).toPrecision(prec || 1)));
    case 'x':
    case 'X': {
      let s: string;
      if (isInt) s = (typeof v === 'bigint' ? v : BigInt(v as number)).toString(16);
      else if (typeof v === 'string') s = Buffer.from(v, 'utf8').toString('hex');
      else return `%!${verb}(${goType(v)}=${plain(v)})`;
      if (s.startsWith('-')) s = '-' + (flags.includes('#') ? '0x' : '') + s.slice(1);
      else if (flags.includes('#')) s = '0x' + s;
      return verb === 'X' ? s.toUpperCase() : s;
    }
    case 'o':
      if (isInt) return (flags.includes('#') ? '0' : '') + (typeof v === 'bigint' ? v : BigInt(v as number)).toString(8);
      return `%!o(${goType(v)}=${plain(v)})`;
    case 'b':
      if (isInt) return (typeof v === 'bigint' ? v : BigInt(v as number)).toString(2);
      return `%!b(${goType(v)}=${plain(v)})`;
    case 'q':
      if (typeof v === 'string') return JSON.stringify(v);
      return `%!q(${goType(v)}=${plain(v)})`;
    case 't':
      if (typeof v === 'boolean') return String(v);
      return `%!t(${goType(v)}=${plain(v)})`;
    case 'T':
      return goType(v);
    default:
      return `%!${verb}(${goType(v)}=${plain(v)})`;
  }
}

/** Go's exponent form has at least two exponent digits: 1e+06, not 1e+6. */
function goExp(s: string): string {
  return s.replace(/e([+-])(\d)$/, 'e$10$2');
}

/** Go's %v for a float64 (strconv 'g', shortest): exponent form when the exponent is < -4 or >= 6. */
export function goFloatG(x: number): string {
  if (x === 0) return '0';
  if (!Number.isFinite(x)) return x > 0 ? '+Inf' : x < 0 ? '-Inf' : 'NaN';
  const exp = Math.floor(Math.log10(Math.abs(x)));
  if (exp < -4 || exp >= 6) return goExp(x.toExponential());
  return String(x);
}
