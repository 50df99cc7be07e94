// RFC 6902 JSON Patch on plain JSON values, for the policy state (`pstate`) a decision's `ops`
// update. All or nothing: the patch is applied to a copy, which replaces the document only when
// every operation succeeded; a path that does not exist where it must is an error naming it.
export class JsonPatchError extends Error {
  override readonly name = 'JsonPatchError';
  readonly code = 'KATATS_JSON_PATCH';
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface PatchOp {
  op: 'add' | 'remove' | 'replace' | 'move' | 'copy' | 'test';
  path: string;
  value?: unknown;
  from?: string;
}

/** RFC 6901: "/a/b~1c" -> ["a", "b/c"]. */
export function parsePointer(p: string): string[] {
  if (p === '') return [];
  if (!p.startsWith('/')) throw new JsonPatchError(`JSON pointer ${JSON.stringify(p)} does not start with /`);
  return p
    .slice(1)
    .split('/')
    .map((s) => {
      if (/~[^01]|~$/.test(s)) throw new JsonPatchError(`JSON pointer ${JSON.stringify(p)}: bad escape`);
      return s.replace(/~1/g, '/').replace(/~0/g, '~');
    });
}

function isObject(v: unknown): v is Record<string, Json> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function arrayIndex(a: Json[], key: string, forAdd: boolean, path: string): number {
  if (forAdd && key === '-') return a.length;
  if (!/^(0|[1-9][0-9]*)$/.test(key)) throw new JsonPatchError(`${path}: ${JSON.stringify(key)} is not an array index`);
  const i = Number(key);
  if (i > a.length || (!forAdd && i === a.length)) throw new JsonPatchError(`${path}: index ${i} out of range`);
  return i;
}

function parentOf(doc: Json, path: string): { parent: Json; key: string } {
  const keys = parsePointer(path);
  if (keys.length === 0) throw new JsonPatchError(`${path || '""'}: the whole document cannot be the target here`);
  let cur: Json = doc;
  for (const k of keys.slice(0, -1)) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(cur, k, false, path)]!;
    else if (isObject(cur) && Object.prototype.hasOwnProperty.call(cur, k)) cur = cur[k]!;
    else throw new JsonPatchError(`${path}: ${JSON.stringify(k)} does not exist`);
  }
  return { parent: cur, key: keys[keys.length - 1]! };
}

function get(doc: Json, path: string): Json {
  let cur: Json = doc;
  for (const k of parsePointer(path)) {
    if (Array.isArray(cur)) cur = cur[arrayIndex(cur, k, false, path)]!;
    else if (isObject(cur) && Object.prototype.hasOwnProperty.call(cur, k)) cur = cur[k]!;
    else throw new JsonPatchError(`${path}: does not exist`);
  }
  return cur;
}

function add(doc: Json, path: string, value: Json): Json {
  if (path === '') return value;
  const { parent, key } = parentOf(doc, path);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, key, true, path), 0, value);
  else if (isObject(parent)) parent[key] = value;
  else throw new JsonPatchError(`${path}: the parent is not a container`);
  return doc;
}

function remove(doc: Json, path: string): Json {
  const { parent, key } = parentOf(doc, path);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, key, false, path), 1);
  else if (isObject(parent) && Object.prototype.hasOwnProperty.call(parent, key)) delete parent[key];
  else throw new JsonPatchError(`${path}: does not exist`);
  return doc;
}

function deepEqual(a: Json, b: Json): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]!));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k]!, b[k]!));
  }
  return false;
}

/** The document after the patch; the input is not modified. */
export function applyPatch<T>(document: T, ops: readonly PatchOp[]): T {
  let doc = structuredClone(document) as Json;
  for (const o of ops) {
    if (typeof o.path !== 'string') throw new JsonPatchError(`operation ${JSON.stringify(o.op)} without a path`);
    switch (o.op) {
      case 'add':
        if (!('value' in o)) throw new JsonPatchError(`add ${o.path}: no value`);
        doc = add(doc, o.path, structuredClone(o.value) as Json);
        break;
      case 'remove':
        doc = remove(doc, o.path);
        break;
      case 'replace':
        if (!('value' in o)) throw new JsonPatchError(`replace ${o.path}: no value`);
        get(doc, o.path);
        doc = o.path === '' ? (structuredClone(o.value) as Json) : add(remove(doc, o.path), o.path, structuredClone(o.value) as Json);
        break;
      case 'move': {
        if (typeof o.from !== 'string') throw new JsonPatchError(`move ${o.path}: no from`);
        if (o.path.startsWith(`${o.from}/`)) throw new JsonPatchError(`move ${o.from} into itself`);
        const v = get(doc, o.from);
        doc = add(remove(doc, o.from), o.path, v);
        break;
      }
      case 'copy': {
        if (typeof o.from !== 'string') throw new JsonPatchError(`copy ${o.path}: no from`);
        doc = add(doc, o.path, structuredClone(get(doc, o.from)));
        break;
      }
      case 'test':
        if (!deepEqual(get(doc, o.path), o.value as Json)) throw new JsonPatchError(`test ${o.path}: value differs`);
        break;
      default:
        throw new JsonPatchError(`unknown operation ${JSON.stringify((o as { op: unknown }).op)}`);
    }
  }
  return doc as T;
}
