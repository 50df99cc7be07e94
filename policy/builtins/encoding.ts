// Encodings: base64 (strict, as Go's StdEncoding), base64url, hex, JSON, URL query, YAML.
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { BuiltinError, LimitError, PolicyError } from '../errors.js';
import { parseJSON } from '../json.js';
import { RObject, RSet, canonical, fromJS, normInt, toJS, toJSON, type Value } from '../values.js';
import { checkString, def, obj, str, typeErr, type BuiltinTable } from './types.js';

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const B64URL = /^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?$/;
const B64URL_RAW = /^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$/;

function b64valid(s: string): boolean {
  return B64.test(s.replace(/[\r\n]/g, ''));
}

function illegal(fn: string, s: string, re: RegExp): BuiltinError {
  // the first offset where the text stops being valid
  let n = 0;
  for (let i = 4; i <= s.length; i += 4) {
    if (re.test(s.slice(0, i))) n = i;
    else break;
  }
  return new BuiltinError(`${fn}: illegal base64 data at input byte ${n}`);
}

function utf8(buf: Buffer): string {
  return buf.toString('utf8');
}

export function register(t: BuiltinTable): void {
  def(t, 'base64.encode', 1, (a, b) => checkString(Buffer.from(str('base64.encode', a, 0), 'utf8').toString('base64'), b, 'base64.encode'));
  def(t, 'base64.decode', 1, (a) => {
    const s = str('base64.decode', a, 0).replace(/[\r\n]/g, '');
    if (!B64.test(s)) throw illegal('base64.decode', s, B64);
    return utf8(Buffer.from(s, 'base64'));
  });
  def(t, 'base64.is_valid', 1, (a) => b64valid(str('base64.is_valid', a, 0)));
  def(t, 'base64url.encode', 1, (a, b) =>
    checkString(Buffer.from(str('base64url.encode', a, 0), 'utf8').toString('base64').replace(/\+/g, '-').replace(/\//g, '_'), b, 'base64url.encode'),
  );
  def(t, 'base64url.encode_no_pad', 1, (a, b) => checkString(Buffer.from(str('base64url.encode_no_pad', a, 0), 'utf8').toString('base64url'), b, 'base64url.encode_no_pad'));
  def(t, 'base64url.decode', 1, (a) => {
    const s = str('base64url.decode', a, 0).replace(/[\r\n]/g, '');
    // padded when its length is a multiple of 4, raw otherwise (as OPA decides)
    if (s.length % 4 === 0 ? !B64URL.test(s) : !B64URL_RAW.test(s)) throw illegal('base64url.decode', s, s.length % 4 === 0 ? B64URL : B64URL_RAW);
    return utf8(Buffer.from(s, 'base64url'));
  });
  def(t, 'hex.encode', 1, (a) => Buffer.from(str('hex.encode', a, 0), 'utf8').toString('hex'));
  def(t, 'hex.decode', 1, (a) => {
    const s = str('hex.decode', a, 0);
    if (!/^(?:[0-9a-fA-F]{2})*$/.test(s)) {
      const bad = s.search(/[^0-9a-fA-F]/);
      throw new BuiltinError(bad >= 0 ? `hex.decode: encoding/hex: invalid byte: U+00${s.charCodeAt(bad).toString(16).toUpperCase().padStart(2, '0')} ${JSON.stringify(s[bad])}` : 'hex.decode: encoding/hex: odd length hex string');
    }
    return utf8(Buffer.from(s, 'hex'));
  });
  def(t, 'json.marshal', 1, (a, b) => checkString(canonical(a[0]!), b, 'json.marshal'));
  def(t, 'json.marshal_with_options', 2, (a, b) => {
    const opts = obj('json.marshal_with_options', a, 1);
    let pretty = false;
    let indent = '\t';
    let prefix = '';
    for (const [k, v] of opts.entries()) {
      if (k === 'pretty' && typeof v === 'boolean') pretty = v;
      else if (k === 'indent' && typeof v === 'string') {
        indent = v;
        pretty = opts.get('pretty') !== false;
      } else if (k === 'prefix' && typeof v === 'string') {
        prefix = v;
        pretty = opts.get('pretty') !== false;
      } else if (k === 'pretty' || k === 'indent' || k === 'prefix') {
        throw new BuiltinError(`json.marshal_with_options: object field ${JSON.stringify(k)} has the wrong type`, 'eval_type_error');
      } else throw new BuiltinError(`json.marshal_with_options: object contained unknown key ${JSON.stringify(k)}`, 'eval_type_error');
    }
    if (!pretty) return checkString(canonical(a[0]!), b, 'json.marshal_with_options');
    const text = toJSON(a[0]!, 1).replace(/^( +)/gm, (m) => indent.repeat(m.length));
    return checkString(text.split('\n').map((l) => prefix + l).join('\n'), b, 'json.marshal_with_options');
  });
  def(t, 'json.unmarshal', 1, (a) => {
    try {
      return parseJSON(str('json.unmarshal', a, 0), 'json.unmarshal');
    } catch (e) {
      if (e instanceof PolicyError && e.code === 'input_error') throw new BuiltinError(e.detail);
      throw e;
    }
  });
  def(t, 'json.is_valid', 1, (a) => {
    if (typeof a[0] !== 'string') return false;
    try {
      parseJSON(a[0], 'json.is_valid');
      return true;
    } catch {
      return false;
    }
  });
  def(t, 'urlquery.encode', 1, (a) => queryEscape(str('urlquery.encode', a, 0)));
  def(t, 'urlquery.decode', 1, (a) => queryUnescape('urlquery.decode', str('urlquery.decode', a, 0)));
  def(t, 'urlquery.encode_object', 1, (a) => {
    const o = obj('urlquery.encode_object', a, 0);
    const parts: string[] = [];
    for (const [k, v] of o.entries()) {
      if (typeof k !== 'string') throw typeErr('urlquery.encode_object', 1, 'object[string: any<string, array[string], set[string]>]', o);
      const vs = typeof v === 'string' ? [v] : Array.isArray(v) ? v : v instanceof RSet ? v.values() : null;
      if (!vs) throw typeErr('urlquery.encode_object', 1, 'object[string: any<string, array[string], set[string]>]', o);
      for (const x of vs) {
        if (typeof x !== 'string') throw typeErr('urlquery.encode_object', 1, 'object[string: any<string, array[string], set[string]>]', o);
        parts.push(queryEscape(k) + '=' + queryEscape(x));
      }
    }
    return parts.join('&');
  });
  def(t, 'urlquery.decode_object', 1, (a) => {
    const s = str('urlquery.decode_object', a, 0);
    const out = new RObject();
    for (const part of s.split(/[&;]/)) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      const k = queryUnescape('urlquery.decode_object', eq < 0 ? part : part.slice(0, eq));
      const v = eq < 0 ? '' : queryUnescape('urlquery.decode_object', part.slice(eq + 1));
      const prev = out.get(k);
      out.set(k, Array.isArray(prev) ? [...prev, v] : [v]);
    }
    return out;
  });
  def(t, 'yaml.marshal', 1, (a, b) => checkString(stringifyYaml(toJS(a[0]!), { indentSeq: false, sortMapEntries: true, lineWidth: 0 }), b, 'yaml.marshal'));
  def(t, 'yaml.unmarshal', 1, (a) => {
    try {
      return fromYaml(parseYaml(str('yaml.unmarshal', a, 0), { schema: 'yaml-1.1', intAsBigInt: true, maxAliasCount: 100, prettyErrors: false }));
    } catch (e) {
      if (e instanceof BuiltinError) throw e;
      // too deep for the stack: a limit, never an undefined that `not` could turn into true
      if (e instanceof RangeError || /call stack/i.test((e as Error).message)) throw new LimitError('yaml.unmarshal: document nested too deeply');
      throw new BuiltinError(`yaml.unmarshal: ${(e as Error).message.split('\n')[0]}`);
    }
  });
  def(t, 'yaml.is_valid', 1, (a) => {
    if (typeof a[0] !== 'string') return false;
    try {
      parseYaml(a[0], { schema: 'yaml-1.1', maxAliasCount: 100 });
      return true;
    } catch {
      return false;
    }
  });
}

function fromYaml(x: unknown): Value {
  if (typeof x === 'bigint') return normInt(x);
  if (x instanceof Date) return x.toISOString();
  if (x instanceof Map) {
    const o = new RObject();
    for (const [k, v] of x) o.set(typeof k === 'string' ? k : String(k), fromYaml(v));
    return o;
  }
  if (Array.isArray(x)) return x.map(fromYaml);
  if (x !== null && typeof x === 'object') {
    const o = new RObject();
    for (const [k, v] of Object.entries(x)) o.set(k, fromYaml(v));
    return o;
  }
  if (typeof x === 'number' && !Number.isFinite(x)) throw new BuiltinError('yaml.unmarshal: non-finite number');
  if (x === undefined) return null;
  return fromJS(x);
}

/** Go's url.QueryEscape. */
export function queryEscape(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(c)) out += c;
    else if (c === ' ') out += '+';
    else out += '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

function queryUnescape(fn: string, s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '%') {
      const h = s.slice(i + 1, i + 3);
      if (!/^[0-9a-fA-F]{2}$/.test(h)) throw new BuiltinError(`${fn}: invalid URL escape ${JSON.stringify(s.slice(i, i + 3))}`);
      bytes.push(parseInt(h, 16));
      i += 2;
    } else if (c === '+') bytes.push(32);
    else for (const b of Buffer.from(c, 'utf8')) bytes.push(b);
  }
  return Buffer.from(bytes).toString('utf8');
}
