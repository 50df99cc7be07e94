// The binding between the KBS challenge and the hardware evidence, shared by the KBS and its client:
// REPORT_DATA = hash of the RFC 8785 canonical JSON of the runtime data {nonce, tee-pubkey}, SHA-384
// by default (48 bytes), zero-padded to the report's 64.
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { REPORT_DATA_SIZE } from './report.js';

export type HashAlgorithm = 'sha256' | 'sha384' | 'sha512';
export const DEFAULT_RUNTIME_DATA_HASH: HashAlgorithm = 'sha384';

/** The TEE's public key as the KBS protocol carries it (a JWK; EC keys here). */
export interface TeePubKey {
  kty: string;
  alg?: string;
  crv?: string;
  x?: string;
  y?: string;
  [k: string]: unknown;
}

export interface RuntimeData {
  nonce: string;
  'tee-pubkey': TeePubKey;
}

export function reportDataFor(rd: RuntimeData, alg: HashAlgorithm = DEFAULT_RUNTIME_DATA_HASH): Buffer {
  const text = canonicalize({ nonce: rd.nonce, 'tee-pubkey': rd['tee-pubkey'] });
  if (text === undefined) throw new Error('runtime data cannot be canonicalized');
  const digest = createHash(alg).update(text, 'utf8').digest();
  const out = Buffer.alloc(REPORT_DATA_SIZE);
  digest.copy(out, 0, 0, Math.min(digest.length, REPORT_DATA_SIZE));
  return out;
}
