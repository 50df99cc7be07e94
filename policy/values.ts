// Rego values. Scalars are JS primitives (integers are exact: a JS number while safe, a bigint
// beyond 2^53; other numbers are IEEE doubles); arrays are JS arrays; objects and sets are the
// classes below, whose iteration order is Rego's sort order (as OPA and regorus iterate).
// Values are immutable once shared: builders mutate only what they just created.

export type Value = null | boolean | number | bigint | string | Value[] | RObject | RSet;
type Prim = null | boolean | number | bigint | string;

/** The key a scalar is stored under: integers beyond 2^53 written as doubles meet their bigint twin. */
function primKey(v: Prim): Prim {
  if (typeof v === 'number' && !Number.isSafeInteger(v) && Number.isInteger(v)) return BigInt(v);
  return v;
}

function isComposite(v: Value): v is Value[] | RObject | RSet {
  return typeof v === 'object' && v !== null;
}

export class RObject {
  /** Entries whose key is a scalar. */
  readonly m = new Map<Prim, Value>();
  /** Entries whose key is an array, object or set, by canonical text. */
  c: Map<string, [Value, Value]> | null = null;
  private sorted: [Value, Value][] | null = null;

  static of(entries: Iterable<[Value, Value]>): RObject {
    const o = new RObject();
    for (const [k, v] of entries) o.set(k, v);
    return o;
  }

  get size(): number {
    return this.m.size + (this.c ? this.c.size : 0);
  }

  get(k: Value): Value | undefined {
    if (typeof k === 'string') return this.m.get(k);
    if (isComposite(k)) return this.c?.get(canonical(k))?.[1];
    return this.m.get(primKey(k));
  }

  /** Builders only. */
  set(k: Value, v: Value): void {
    this.sorted = null;
    if (isComposite(k)) {
      (this.c ??= new Map()).set(canonical(k), [k, v]);
    } else {
      this.m.set(primKey(k), v);
    }
  }

  delete(k: Value): void {
    this.sorted = null;
    if (isComposite(k)) this.c?.delete(canonical(k));
    else this.m.delete(primKey(k));
  }

  /** Entries in Rego's key order (cached: the object is immutable once shared). */
  entries(): [Value, Value][] {
    if (this.sorted) return this.sorted;
    const out: [Value, Value][] = [];
    let allStrings = true;
    for (const [k, v] of this.m) {
      if (typeof k !== 'string') allStrings = false;
      out.push([k, v]);
    }
    if (this.c) {
      allStrings = false;
      for (const e of this.c.values()) out.push(e);
    }
    if (out.length > 1) {
      if (allStrings) out.sort((a, b) => compareStrings(a[0] as string, b[0] as string));
      else out.sort((a, b) => compare(a[0], b[0]));
    }
    this.sorted = out;
    return out;
  }

  keys(): Value[] {
    return this.entries().map((e) => e[0]);
  }

  clone(): RObject {
    const o = new RObject();
    for (const [k, v] of this.m) o.m.set(k, v);
    if (this.c) o.c = new Map(this.c);
    return o;
  }
}

export class RSet {
  readonly m = new Set<Prim>();
  c: Map<string, Value> | null = null;
  private sorted: Value[] | null = null;

  static of(items: Iterable<Value>): RSet {
    const s = new RSet();
    for (const v of items) s.add(v);
    return s;
  }

  get size(): number {
    return this.m.size + (this.c ? this.c.size : 0);
  }

  has(v: Value): boolean {
    if (isComposite(v)) return this.c ? this.c.has(canonical(v)) : false;
    return this.m.has(primKey(v));
  }

  /** Builders only. */
  add(v: Value): void {
    this.sorted = null;
    if (isComposite(v)) (this.c ??= new Map()).set(canonical(v), v);
    else this.m.add(primKey(v));
  }

  delete(v: Value): void {
    this.sorted = null;
    if (isComposite(v)) this.c?.delete(canonical(v));
    else this.m.delete(primKey(v));
  }

  /** Members in Rego's order (cached). */
  values(): Value[] {
    if (this.sorted) return this.sorted;
    const out: Value[] = [];
    let allStrings = true;
    for (const v of this.m) {
      if (typeof v !== 'string') allStrings = false;
      out.push(v);
    }
    if (this.c) {
      allStrings = false;
      for (const v of this.c.values()) out.push(v);
    }
    if (out.length > 1) {
      if (allStrings) out.sort((a, b) => compareStrings(a as string, b as string));
      else out.sort(compare);
    }
    this.sorted = out;
    return out;
  }
}

export type TypeName = 'null' | 'boolean' | 'number' | 'string' | 'array' | 'object' | 'set';

