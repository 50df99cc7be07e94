// Indexing and iteration over values, shared by refs, `some ... in`, `every` and comprehensions.
import { RObject, RSet, type Value } from '../values.js';
import type { Frame } from './context.js';

/** v[key], or undefined. Arrays take integer indexes (1.0 is 1); sets answer the member itself. */
export function index(v: Value | undefined, key: Value): Value | undefined {
  if (v === undefined || v === null || typeof v !== 'object') return undefined;
  if (v instanceof RObject) return v.get(key);
  if (Array.isArray(v)) {
    if (typeof key === 'number') return Number.isInteger(key) && key >= 0 ? v[key] : undefined;
    return undefined;
  }
  return v.has(key) ? key : undefined;
}

/** Calls k(key, value) for each element: arrays by index, objects and sets in sort order. */
export function forEach(v: Value, k: (key: Value, val: Value) => void): void {
  if (typeof v !== 'object' || v === null) return;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) k(i, v[i]!);
  } else if (v instanceof RObject) {
    for (const [key, val] of v.entries()) k(key, val);
  } else {
    for (const m of (v as RSet).values()) k(m, m);
  }
}

/** forEach that stops once the frame's body is done (a first-solution rule found its solution). */
export function forEachUntil(v: Value, f: Frame, k: (key: Value, val: Value) => void): void {
  if (typeof v !== 'object' || v === null) return;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length && !f.done; i++) k(i, v[i]!);
  } else if (v instanceof RObject) {
    const es = v.entries();
    for (let i = 0; i < es.length && !f.done; i++) k(es[i]![0], es[i]![1]);
  } else {
    const ms = (v as RSet).values();
    for (let i = 0; i < ms.length && !f.done; i++) k(ms[i]!, ms[i]!);
  }
}

export function isCollection(v: Value | undefined): boolean {
  return typeof v === 'object' && v !== null;
}

/** A copy of `root` with `path` set to `value` (objects created along the way). */
export function upsert(root: Value | undefined, path: Value[], value: Value): Value {
  if (path.length === 0) return value;
  const o = root instanceof RObject ? root.clone() : new RObject();
  const [k, ...rest] = path;
  o.set(k!, upsert(o.get(k!), rest, value));
  return o;
}
