// crypto hashes, trace, opa.runtime, walk, semver, uuid, graph reachability, net.cidr_*.
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { BuiltinError } from '../errors.js';
import { RObject, RSet, compare, type Value } from '../values.js';
import { def, obj, str, typeErr, type BuiltinTable } from './types.js';

function hash(alg: string) {
  return (a: Value[]) => createHash(alg).update(str(`crypto.${alg}`, a, 0), 'utf8').digest('hex');
}

function hmac(alg: string) {
  const fn = `crypto.hmac.${alg}`;
  return (a: Value[]) => createHmac(alg, Buffer.from(str(fn, a, 1), 'utf8')).update(str(fn, a, 0), 'utf8').digest('hex');
}

const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

function semverCompare(a: string, b: string): number {
  const x = SEMVER.exec(a.replace(/^v/, ''));
  const y = SEMVER.exec(b.replace(/^v/, ''));
  if (!x) throw new BuiltinError(`semver.compare: operand 1: string ${JSON.stringify(a)} is not a valid SemVer`);
  if (!y) throw new BuiltinError(`semver.compare: operand 2: string ${JSON.stringify(b)} is not a valid SemVer`);
  for (let i = 1; i <= 3; i++) {
    const d = BigInt(x[i]!) - BigInt(y[i]!);
    if (d !== 0n) return d < 0n ? -1 : 1;
  }
  const pa = x[4];
  const pb = y[4];
  if (pa === undefined && pb === undefined) return 0;
  if (pa === undefined) return 1;
  if (pb === undefined) return -1;
  const as = pa.split('.');
  const bs = pb.split('.');
  for (let i = 0; i < Math.max(as.length, bs.length); i++) {
    const p = as[i];
    const q = bs[i];
    if (p === undefined) return -1;
    if (q === undefined) return 1;
    const pn = /^\d+$/.test(p);
    const qn = /^\d+$/.test(q);
    if (pn && qn) {
      const d = BigInt(p) - BigInt(q);
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else if (pn !== qn) return pn ? -1 : 1;
    else if (p !== q) return p < q ? -1 : 1;
  }
  return 0;
}

function walk(v: Value, path: Value[], k: (v: Value) => void): void {
  k([path.slice(), v]);
  if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...path, i], k));
  else if (v instanceof RObject) for (const [key, x] of v.entries()) walk(x, [...path, key], k);
  else if (v instanceof RSet) for (const x of v.values()) walk(x, [...path, x], k);
}

function neighbours(g: RObject, n: Value): Value[] {
  const e = g.get(n);
  if (e === undefined || e === null) return [];
  if (Array.isArray(e)) return e;
  if (e instanceof RSet) return e.values();
  return [];
}

/** An IPv4 or IPv6 CIDR (or bare address) as a bigint range. */
function cidr(fn: string, s: string): { lo: bigint; hi: bigint; v6: boolean } {
  const [addr, bits] = s.split('/');
  const ip = parseIP(addr ?? '');
  if (!ip) throw new BuiltinError(`${fn}: invalid CIDR address: ${s}`);
  const width = ip.v6 ? 128 : 32;
  const prefix = bits === undefined ? width : /^\d+$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix >= 0 && prefix <= width)) throw new BuiltinError(`${fn}: invalid CIDR address: ${s}`);
  const hostBits = BigInt(width - prefix);
  const lo = (ip.n >> hostBits) << hostBits;
  return { lo, hi: lo + (1n << hostBits) - 1n, v6: ip.v6 };
}

function parseIP(s: string): { n: bigint; v6: boolean } | null {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (v4) {
    const ps = v4.slice(1).map(Number);
    if (ps.some((p) => p > 255)) return null;
    return { n: ps.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n), v6: false };
  }
  if (!s.includes(':')) return null;
  const [head, tail] = s.split('::');
  if (s.split('::').length > 2) return null;
  const parse = (x: string | undefined) => (x ? x.split(':') : []);
  const hs = parse(head);
  const ts = parse(tail);
  const groups = tail === undefined ? hs : [...hs, ...new Array(8 - hs.length - ts.length).fill('0'), ...ts];
  if (groups.length !== 8 || groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  return { n: groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n), v6: true };
}

