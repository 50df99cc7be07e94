// An agent request as the policy sees it: the JSON Kata's agent gives its Rego engine, built from
// the decoded protobuf message, so Kata's and AKS's generated policies decide on our agent as on
// theirs. Kata serialises its rust-protobuf structs with serde: fields in declaration order with
// their .proto names (OCI's PascalCase, the agent's snake_case), `type` as `type_` (a Rust
// keyword), enums as integers, an unset message as null, repeated fields as arrays (empty when
// absent), maps as objects in the order the map holds them, bytes as arrays of numbers, a set
// oneof as {"Variant": value} after the other fields. CopyFileRequest is presented by its
// metadata, never its bytes (Kata's PolicyCopyFileRequest).
import protobuf from 'protobufjs';
import { messageType } from '../proto/registry.js';

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