export function typeName(v: Value): TypeName {
  switch (typeof v) {
    case 'boolean':
      return 'boolean';
    case 'number':
    case 'bigint':
      return 'number';
    case 'string':
      return 'string';
    default:
      if (v === null) return 'null';
      if (Array.isArray(v)) return 'array';
      return v instanceof RSet ? 'set' : 'object';
  }
}

const TYPE_RANK: Record<TypeName, number> = { null: 0, boolean: 1, number: 2, string: 3, array: 4, object: 5, set: 6 };

/** Strings compare by code point (UTF-8 byte order, as Go and Rust do), not by UTF-16 unit. */
export function compareStrings(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      // Surrogates (D800-DFFF) stand for code points above FFFF: move them above E000-FFFF.
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      }
      return x < y ? -1 : 1;
    }
  }
  return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
}

export function compareNumbers(a: number | bigint, b: number | bigint): number {
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'bigint' && typeof b === 'bigint') return a < b ? -1 : a > b ? 1 : 0;
  // Mixed: a bigint is an integer beyond 2^53; compare exactly where the double is integral.
  if (typeof a === 'number') return -compareNumbers(b, a);
  const d = b as number;
  if (!Number.isFinite(d)) return d > 0 ? -1 : 1;
  const fl = Math.floor(d);
  const bi = BigInt(fl);
  if (a < bi) return -1;
  if (a > bi) return 1;
  return fl === d ? 0 : -1;
}

/** Rego's total order: null < boolean < number < string < array < object < set. */
export function compare(a: Value, b: Value): number {
  if (a === b) return 0;
  const ta = typeName(a);
  const tb = typeName(b);
  if (ta !== tb) return TYPE_RANK[ta] - TYPE_RANK[tb];
  switch (ta) {
    case 'null':
      return 0;
    case 'boolean':
      return a === b ? 0 : a === false ? -1 : 1;
    case 'number':
      return compareNumbers(a as number | bigint, b as number | bigint);
    case 'string':
      return compareStrings(a as string, b as string);
    case 'array': {
      const x = a as Value[];
      const y = b as Value[];
      const n = Math.min(x.length, y.length);
      for (let i = 0; i < n; i++) {
        const c = compare(x[i]!, y[i]!);
        if (c !== 0) return c;
      }
      return x.length - y.length;
    }
    case 'object': {
      const x = (a as RObject).entries();
      const y = (b as RObject).entries();
      const n = Math.min(x.length, y.length);
      for (let i = 0; i < n; i++) {
        let c = compare(x[i]![0], y[i]![0]);
        if (c !== 0) return c;
        c = compare(x[i]![1], y[i]![1]);
        if (c !== 0) return c;
      }
      return x.length - y.length;
    }
    case 'set': {
      const x = (a as RSet).values();
      const y = (b as RSet).values();
      const n = Math.min(x.length, y.length);
      for (let i = 0; i < n; i++) {
        const c = compare(x[i]!, y[i]!);
        if (c !== 0) return c;
      }
      return x.length - y.length;
    }
  }
}

/** Equality (1 == 1.0; key order and set order do not matter). Faster than compare() for the common case. */
export function equal(a: Value, b: Value): boolean {
  if (a === b) return true;
  const t = typeof a;
  if (t !== 'object' || a === null || b === null || typeof b !== 'object') {
    if ((t === 'number' || t === 'bigint') && (typeof b === 'number' || typeof b === 'bigint')) {
      return compareNumbers(a as number | bigint, b) === 0;
    }
    return false;
  }
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!equal(a[i]!, b[i]!)) return false;
    return true;
  }
  if (a instanceof RObject) {
    if (!(b instanceof RObject) || a.size !== b.size) return false;
    for (const [k, v] of a.m) {
      const w = b.m.get(k);
      if (w === undefined || !equal(v, w)) return false;
    }
    if (a.c) {
      for (const [ck, [, v]] of a.c) {
        const w = b.c?.get(ck);
        if (w === undefined || !equal(v, w[1])) return false;
      }
    }
    return true;
  }
  if (!(b instanceof RSet) || (a as RSet).size !== b.size) return false;
  const sa = a as RSet;
  for (const v of sa.m) if (!b.m.has(v)) return false;
  if (sa.c) for (const k of sa.c.keys()) if (!b.c?.has(k)) return false;
  return true;
}

function numberText(n: number | bigint): string {
  if (typeof n === 'bigint') return n.toString();
  if (Object.is(n, -0)) return '0';
  return String(n);
}

