// Arrays, sets and objects: array.*, set operators, object.*, json.filter/remove/patch.
import { BuiltinError } from '../errors.js';
import { RObject, RSet, equal, type Value } from '../values.js';
import { arr, checkSize, collection, def, int, obj, set, typeErr, type BuiltinTable } from './types.js';

function setOf(fn: string, v: Value, pos: number): RSet {
  if (!(v instanceof RSet)) throw typeErr(fn, pos, 'set', v);
  return v;
}

function setsOf(fn: string, v: Value): RSet[] {
  if (!(v instanceof RSet)) throw typeErr(fn, 1, 'set[set]', v);
  return v.values().map((x) => {
    if (!(x instanceof RSet)) throw typeErr(fn, 1, 'set[set]', v);
    return x;
  });
}

/** A deep merge: b's values win; objects on both sides merge recursively. */
function union(a: RObject, b: RObject): RObject {
  const out = a.clone();
  for (const [k, v] of b.entries()) {
    const prev = out.get(k);
    out.set(k, prev instanceof RObject && v instanceof RObject ? union(prev, v) : v);
  }
  return out;
}

/** Paths given as "a/b/c" strings or as arrays of keys. */
function paths(fn: string, v: Value, pos: number): Value[][] {
  const xs = Array.isArray(v) ? v : v instanceof RSet ? v.values() : v instanceof RObject ? v.keys() : null;
  if (!xs) throw typeErr(fn, pos, 'one of {array, set, object}', v);
  return xs.map((p) => {
    if (typeof p === 'string') return p.replace(/^\//, '').split('/').filter((x, i, all) => !(x === '' && all.length === 1));
    if (Array.isArray(p)) return p;
    throw typeErr(fn, pos, 'one of {array[string|array], set[string|array]}', v);
  });
}

/** json.filter: keep only the given paths. */
function filter(v: Value, tree: Map<unknown, unknown>): Value | undefined {
  if (tree.size === 0) return v;
  if (v instanceof RObject) {
    const o = new RObject();
    for (const [k, sub] of tree as Map<Value, Map<unknown, unknown>>) {
      const x = v.get(k);
      if (x === undefined) continue;
      const f = filter(x, sub);
      if (f !== undefined) o.set(k, f);
    }
    return o;
  }
  if (Array.isArray(v)) {
    const out: Value[] = [];
    for (const [k, sub] of tree as Map<Value, Map<unknown, unknown>>) {
      const i = typeof k === 'string' ? Number(k) : k;
      if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= v.length) continue;
      const f = filter(v[i]!, sub);
      if (f !== undefined) out.push(f);
    }
    return out;
  }
  if (v instanceof RSet) {
    const out = new RSet();
    for (const [k, sub] of tree as Map<Value, Map<unknown, unknown>>) if (v.has(k)) out.add(filter(k, sub) ?? k);
    return out;
  }
  return undefined;
}

function remove(v: Value, tree: Map<unknown, unknown>): Value | undefined {
  if (v instanceof RObject) {
    const o = new RObject();
    for (const [k, x] of v.entries()) {
      const sub = tree.get(k) as Map<unknown, unknown> | undefined;
      if (sub === undefined) o.set(k, x);
      else if (sub.size > 0) {
        const r = remove(x, sub);
        if (r !== undefined) o.set(k, r);
      }
    }
    return o;
  }
  if (Array.isArray(v)) {
    const out: Value[] = [];
    v.forEach((x, i) => {
      const sub = (tree.get(i) ?? tree.get(String(i))) as Map<unknown, unknown> | undefined;
      if (sub === undefined) out.push(x);
      else if (sub.size > 0) {
        const r = remove(x, sub);
        if (r !== undefined) out.push(r);
      }
    });
    return out;
  }
  if (v instanceof RSet) {
    const out = new RSet();
    for (const x of v.values()) if (!tree.has(x) || (tree.get(x) as Map<unknown, unknown>).size > 0) out.add(x);
    return out;
  }
  return v;
}

function pathTree(ps: Value[][]): Map<unknown, unknown> {
  const root = new Map<unknown, unknown>();
  for (const p of ps) {
    let cur = root;
    let cut = false;
    for (const k of p) {
      const key = typeof k === 'number' ? k : k;
      let next = cur.get(key) as Map<unknown, unknown> | undefined;
      if (next && next.size === 0 && cur !== root) {
        cut = true;
        break;
      }
      if (!next) {
        next = new Map();
        cur.set(key, next);
      }
      cur = next;
    }
    if (!cut) cur.clear();
  }
  return root;
}

/** object.subset: is sub contained in super (objects recursively, arrays as subsequences, sets as subsets). */
function subset(sup: Value, sub: Value): boolean {
  if (sup instanceof RObject && sub instanceof RObject) {
    for (const [k, v] of sub.entries()) {
      const x = sup.get(k);
      if (x === undefined || !subset(x, v)) return false;
    }
    return true;
  }
  if (sup instanceof RSet && sub instanceof RSet) return sub.values().every((v) => sup.has(v));
  if (Array.isArray(sup) && Array.isArray(sub)) {
    if (sub.length === 0) return true;
    for (let i = 0; i + sub.length <= sup.length; i++) {
      let ok = true;
      for (let j = 0; j < sub.length; j++)
        if (!equal(sup[i + j]!, sub[j]!)) {
          ok = false;
          break;
        }
      if (ok) return true;
    }
    return false;
  }
  if (Array.isArray(sup) && sub instanceof RSet) return sub.values().every((v) => sup.some((x) => equal(x, v)));
  return equal(sup, sub);
}

