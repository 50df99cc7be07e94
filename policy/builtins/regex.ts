// Regular expressions with RE2 semantics (Go's regexp, as OPA has) in linear time: patterns come
// from policies and inputs we do not trust, so JavaScript's backtracking RegExp is never used on
// them. Compiled patterns are cached (bounded) per process.
import { RE2JS } from 're2js';
import { BuiltinError } from '../errors.js';
import { RSet, type Value } from '../values.js';
import { checkSize, checkString, def, int, str, typeErr, type BuiltinTable } from './types.js';

const MAX_PATTERN = 64 * 1024;
const CACHE_MAX = 512;
/** Compiled patterns, or why a pattern does not compile. */
const cache = new Map<string, RE2JS | string>();

export function compileRegex(fn: string, pattern: string): RE2JS {
  let r = cache.get(pattern);
  if (r === undefined) {
    if (pattern.length > MAX_PATTERN) r = `pattern of ${pattern.length} characters exceeds the limit of ${MAX_PATTERN}`;
    else {
      try {
        r = RE2JS.compile(pattern);
      } catch (e) {
        r = (e as Error).message;
      }
    }
    if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
    cache.set(pattern, r);
  }
  if (typeof r === 'string') throw new BuiltinError(`${fn}: ${r}`);
  return r;
}

function isValid(pattern: string): boolean {
  try {
    compileRegex('regex.is_valid', pattern);
    return true;
  } catch {
    return false;
  }
}

/** Go's Regexp.Split(s, -1). */
function goSplit(re: RE2JS, s: string): string[] {
  if (s.length === 0) return re.pattern().length > 0 ? [''] : [];
  const matches = re.re2().findAllIndex(s, -1) as number[][] | null;
  const out: string[] = [];
  let beg = 0;
  let end = 0;
  for (const m of matches ?? []) {
    end = m[0]!;
    if (m[1] !== 0) out.push(s.slice(beg, end));
    beg = m[1]!;
  }
  if (end !== s.length) out.push(s.slice(beg));
  return out;
}

/** Go's Regexp.ReplaceAllString: $1, ${1}, $name, ${name}, $$ in the replacement. */
function goReplaceAll(re: RE2JS, s: string, repl: string): string {
  const all = re.re2().findAllSubmatchIndex(s, -1) as number[][] | null;
  if (!all || all.length === 0) return s;
  const names = re.namedGroups();
  let out = '';
  let last = 0;
  for (const m of all) {
    out += s.slice(last, m[0]!);
    out += expand(repl, s, m, names);
    last = m[1]!;
  }
  return out + s.slice(last);
}

function expand(tpl: string, s: string, m: number[], names: Record<string, number>): string {
  let out = '';
  for (let i = 0; i < tpl.length; i++) {
    const c = tpl[i];
    if (c !== '$' || i + 1 >= tpl.length) {
      out += c;
      continue;
    }
    if (tpl[i + 1] === '$') {
      out += '$';
      i++;
      continue;
    }
    let name: string;
    let j: number;
    if (tpl[i + 1] === '{') {
      const close = tpl.indexOf('}', i + 2);
      if (close < 0) {
        out += c;
        continue;
      }
      name = tpl.slice(i + 2, close);
      j = close + 1;
    } else {
      const mm = /^[A-Za-z0-9_]+/.exec(tpl.slice(i + 1));
      if (!mm) {
        out += c;
        continue;
      }
      name = mm[0];
      j = i + 1 + name.length;
    }
    const g = /^\d+$/.test(name) ? Number(name) : names[name];
    if (g !== undefined && 2 * g + 1 < m.length && m[2 * g]! >= 0) out += s.slice(m[2 * g]!, m[2 * g + 1]!);
    i = j - 1;
  }
  return out;
}