/** Canonical JSON: sets as sorted arrays, object keys sorted, non-string keys as their JSON text. */
export function canonical(v: Value): string {
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'number':
    case 'bigint':
      return numberText(v);
    case 'boolean':
      return v ? 'true' : 'false';
    default:
      if (v === null) return 'null';
      if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
      if (v instanceof RSet) return '[' + v.values().map(canonical).join(',') + ']';
      return '{' + v.entries().map(([k, x]) => (typeof k === 'string' ? JSON.stringify(k) : JSON.stringify(canonical(k))) + ':' + canonical(x)).join(',') + '}';
  }
}

/** JSON text; `indent` pretty-prints as `opa eval` does. */
export function toJSON(v: Value, indent?: number): string {
  if (!indent) return canonical(v);
  return JSON.stringify(JSON.parse(canonicalForParse(v)), null, indent).replace(/"\\u0000big:(-?\d+)"/g, '$1');
}

function canonicalForParse(v: Value): string {
  // Bigints survive JSON.parse as tagged strings and are put back as bare digits.
  switch (typeof v) {
    case 'bigint':
      return JSON.stringify('\u0000big:' + v.toString());
    case 'object':
      if (v === null) return 'null';
      if (Array.isArray(v)) return '[' + v.map(canonicalForParse).join(',') + ']';
      if (v instanceof RSet) return '[' + v.values().map(canonicalForParse).join(',') + ']';
      return '{' + v.entries().map(([k, x]) => (typeof k === 'string' ? JSON.stringify(k) : JSON.stringify(canonical(k))) + ':' + canonicalForParse(x)).join(',') + '}';
    default:
      return canonical(v);
  }
}

/**
 * Rego's term text, as OPA's print() and sprintf("%v") show composite values: strings quoted
 * inside composites, ", " and ": " separators, sets as {a, b} (set() when empty).
 */
export function termText(v: Value): string {
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'object':
      if (v === null) return 'null';
      if (Array.isArray(v)) return '[' + v.map(termText).join(', ') + ']';
      if (v instanceof RSet) return v.size === 0 ? 'set()' : '{' + v.values().map(termText).join(', ') + '}';
      return '{' + v.entries().map(([k, x]) => termText(k) + ': ' + termText(x)).join(', ') + '}';
    default:
      return canonical(v);
  }
}

/** How print() shows one argument: a top-level string bare, composites as regorus prints them. */
export function printText(v: Value | undefined): string {
  if (v === undefined) return '<undefined>';
  if (typeof v === 'string') return v;
  return printComposite(v);
}

function printComposite(v: Value): string {
  if (typeof v === 'object' && v !== null) {
    if (Array.isArray(v)) return '[' + v.map(printComposite).join(', ') + ']';
    if (v instanceof RSet) return '{' + v.values().map(printComposite).join(', ') + '}';
    return '{' + v.entries().map(([k, x]) => printComposite(k) + ': ' + printComposite(x)).join(', ') + '}';
  }
  return canonical(v);
}

/** A plain JS value (from JSON.parse or a caller) as a Rego value. */
export function fromJS(x: unknown): Value {
  switch (typeof x) {
    case 'string':
    case 'boolean':
      return x;
    case 'number':
      if (!Number.isFinite(x)) throw new TypeError(`not a JSON number: ${x}`);
      return x;
    case 'bigint':
      return normInt(x);
    case 'undefined':
      throw new TypeError('undefined is not a Rego value');
    case 'object': {
      if (x === null) return null;
      if (Array.isArray(x)) return x.map(fromJS);
      if (x instanceof RObject || x instanceof RSet) return x;
      if (x instanceof Set) return RSet.of([...x].map(fromJS));
      const o = new RObject();
      for (const [k, v] of Object.entries(x)) if (v !== undefined) o.set(k, fromJS(v));
      return o;
    }
    default:
      throw new TypeError(`${typeof x} is not a Rego value`);
  }
}

/** A Rego value as plain JS (sets as sorted arrays, bigints kept as bigint). */
export function toJS(v: Value): unknown {
  if (typeof v !== 'object' || v === null) return v;
  if (Array.isArray(v)) return v.map(toJS);
  if (v instanceof RSet) return v.values().map(toJS);
  const o: Record<string, unknown> = {};
  for (const [k, x] of v.entries()) o[typeof k === 'string' ? k : canonical(k)] = toJS(x);
  return o;
}

/** An integer as its canonical form: a JS number while safe, else a bigint. */
export function normInt(b: bigint): number | bigint {
  return b >= -9007199254740991n && b <= 9007199254740991n ? Number(b) : b;
}

export function isInteger(v: Value): v is number | bigint {
  return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v));
}

export const EMPTY_OBJECT = new RObject();
export const EMPTY_SET = new RSet();
