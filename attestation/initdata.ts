// Initdata as Confidential Containers defines it: a TOML document `version = "0.1.0"`, `algorithm =
// "sha256" | "sha384" | "sha512"`, and a `[data]` table of named texts, of which the guest uses
// "aa.toml" and "cdh.toml" (where the KBS is) and "policy.rego" (the agent policy). Kata takes it from
// the pod annotation io.katacontainers.config.hypervisor.cc_init_data, the document gzip'd and
// base64'd. Its digest (the algorithm's hash of the document's exact text) is bound to the VM at
// launch: on SEV-SNP the 32 bytes of HOST_DATA, the digest cut to 32 bytes (zero-padded if shorter),
// so a verifier that checks HOST_DATA has checked every byte of initdata — the policy and the KBS
// URL with it. Shared by the shim (annotation -> launch data) and the agent (fw_cfg -> policy, KBS).
import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { parse } from 'smol-toml';

export const INITDATA_ANNOTATION = 'io.katacontainers.config.hypervisor.cc_init_data';
export const INITDATA_VERSION = '0.1.0';
export const INITDATA_ALGORITHMS = ['sha256', 'sha384', 'sha512'] as const;
export type InitdataAlgorithm = (typeof INITDATA_ALGORITHMS)[number];
/** The document, decompressed: a generated policy is most of it (the agent takes policies of up to 4 MiB). */
export const MAX_INITDATA_BYTES = 4 * 1024 * 1024;
/** SNP's HOST_DATA. */
export const HOST_DATA_SIZE = 32;

export class InitdataError extends Error {}

export interface Initdata {
  /** The document's exact text (what is digested). */
  text: string;
  algorithm: InitdataAlgorithm;
  data: Record<string, string>;
  /** The algorithm's digest of the text. */
  digest: Buffer;
  /** The launch data the VM is bound to: the digest as SNP's HOST_DATA. */
  hostData: Buffer;
}

/** The digest cut or zero-padded to HOST_DATA's 32 bytes, as Kata does for SNP. */
export function hostDataOf(digest: Buffer): Buffer {
  const out = Buffer.alloc(HOST_DATA_SIZE);
  digest.copy(out, 0, 0, Math.min(digest.length, HOST_DATA_SIZE));
  return out;
}

/** Parses and checks a document; throws InitdataError saying what is wrong. */
export function parseInitdata(text: string): Initdata {
  if (Buffer.byteLength(text) > MAX_INITDATA_BYTES) throw new InitdataError(`the document is larger than ${MAX_INITDATA_BYTES} bytes`);
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new InitdataError(`not TOML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc.version !== INITDATA_VERSION) throw new InitdataError(`version ${JSON.stringify(doc.version)} is not supported (want "${INITDATA_VERSION}")`);
  const algorithm = doc.algorithm;
  if (typeof algorithm !== 'string' || !(INITDATA_ALGORITHMS as readonly string[]).includes(algorithm)) {
    throw new InitdataError(`algorithm ${JSON.stringify(algorithm)} is not one of ${INITDATA_ALGORITHMS.join(', ')}`);
  }
  const raw = doc.data ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new InitdataError('[data] is not a table');
  const data: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new InitdataError(`data.${JSON.stringify(k)} is not a string`);
    data[k] = v;
  }
  const digest = createHash(algorithm).update(text, 'utf8').digest();
  return { text, algorithm: algorithm as InitdataAlgorithm, data, digest, hostData: hostDataOf(digest) };
}

/** The annotation's value (base64 of the gzip'd document) to the document's text, bounded. */
export function decodeInitdataAnnotation(value: string): string {
  const b64 = value.replace(/\s+/g, '');
  if (!b64) throw new InitdataError('the value is empty');
  if (b64.length > Math.ceil(MAX_INITDATA_BYTES / 3) * 4) throw new InitdataError(`the value is larger than ${MAX_INITDATA_BYTES} bytes`);
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(b64)) throw new InitdataError('the value is not base64');
  let bytes: Buffer;
  try {
    bytes = gunzipSync(Buffer.from(b64, 'base64'), { maxOutputLength: MAX_INITDATA_BYTES });
  } catch (e) {
    throw new InitdataError(`the value is not a gzip'd document of at most ${MAX_INITDATA_BYTES} bytes: ${(e as Error).message}`);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new InitdataError('the document is not UTF-8 text');
  }
}

/**
 * The KBS named by the document: cdh.toml's [kbc] url, else aa.toml's [token_configs.kbs] url
 * (CoCo's two places); undefined when neither names one.
 */
export function initdataKbsUrl(d: Pick<Initdata, 'data'>): string | undefined {
  const at = (file: string, path: string[]): string | undefined => {
    const text = d.data[file];
    if (text === undefined) return undefined;
    let v: unknown;
    try {
      v = parse(text);
    } catch (e) {
      throw new InitdataError(`data."${file}" is not TOML: ${(e as Error).message.split('\n')[0]}`);
    }
    for (const k of path) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
    if (v !== undefined && typeof v !== 'string') throw new InitdataError(`data."${file}": ${path.join('.')} is not a string`);
    return v;
  };
  return at('cdh.toml', ['kbc', 'url']) ?? at('aa.toml', ['token_configs', 'kbs', 'url']);
}

/** The agent policy the document carries ("policy.rego"), if any. */
export const initdataPolicy = (d: Pick<Initdata, 'data'>): string | undefined => d.data['policy.rego'];

/** The annotation value for a document (tests, tools): gzip'd, base64. */
export async function encodeInitdataAnnotation(text: string): Promise<string> {
  const { gzipSync } = await import('node:zlib');
  return gzipSync(Buffer.from(text, 'utf8')).toString('base64');
}
