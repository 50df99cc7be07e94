// A JSON reader that builds Rego values directly: integers stay exact (JSON.parse would round
// anything beyond 2^53), nesting depth and text size are bounded (input and data come from the
// host, which is not trusted), and a syntax error names line and column.
import { PolicyError } from './errors.js';
import { RObject, type Value } from './values.js';

export interface JsonLimits {
  /** Deepest nesting of arrays/objects accepted. */
  maxDepth?: number;
  /** Longest text accepted, in UTF-16 units. */
  maxLength?: number;
}

export const DEFAULT_JSON_LIMITS: Required<JsonLimits> = { maxDepth: 512, maxLength: 64 * 1024 * 1024 };

/** Parse JSON text (RFC 8259) into a value. `what` names the document in errors ("input", "data.json"). */
export function parseJSON(text: string, what = 'json', limits: JsonLimits = {}): Value {
  const maxLength = limits.maxLength ?? DEFAULT_JSON_LIMITS.maxLength;
  if (text.length > maxLength) throw new PolicyError('limit_error', `${what}: ${text.length} characters exceed the limit of ${maxLength}`);
  return readJSON(text, 0, what, limits.maxDepth ?? DEFAULT_JSON_LIMITS.maxDepth, true).value;
}

/**
 * A JSON value at `start` in a longer text (a constant in a policy), or null where the text there is
 * not plain JSON. The parser uses it to take big data literals in one step.
 */
export function scanJSON(text: string, start: number, maxDepth: number): { value: Value; end: number } | null {
  try {
    return readJSON(text, start, 'json', maxDepth, false);
  } catch {
    return null;
  }
}

/**
 * A scan's "not plain JSON here": thrown bare, because a parser tries a scan at every composite
 * literal and most are not JSON (a position and an Error each time made compiles quadratic).
 */
const NOT_JSON = Symbol('not JSON');

function readJSON(text: string, start: number, what: string, maxDepth: number, whole: boolean): { value: Value; end: number } {
  let i = start;
  const n = text.length;

  const fail = (msg: string, at = i): never => {
    if (!whole) throw NOT_JSON;
    let row = 1;
    let col = 1;
    for (let j = 0; j < at && j < n; j++) {
      if (text.charCodeAt(j) === 10) {
        row++;
        col = 1;
      } else col++;
    }
    throw new PolicyError('input_error', `${what}: ${msg} at line ${row}, column ${col}`);
  };

  const ws = () => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 10 || c === 13 || c === 9) i++;
      else break;
    }
  };

  const str = (): string => {
    // text[i] === '"'
    const start = ++i;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 34) return text.slice(start, i++);
      if (c === 92) break;
      if (c < 0x20) fail('control character in string');
      i++;
    }
    let out = text.slice(start, i);
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 34) {
        i++;
        return out;
      }
      if (c < 0x20) fail('control character in string');
      if (c !== 92) {
        const s = i;
        while (i < n) {
          const d = text.charCodeAt(i);
          if (d === 34 || d === 92 || d < 0x20) break;
          i++;
        }
        out += text.slice(s, i);
        continue;
      }
      const e = text[i + 1];
      i += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          const h = text.slice(i, i + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('bad \\u escape', i - 2);
          out += String.fromCharCode(parseInt(h, 16));
          i += 4;
          break;
        }
        default:
          fail('bad escape', i - 2);
      }
    }
    return fail('unterminated string');
  };

  const num = (): number | bigint => {
    const start = i;
    if (text[i] === '-') i++;
    if (text[i] === '0') i++;
    else if (text[i]! >= '1' && text[i]! <= '9') while (i < n && text[i]! >= '0' && text[i]! <= '9') i++;
    else fail('bad number');
    let integer = true;
    if (text[i] === '.') {
      integer = false;
      i++;
      if (!(text[i]! >= '0' && text[i]! <= '9')) fail('bad number');
      while (i < n && text[i]! >= '0' && text[i]! <= '9') i++;
    }
    if (text[i] === 'e' || text[i] === 'E') {
      integer = false;
      i++;
      if (text[i] === '+' || text[i] === '-') i++;
      if (!(text[i]! >= '0' && text[i]! <= '9')) fail('bad number');
      while (i < n && text[i]! >= '0' && text[i]! <= '9') i++;
    }
    return numberFromText(text.slice(start, i), integer);
  };

  const value = (depth: number): Value => {
    ws();
    if (i >= n) fail('unexpected end of text');
    const c = text.charCodeAt(i);
    switch (c) {
      case 123: {
        // {
        if (depth >= maxDepth) fail(`nesting deeper than ${maxDepth}`);
        i++;
        const o = new RObject();
        ws();
        if (text.charCodeAt(i) === 125) {
          i++;
          return o;
        }
        for (;;) {
          ws();
          if (text.charCodeAt(i) !== 34) fail('expected a string key');
          const k = str();
          ws();
          if (text.charCodeAt(i) !== 58) fail("expected ':'");
          i++;
          o.set(k, value(depth + 1));
          ws();
          const d = text.charCodeAt(i);
          if (d === 44) {
            i++;
            continue;
          }
          if (d === 125) {
            i++;
            return o;
          }
          fail("expected ',' or '}'");
        }
      }
      case 91: {
        // [
        if (depth >= maxDepth) fail(`nesting deeper than ${maxDepth}`);
        i++;
        const a: Value[] = [];
        ws();
        if (text.charCodeAt(i) === 93) {
          i++;
          return a;
        }
        for (;;) {
          a.push(value(depth + 1));
          ws();
          const d = text.charCodeAt(i);
          if (d === 44) {
            i++;
            continue;
          }
          if (d === 93) {
            i++;
            return a;
          }
          fail("expected ',' or ']'");
        }
      }
      case 34:
        return str();
      case 116:
        if (text.startsWith('true', i)) {
          i += 4;
          return true;
        }
        break;
      case 102:
        if (text.startsWith('false', i)) {
          i += 5;
          return false;
        }
        break;
      case 110:
        if (text.startsWith('null', i)) {
          i += 4;
          return null;
        }
        break;
      default:
        if (c === 45 || (c >= 48 && c <= 57)) return num();
    }
    return fail('unexpected character');
  };

  const v = value(0);
  if (!whole) return { value: v, end: i };
  ws();
  if (i < n) fail('unexpected text after the value');
  return { value: v, end: i };
}

/** A JSON/Rego number literal's value: exact for integers, a double otherwise. */
export function numberFromText(s: string, integer: boolean): number | bigint {
  if (integer) {
    if (s.length < 16) return Number(s);
    const b = BigInt(s);
    return b >= -9007199254740991n && b <= 9007199254740991n ? Number(b) : b;
  }
  const d = Number(s);
  if (!Number.isFinite(d)) throw new PolicyError('input_error', `number out of range: ${s.length > 40 ? s.slice(0, 40) + '…' : s}`);
  // An exponent form of a big integer (1e30) stays exact when it is one.
  if (Number.isInteger(d) && !Number.isSafeInteger(d)) {
    const m = /^(-?)(\d+)(?:\.(\d*))?[eE]([+-]?\d+)$/.exec(s);
    if (m) {
      const frac = m[3] ?? '';
      const exp = Number(m[4]) - frac.length;
      if (exp >= 0 && exp <= 400) return BigInt(m[1]! + m[2]! + frac) * 10n ** BigInt(exp);
    }
  }
  return d;
}