export function register(t: BuiltinTable): void {
  // RE2's match without captures: a third of Matcher.test's cost
  const match = (fn: string) => (a: Value[]) => compileRegex(fn, str(fn, a, 0)).re2().match(str(fn, a, 1)) as boolean;
  def(t, 'regex.match', 2, match('regex.match'));
  def(t, 're_match', 2, match('re_match'));
  def(t, 'regex.is_valid', 1, (a) => typeof a[0] === 'string' && isValid(a[0]));
  def(t, 'regex.split', 2, (a) => goSplit(compileRegex('regex.split', str('regex.split', a, 0)), str('regex.split', a, 1)));
  def(t, 'regex.find_n', 3, (a, b) => {
    const re = compileRegex('regex.find_n', str('regex.find_n', a, 0));
    const n = int('regex.find_n', a, 2);
    const out = (re.re2().findAll(str('regex.find_n', a, 1), n) as string[] | null) ?? [];
    checkSize(out.length, b, 'regex.find_n');
    return out;
  });
  def(t, 'regex.find_all_string_submatch_n', 3, (a, b) => {
    const fn = 'regex.find_all_string_submatch_n';
    const re = compileRegex(fn, str(fn, a, 0));
    const n = int(fn, a, 2);
    const all = (re.re2().findAllSubmatch(str(fn, a, 1), n) as (string | null)[][] | null) ?? [];
    checkSize(all.length, b, fn);
    return all.map((m) => m.map((g) => g ?? ''));
  });
  def(t, 'regex.replace', 3, (a, b) => {
    const re = compileRegex('regex.replace', str('regex.replace', a, 1));
    return checkString(goReplaceAll(re, str('regex.replace', a, 0), str('regex.replace', a, 2)), b, 'regex.replace');
  });
  def(t, 'regex.template_match', 4, (a) => {
    const fn = 'regex.template_match';
    const tpl = str(fn, a, 0);
    const value = str(fn, a, 1);
    const ds = str(fn, a, 2);
    const de = str(fn, a, 3);
    if (ds.length !== 1 || de.length !== 1) throw new BuiltinError(`${fn}: delimiters must be single characters`);
    // Text outside delimiters is literal; inside is a regular expression (gorilla/mux templates).
    let pattern = '^';
    let i = 0;
    while (i < tpl.length) {
      const open = tpl.indexOf(ds, i);
      if (open < 0) {
        pattern += RE2JS.quote(tpl.slice(i));
        break;
      }
      pattern += RE2JS.quote(tpl.slice(i, open));
      let depth = 0;
      let j = open;
      for (; j < tpl.length; j++) {
        if (tpl[j] === ds) depth++;
        else if (tpl[j] === de && --depth === 0) break;
      }
      if (j >= tpl.length) throw new BuiltinError(`${fn}: unbalanced braces in template ${JSON.stringify(tpl)}`);
      pattern += '(' + tpl.slice(open + 1, j) + ')';
      i = j + 1;
    }
    pattern += '$';
    return compileRegex(fn, pattern).re2().match(value) as boolean;
  });
  def(t, 'glob.quote_meta', 1, (a) => str('glob.quote_meta', a, 0).replace(/[*?\\[\]{}]/g, (c) => '\\' + c));
  def(t, 'glob.match', 3, (a) => {
    const fn = 'glob.match';
    const pattern = str(fn, a, 0);
    const d = a[1]!;
    let delims: string[];
    if (d === null) delims = [];
    else if (Array.isArray(d) || d instanceof RSet) {
      const xs = Array.isArray(d) ? d : d.values();
      delims = xs.map((x) => {
        if (typeof x !== 'string') throw typeErr(fn, 2, 'array[string]', d);
        return x;
      });
      if (delims.length === 0) delims = ['.'];
    } else throw typeErr(fn, 2, 'array[string]', d);
    return compileRegex(fn, globToRegex(pattern, delims)).re2().match(str(fn, a, 2)) as boolean;
  });
}

/** gobwas/glob (OPA's glob.match): * within a segment, ** across, ?, [..], [!..], {a,b}, \x. */
export function globToRegex(glob: string, delims: string[]): string {
  const notDelim = delims.length === 0 ? '.' : '[^' + delims.map((d) => RE2JS.quote(d).replace(/\]/g, '\\]')).join('') + ']';
  let out = '^';
  let depth = 0;
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    switch (c) {
      case '\\':
        if (i + 1 < glob.length) out += RE2JS.quote(glob[++i]!);
        else throw new BuiltinError('glob.match: unexpected end of pattern after \\');
        break;
      case '*':
        if (glob[i + 1] === '*') {
          out += '.*';
          i++;
        } else out += notDelim + '*';
        break;
      case '?':
        out += notDelim;
        break;
      case '[': {
        const close = glob.indexOf(']', i + 1);
        if (close < 0) throw new BuiltinError('glob.match: unclosed character class');
        let body = glob.slice(i + 1, close);
        let neg = '';
        if (body.startsWith('!')) {
          neg = '^';
          body = body.slice(1);
        }
        out += '[' + neg + body.replace(/\\/g, '\\\\').replace(/\[/g, '\\[') + ']';
        i = close;
        break;
      }
      case '{':
        depth++;
        out += '(?:';
        break;
      case '}':
        if (depth === 0) throw new BuiltinError('glob.match: unbalanced }');
        depth--;
        out += ')';
        break;
      case ',':
        out += depth > 0 ? '|' : ',';
        break;
      default:
        out += RE2JS.quote(c);
    }
  }
  if (depth !== 0) throw new BuiltinError('glob.match: unbalanced {');
  return out + '$';
}
