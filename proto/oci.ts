// OCI runtime-spec JSON (config.json) -> grpc.Spec, the form the Kata agent API carries. Kata's
// oci.proto names fields after the Go struct fields (Process, OOMScoreAdj, UIDMappings); the JSON
// names are the same words in lowerCamelCase, with three exceptions listed below. Walking the
// schema instead of a hand-kept table keeps the two in step when the schema grows.
import protobuf from 'protobufjs';
import type { grpc } from './gen/types.js';
import { messageType } from './registry.js';

const JSON_NAME: Record<string, string> = {
  'grpc.Spec.Version': 'ociVersion',
  'grpc.LinuxSyscall.errnoret': 'errnoRet',
  'grpc.LinuxHugepageLimit.Pagesize': 'pageSize',
};

/** The config.json key for a grpc oci.proto field: a leading acronym is lowered as a whole (UIDMappings -> uidMappings). */
export function jsonName(typeName: string, field: string): string {
  const special = JSON_NAME[`${typeName}.${field}`];
  if (special) return special;
  const m = /^([A-Z0-9]+)(?=[A-Z][a-z]|$)/.exec(field);
  if (m && m[1]!.length > 1) return m[1]!.toLowerCase() + field.slice(m[1]!.length);
  return field.charAt(0).toLowerCase() + field.slice(1);
}

export class OciSpecError extends Error {
  override readonly name = 'OciSpecError';
}

function convert(type: protobuf.Type, json: unknown, where: string): Record<string, unknown> {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new OciSpecError(`${where}: expected an object`);
  const src = json as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  const typeName = type.fullName.replace(/^\./, '');
  for (const f of type.fieldsArray) {
    const key = jsonName(typeName, f.name);
    const v = src[key];
    if (v === undefined || v === null) continue;
    const at = `${where}.${key}`;
    if (f instanceof protobuf.MapField) {
      if (typeof v !== 'object' || Array.isArray(v)) throw new OciSpecError(`${at}: expected an object`);
      out[f.name] = Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, String(x)]));
    } else if (f.repeated) {
      if (!Array.isArray(v)) throw new OciSpecError(`${at}: expected an array`);
      out[f.name] = v.map((x, i) => scalarOrMessage(f, x, `${at}[${i}]`));
    } else {
      out[f.name] = scalarOrMessage(f, v, at);
    }
  }
  return out;
}

function scalarOrMessage(f: protobuf.Field, v: unknown, at: string): unknown {
  if (f.resolvedType instanceof protobuf.Type) return convert(f.resolvedType, v, at);
  switch (f.type) {
    case 'string':
      if (typeof v !== 'string') throw new OciSpecError(`${at}: expected a string`);
      return v;
    case 'bool':
      if (typeof v !== 'boolean') throw new OciSpecError(`${at}: expected a boolean`);
      return v;
    default:
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new OciSpecError(`${at}: expected a number`);
      if (f.type.startsWith('uint') && v < 0) throw new OciSpecError(`${at}: must not be negative`);
      return v;
  }
}

/**
 * Converts a parsed config.json into grpc.Spec. Fields the agent API has no room for (e.g.
 * process.user.umask, linux.personality) are dropped, as Kata's runtime drops them.
 */
export function ociToGrpcSpec(config: unknown): grpc.Spec {
  const plain = convert(messageType('grpc.Spec'), config, 'spec');
  return messageType('grpc.Spec').fromObject(plain) as unknown as grpc.Spec;
}

/** Converts a runtime-spec LinuxResources JSON object (as in containerd's Update) into grpc.LinuxResources. */
export function ociToGrpcResources(resources: unknown): grpc.LinuxResources {
  const plain = convert(messageType('grpc.LinuxResources'), resources, 'resources');
  return messageType('grpc.LinuxResources').fromObject(plain) as unknown as grpc.LinuxResources;
}

/** Converts a runtime-spec Process JSON object (containerd's Exec spec) into grpc.Process. */
export function ociToGrpcProcess(processJson: unknown): grpc.Process {
  const plain = convert(messageType('grpc.Process'), processJson, 'process');
  return messageType('grpc.Process').fromObject(plain) as unknown as grpc.Process;
}
