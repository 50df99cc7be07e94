// An agent request as the policy sees it: the JSON Kata's agent gives its Rego engine, built from
// the decoded protobuf message, so Kata's and AKS's generated policies decide on our agent as on
// theirs. Kata serialises its rust-protobuf structs with serde: fields in declaration order with
// their .proto names (OCI's PascalCase, the agent's snake_case), `type` as `type_` (a Rust
// keyword), enums as integers, an unset message as null, repeated fields as arrays (empty when
// absent), maps as objects in the order the map holds them, bytes as arrays of numbers, a set
// oneof as {"Variant": value} after the other fields. CopyFileRequest is presented by its
// metadata, never its bytes (Kata's PolicyCopyFileRequest).
//
// policyInputValue builds the same input as a Rego value directly, without JSON text in between
// (the agent's gate uses it: a 64 KiB WriteStdin's data as JSON text is 200 KB to write and parse).
import protobuf from 'protobufjs';
import { messageType } from '../proto/registry.js';
import { parseJSON } from './json.js';
import { normInt, RObject, type Value } from './values.js';

export class PolicyInputError extends Error {
  override readonly name = 'PolicyInputError';
  readonly code = 'KATATS_POLICY_INPUT';
}

const RUST_KEYWORDS = new Set(['type']);

function jsonName(field: string): string {
  return RUST_KEYWORDS.has(field) ? `${field}_` : field;
}

function variantName(field: string): string {
  return field.replace(/(^|_)([a-z0-9])/g, (_, __, c: string) => c.toUpperCase());
}

function has(m: object, name: string): boolean {
  return Object.prototype.hasOwnProperty.call(m, name);
}

function scalar(f: protobuf.Field, v: unknown): string {
  if (f.resolvedType instanceof protobuf.Enum) return String(typeof v === 'number' ? v : 0);
  switch (f.type) {
    case 'string':
      return JSON.stringify(typeof v === 'string' ? v : '');
    case 'bool':
      return v === true ? 'true' : 'false';
    case 'bytes': {
      const b = v instanceof Uint8Array ? v : new Uint8Array(0);
      return `[${b.join(',')}]`;
    }
    default:
      if (typeof v === 'number') return Number.isFinite(v) ? String(v) : '0';
      if (typeof v === 'bigint') return v.toString();
      return '0';
  }
}

function value(f: protobuf.Field, v: unknown): string {
  if (f.resolvedType instanceof protobuf.Type) return v === null || v === undefined ? 'null' : message(f.resolvedType, v as object);
  return scalar(f, v);
}

function defaultOf(f: protobuf.Field): string {
  if (f.resolvedType instanceof protobuf.Type) return 'null';
  return scalar(f, undefined);
}

/** The JSON text of one decoded message of type `t`. */
export function message(t: protobuf.Type, m: object): string {
  const parts: string[] = [];
  const oneofs: string[] = [];
  for (const f of t.fieldsArray) {
    const name = jsonName(f.name);
    const set = has(m, f.name);
    const v = set ? (m as Record<string, unknown>)[f.name] : undefined;
    if (f.partOf && !(f.partOf.fieldsArray.length === 1 && f.partOf.name.startsWith('_'))) {
      // a real oneof: serialised once, as the variant that is set
      if (set && v !== null && v !== undefined && (m as Record<string, unknown>)[f.partOf.name] === f.name) {
        oneofs.push(`${JSON.stringify(f.partOf.name)}:{${JSON.stringify(variantName(f.name))}:${value(f, v)}}`);
      }
      continue;
    }
    if (f.map) {
      const obj = (set ? v : {}) as Record<string, unknown>;
      const entries = Object.keys(obj).map((k) => `${JSON.stringify(k)}:${value(f, obj[k])}`);
      parts.push(`${JSON.stringify(name)}:{${entries.join(',')}}`);
    } else if (f.repeated) {
      const arr = (set && Array.isArray(v) ? v : []) as unknown[];
      parts.push(`${JSON.stringify(name)}:[${arr.map((x) => value(f, x)).join(',')}]`);
    } else {
      parts.push(`${JSON.stringify(name)}:${set ? value(f, v) : defaultOf(f)}`);
    }
  }
  for (const o of t.oneofsArray) {
    if (o.fieldsArray.length === 1 && o.name.startsWith('_')) continue;
    if (!oneofs.some((x) => x.startsWith(`${JSON.stringify(o.name)}:`))) oneofs.push(`${JSON.stringify(o.name)}:null`);
  }
  return `{${[...parts, ...oneofs].join(',')}}`;
}

const S_IFMT = 0o170000;
const FILE_TYPES: Record<number, string> = { 0o100000: 'Regular', 0o040000: 'Directory', 0o120000: 'Symlink' };

