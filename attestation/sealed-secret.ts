// Sealed secrets as Confidential Containers writes them: `sealed.<JWS header>.<JWS payload>.<signature>`,
// the payload base64url JSON. The kind this guest unseals is CoCo's "vault" secret whose provider is
// the KBS: `{version: "0.1.0", type: "vault", name: "kbs:///<repository>/<type>/<tag>", provider:
// "kbs", provider_settings: {}, annotations: {}}`: the plaintext is the KBS resource `name` names,
// released only to an attested pod. "envelope" secrets (a data key wrapped by a KMS) are refused with
// a clear error: no KMS is reachable here.
//
// The JWS header and signature are carried but not verified, as CoCo's data hub does today: what
// protects the secret is the KBS's decision, and a forged sealed value can name only a resource the
// KBS would release to this pod anyway. A host that changes a sealed env value changes the container's
// spec, which the pod's policy decides (it sees the sealed text, not the plaintext).
import type { ResourcePath } from './resource-uri.js';
import { parseResourceUri } from './resource-uri.js';

export const SEALED_PREFIX = 'sealed.';
/** A sealed value is a few hundred bytes; a larger one is not a sealed secret of ours. */
export const MAX_SEALED_BYTES = 64 * 1024;
const B64URL = /^[A-Za-z0-9_-]*={0,2}$/;

export class SealedSecretError extends Error {}

export interface SealedSecret {
  /** The resource URI as written (`kbs:///repo/type/tag`). */
  uri: string;
  resource: ResourcePath;
}

export const isSealed = (value: string): boolean => value.startsWith(SEALED_PREFIX);

/** Parses a sealed value; throws SealedSecretError saying what is wrong with it. */
export function parseSealedSecret(value: string): SealedSecret {
  if (!isSealed(value)) throw new SealedSecretError(`not a sealed secret (no "${SEALED_PREFIX}" prefix)`);
  if (value.length > MAX_SEALED_BYTES) throw new SealedSecretError(`a sealed secret of ${value.length} bytes is larger than ${MAX_SEALED_BYTES}`);
  const parts = value.trim().slice(SEALED_PREFIX.length).split('.');
  if (parts.length !== 3) throw new SealedSecretError(`want sealed.<header>.<payload>.<signature>, got ${parts.length} dot-separated parts after "sealed."`);
  const payload = parts[1]!;
  if (!payload || !B64URL.test(payload)) throw new SealedSecretError('the payload is not base64url');
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch (e) {
    throw new SealedSecretError(`the payload is not JSON: ${(e as Error).message}`);
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new SealedSecretError('the payload is not a JSON object');
  const b = body as Record<string, unknown>;
  if (b.version !== '0.1.0') throw new SealedSecretError(`version ${JSON.stringify(b.version)} is not supported (want "0.1.0")`);
  if (b.type === 'envelope') throw new SealedSecretError('envelope secrets (a data key wrapped by a KMS) are not supported here; seal a KBS resource ("type": "vault", "provider": "kbs")');
  if (b.type !== 'vault') throw new SealedSecretError(`type ${JSON.stringify(b.type)} is not supported (want "vault")`);
  if (b.provider !== 'kbs') throw new SealedSecretError(`provider ${JSON.stringify(b.provider)} is not supported (want "kbs")`);
  if (typeof b.name !== 'string') throw new SealedSecretError('"name" (the resource URI) is missing');
  try {
    return { uri: b.name, resource: parseResourceUri(b.name) };
  } catch (e) {
    throw new SealedSecretError((e as Error).message);
  }
}

/**
 * A sealed value naming `uri`, as CoCo's `secret seal vault` writes one (header and signature
 * placeholders: neither is verified by the guest).
 */
export function sealSecret(uri: string): string {
  parseResourceUri(uri);
  const payload = { version: '0.1.0', type: 'vault', name: uri, provider: 'kbs', provider_settings: {}, annotations: {} };
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${SEALED_PREFIX}${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.${Buffer.from('unsigned').toString('base64url')}`;
}