export function register(t: BuiltinTable): void {
  def(t, 'crypto.sha256', 1, hash('sha256'));
  def(t, 'crypto.sha1', 1, hash('sha1'));
  def(t, 'crypto.md5', 1, hash('md5'));
  def(t, 'crypto.hmac.sha256', 2, hmac('sha256'));
  def(t, 'crypto.hmac.sha1', 2, hmac('sha1'));
  def(t, 'crypto.hmac.sha512', 2, hmac('sha512'));
  def(t, 'crypto.hmac.md5', 2, hmac('md5'));
  def(t, 'crypto.hmac.equal', 2, (a) => {
    const x = Buffer.from(str('crypto.hmac.equal', a, 0));
    const y = Buffer.from(str('crypto.hmac.equal', a, 1));
    return x.length === y.length && timingSafeEqual(x, y);
  });
  def(t, 'trace', 1, (a) => {
    str('trace', a, 0);
    return true;
  });
  def(t, 'opa.runtime', 0, () => new RObject());
  t.set('walk', {
    name: 'walk',
    arity: 1,
    fn: () => {
      throw new BuiltinError('walk: used as a function');
    },
    relation: (a, _b, k) => walk(a[0]!, [], k),
  });
  def(t, 'semver.is_valid', 1, (a) => typeof a[0] === 'string' && SEMVER.test(a[0]));
  def(t, 'semver.compare', 2, (a) => semverCompare(str('semver.compare', a, 0), str('semver.compare', a, 1)));
  def(t, 'uuid.rfc4122', 1, (a, b) => {
    const key = 'uuid:' + str('uuid.rfc4122', a, 0);
    let v = b.memo.get(key);
    if (v === undefined) {
      const r = randomBytes(16);
      r[6] = (r[6]! & 0x0f) | 0x40;
      r[8] = (r[8]! & 0x3f) | 0x80;
      const h = r.toString('hex');
      v = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
      b.memo.set(key, v);
    }
    return v;
  });
  def(t, 'graph.reachable', 2, (a) => {
    const g = obj('graph.reachable', a, 0);
    const init = a[1]!;
    const start = Array.isArray(init) ? init : init instanceof RSet ? init.values() : null;
    if (!start) throw typeErr('graph.reachable', 2, 'one of {array, set}', init);
    const seen = new RSet();
    const todo = [...start];
    while (todo.length > 0) {
      const n = todo.pop()!;
      if (seen.has(n)) continue;
      if (g.get(n) === undefined) continue;
      seen.add(n);
      for (const m of neighbours(g, n)) todo.push(m);
    }
    return seen;
  });
  def(t, 'net.cidr_contains', 2, (a) => {
    const c = cidr('net.cidr_contains', str('net.cidr_contains', a, 0));
    const d = cidr('net.cidr_contains', str('net.cidr_contains', a, 1));
    return c.v6 === d.v6 && d.lo >= c.lo && d.hi <= c.hi;
  });
  def(t, 'net.cidr_intersects', 2, (a) => {
    const c = cidr('net.cidr_intersects', str('net.cidr_intersects', a, 0));
    const d = cidr('net.cidr_intersects', str('net.cidr_intersects', a, 1));
    return c.v6 === d.v6 && c.lo <= d.hi && d.lo <= c.hi;
  });
  def(t, 'net.cidr_is_valid', 1, (a) => {
    if (typeof a[0] !== 'string' || !a[0].includes('/')) return false;
    try {
      cidr('net.cidr_is_valid', a[0]);
      return true;
    } catch {
      return false;
    }
  });
  void compare;
}