export function register(t: BuiltinTable): void {
  def(t, 'array.concat', 2, (a, b) => {
    const x = arr('array.concat', a, 0);
    const y = arr('array.concat', a, 1);
    checkSize(x.length + y.length, b, 'array.concat');
    return x.concat(y);
  });
  def(t, 'array.slice', 3, (a) => {
    const x = arr('array.slice', a, 0);
    let s = int('array.slice', a, 1);
    let e = int('array.slice', a, 2);
    if (s < 0) s = 0;
    if (e > x.length) e = x.length;
    return s >= e ? [] : x.slice(s, e);
  });
  def(t, 'array.reverse', 1, (a) => arr('array.reverse', a, 0).slice().reverse());
  def(t, 'and', 2, (a) => {
    const x = setOf('and', a[0]!, 1);
    const y = setOf('and', a[1]!, 2);
    const out = new RSet();
    for (const v of x.values()) if (y.has(v)) out.add(v);
    return out;
  });
  def(t, 'or', 2, (a, b) => {
    const x = setOf('or', a[0]!, 1);
    const y = setOf('or', a[1]!, 2);
    checkSize(x.size + y.size, b, 'or');
    const out = RSet.of(x.values());
    for (const v of y.values()) out.add(v);
    return out;
  });
  def(t, 'intersection', 1, (a) => {
    const ss = setsOf('intersection', a[0]!);
    if (ss.length === 0) return new RSet();
    const out = new RSet();
    for (const v of ss[0]!.values()) if (ss.every((s) => s.has(v))) out.add(v);
    return out;
  });
  def(t, 'union', 1, (a, b) => {
    const out = new RSet();
    for (const s of setsOf('union', a[0]!)) for (const v of s.values()) out.add(v);
    checkSize(out.size, b, 'union');
    return out;
  });
  def(t, 'set_diff', 2, (a) => {
    const x = set('set_diff', a, 0);
    const y = set('set_diff', a, 1);
    return RSet.of(x.values().filter((v) => !y.has(v)));
  });
  def(t, 'object.get', 3, (a) => {
    const o = obj('object.get', a, 0);
    const key = a[1]!;
    if (Array.isArray(key)) {
      let v: Value | undefined = o;
      for (const k of key) {
        if (v instanceof RObject) v = v.get(k);
        else if (Array.isArray(v) && typeof k === 'number') v = Number.isInteger(k) ? v[k] : undefined;
        else if (v instanceof RSet) v = v.has(k) ? k : undefined;
        else v = undefined;
        if (v === undefined) return a[2]!;
      }
      return v;
    }
    return o.get(key) ?? a[2]!;
  });
  def(t, 'object.keys', 1, (a) => RSet.of(obj('object.keys', a, 0).keys()));
  def(t, 'object.remove', 2, (a) => {
    const o = obj('object.remove', a, 0);
    const ks = a[1]!;
    const keys = Array.isArray(ks) ? ks : ks instanceof RSet ? ks.values() : ks instanceof RObject ? ks.keys() : null;
    if (!keys) throw typeErr('object.remove', 2, 'one of {array, object, set}', ks);
    const out = o.clone();
    for (const k of keys) out.delete(k);
    return out;
  });
  def(t, 'object.filter', 2, (a) => {
    const o = obj('object.filter', a, 0);
    const ks = a[1]!;
    const keys = Array.isArray(ks) ? ks : ks instanceof RSet ? ks.values() : ks instanceof RObject ? ks.keys() : null;
    if (!keys) throw typeErr('object.filter', 2, 'one of {array, object, set}', ks);
    const out = new RObject();
    for (const k of keys) {
      const v = o.get(k);
      if (v !== undefined) out.set(k, v);
    }
    return out;
  });
  def(t, 'object.union', 2, (a) => union(obj('object.union', a, 0), obj('object.union', a, 1)));
  def(t, 'object.union_n', 1, (a) => {
    let out = new RObject();
    for (const o of arr('object.union_n', a, 0)) {
      if (!(o instanceof RObject)) throw typeErr('object.union_n', 1, 'array[object]', a[0]!);
      out = union(out, o);
    }
    return out;
  });
  def(t, 'object.subset', 2, (a) => {
    const [sup, sub] = a;
    const ok = (v: Value) => v instanceof RObject || v instanceof RSet || Array.isArray(v);
    if (!ok(sup!)) throw typeErr('object.subset', 1, 'one of {object, set, array}', sup!);
    if (!ok(sub!)) throw typeErr('object.subset', 2, 'one of {object, set, array}', sub!);
    if (sup instanceof RObject !== sub instanceof RObject) throw new BuiltinError('object.subset: both arguments must be objects', 'eval_type_error');
    return subset(sup!, sub!);
  });
  def(t, 'json.filter', 2, (a) => filter(obj('json.filter', a, 0), pathTree(paths('json.filter', a[1]!, 2))));
  def(t, 'json.remove', 2, (a) => remove(obj('json.remove', a, 0), pathTree(paths('json.remove', a[1]!, 2))));
  void collection;
}