interface CopyFileLike {
  path?: string;
  file_size?: number;
  file_mode?: number;
  dir_mode?: number;
  uid?: number;
  gid?: number;
  offset?: number;
  data?: Uint8Array;
}

/** Kata's PolicyCopyFileRequest: the file's type and, for a symlink, its target instead of the data. */
export function copyFileInput(m: CopyFileLike): string {
  const mode = m.file_mode ?? 0;
  const type = FILE_TYPES[mode & S_IFMT] ?? 'Unknown';
  let target = 'null';
  if (type === 'Symlink') {
    try {
      target = JSON.stringify(new TextDecoder('utf-8', { fatal: true }).decode(m.data ?? new Uint8Array(0)));
    } catch {
      throw new PolicyInputError('CopyFileRequest: invalid symlink content (not UTF-8)');
    }
  }
  const n = (x: number | undefined) => String(x ?? 0);
  return `{"path":${JSON.stringify(m.path ?? '')},"file_type":"${type}","symlink_target":${target},"file_size":${n(m.file_size)},"file_mode":${n(m.file_mode)},"dir_mode":${n(m.dir_mode)},"uid":${n(m.uid)},"gid":${n(m.gid)},"offset":${n(m.offset)}}`;
}

/**
 * The policy input (JSON text) for a decoded request of the named message type (full protobuf
 * name, e.g. "grpc.CreateContainerRequest").
 */
export function policyInput(typeName: string, m: object): string {
  if (typeName === 'grpc.CopyFileRequest') return copyFileInput(m as CopyFileLike);
  return message(messageType(typeName), m);
}

// ---- the same input as a Rego value ----

function scalarValue(f: protobuf.Field, v: unknown): Value {
  if (f.resolvedType instanceof protobuf.Enum) return typeof v === 'number' ? numberValue(v) : 0;
  switch (f.type) {
    case 'string':
      return typeof v === 'string' ? v : '';
    case 'bool':
      return v === true;
    case 'bytes': {
      const b = v instanceof Uint8Array ? v : new Uint8Array(0);
      const out = new Array<Value>(b.length);
      for (let i = 0; i < b.length; i++) out[i] = b[i]!;
      return out;
    }
    default:
      if (typeof v === 'number') return Number.isFinite(v) ? numberValue(v) : 0;
      if (typeof v === 'bigint') return normInt(v);
      return 0;
  }
}

/** A number as its JSON text would read back: -0 is 0, an integer beyond 2^53 an exact bigint. */
function numberValue(v: number): Value {
  if (Object.is(v, -0)) return 0;
  if (Number.isInteger(v) && !Number.isSafeInteger(v)) return parseJSON(String(v));
  return v;
}

function fieldValue(f: protobuf.Field, v: unknown): Value {
  if (f.resolvedType instanceof protobuf.Type) return v === null || v === undefined ? null : messageValue(f.resolvedType, v as object);
  return scalarValue(f, v);
}

/** One decoded message of type `t` as the value its JSON text (message()) parses to. */
export function messageValue(t: protobuf.Type, m: object): Value {
  const o = new RObject();
  const oneofs = new Map<string, Value>();
  for (const f of t.fieldsArray) {
    const set = has(m, f.name);
    const v = set ? (m as Record<string, unknown>)[f.name] : undefined;
    if (f.partOf && !(f.partOf.fieldsArray.length === 1 && f.partOf.name.startsWith('_'))) {
      if (set && v !== null && v !== undefined && (m as Record<string, unknown>)[f.partOf.name] === f.name) {
        oneofs.set(f.partOf.name, RObject.of([[variantName(f.name), fieldValue(f, v)]]));
      }
      continue;
    }
    const name = jsonName(f.name);
    if (f.map) {
      const obj = (set ? v : {}) as Record<string, unknown>;
      const mv = new RObject();
      for (const k of Object.keys(obj)) mv.set(k, fieldValue(f, obj[k]));
      o.set(name, mv);
    } else if (f.repeated) {
      const arr = (set && Array.isArray(v) ? v : []) as unknown[];
      o.set(
        name,
        arr.map((x) => fieldValue(f, x)),
      );
    } else {
      o.set(name, set ? fieldValue(f, v) : f.resolvedType instanceof protobuf.Type ? null : scalarValue(f, undefined));
    }
  }
  for (const oneof of t.oneofsArray) {
    if (oneof.fieldsArray.length === 1 && oneof.name.startsWith('_')) continue;
    o.set(oneof.name, oneofs.get(oneof.name) ?? null);
  }
  return o;
}

/** policyInput's value, built without its JSON text. */
export function policyInputValue(typeName: string, m: object): Value {
  if (typeName === 'grpc.CopyFileRequest') return parseJSON(copyFileInput(m as CopyFileLike), 'CopyFileRequest input');
  return messageValue(messageType(typeName), m);
}
