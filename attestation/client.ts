// The guest's KBS client (the attestation agent's part of RCAR), written to run in the guest on
// node 18: an ephemeral TEE key pair per attestation, POST /kbs/v0/auth, a report whose REPORT_DATA
// binds the nonce and the TEE key, POST /kbs/v0/attest, then resources fetched with the token
// (cached until shortly before it expires; a 401 re-attests once) and decrypted with the TEE key.
import { decodeJwt, exportJWK, flattenedDecrypt, generateKeyPair, type CryptoKey, type FlattenedJWE } from 'jose';
import type { ReportDevice } from './device.js';
import { reportDataFor, type RuntimeData, type TeePubKey } from './runtime-data.js';
import type { ErrorInformation } from './kbs/errors.js';
import type { SnpEvidence } from './kbs/evidence.js';
import { AnswerTooLarge, httpRequest, type HttpAnswer } from './http-request.js';


export const PROTOCOL_VERSION = '0.4.0';
const TEE_KEY_ALG = 'ECDH-ES+A256KW';
/** Largest KBS answer read (a resource of 1 MiB, base64 in a JWE, plus room). */
const MAX_RESPONSE = 2 * 1024 * 1024;
/** A cached token is not used in its last seconds (clock skew, the request's own time). */
const TOKEN_MARGIN_S = 10;

export class KbsClientError extends Error {
  constructor(
    readonly status: number,
    readonly info: ErrorInformation | undefined,
    message: string,
  ) {
    super(message);
  }
}

export interface KbsClientOptions {
  /** http(s)://host:port of the KBS. */
  url: string;
  device: ReportDevice;
  /** Each HTTP request's limit. */
  timeoutMs?: number;
}

interface Attested {
  token: string;
  exp: number;
  privateKey: CryptoKey;
}

export class KbsClient {
  private attested?: Attested;
  /** Exchanges made (for tests and the bench: a cached token makes none). */
  attestations = 0;

  constructor(private readonly o: KbsClientOptions) {}

  private async call(method: string, p: string, init: { body?: unknown; cookie?: string; token?: string } = {}): Promise<HttpAnswer> {
    const headers: Record<string, string> = {};
    if (init.body !== undefined) headers['content-type'] = 'application/json';
    if (init.cookie) headers.cookie = init.cookie;
    if (init.token) headers.authorization = `Bearer ${init.token}`;
    const res = await httpRequest(new URL(p, this.o.url), {
      method,
      headers,
      ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
      timeoutMs: this.o.timeoutMs ?? 30_000,
      timeoutCode: 'KATATS_KBS_CALL_TIMEOUT',
      maxBytes: MAX_RESPONSE,
    }).catch((e: unknown) => {
      throw e instanceof AnswerTooLarge ? new KbsClientError(e.status, undefined, `${method} ${p}: KBS answer is larger than ${MAX_RESPONSE} bytes`) : e;
    });
    if (res.status < 200 || res.status > 299) {
      let info: ErrorInformation | undefined;
      try {
        info = JSON.parse(res.body.toString('utf8')) as ErrorInformation;
      } catch {
        info = undefined;
      }
      throw new KbsClientError(res.status, info, `${method} ${p}: ${res.status}${info ? ` ${info.type.split('/').pop()}: ${info.detail}` : ''}`);
    }
    return res;
  }

  /** The whole RCAR exchange; returns the attestation token. */
  async attest(): Promise<string> {
    const auth = await this.call('POST', '/kbs/v0/auth', { body: { version: PROTOCOL_VERSION, tee: 'snp', 'extra-params': {} } });
    const setCookie = (auth.headers['set-cookie'] ?? []).join(', ');
    const m = /kbs-session-id=([^;,\s]+)/.exec(setCookie);
    if (!m) throw new KbsClientError(auth.status, undefined, 'the KBS set no kbs-session-id cookie');
    const cookie = `kbs-session-id=${m[1]}`;
    const { nonce } = JSON.parse(auth.body.toString('utf8')) as { nonce: string };
    const { publicKey, privateKey } = await generateKeyPair(TEE_KEY_ALG, { crv: 'P-256', extractable: false });
    const jwk = await exportJWK(publicKey);
    const teePubKey: TeePubKey = { kty: jwk.kty!, crv: jwk.crv!, alg: TEE_KEY_ALG, x: jwk.x!, y: jwk.y! };
    const runtime: RuntimeData = { nonce, 'tee-pubkey': teePubKey };
    const ext = await this.o.device.getReport(reportDataFor(runtime));
    const evidence: SnpEvidence = {
      attestation_report: ext.report.toString('base64'),
      cert_chain: (['ark', 'ask', 'vcek'] as const).filter((k) => ext.certs[k]).map((k) => ({ cert_type: k, data: ext.certs[k]!.toString('base64') })),
    };
    const att = await this.call('POST', '/kbs/v0/attest', { cookie, body: { 'runtime-data': runtime, 'tee-evidence': evidence } });
    const { token } = JSON.parse(att.body.toString('utf8')) as { token: string };
    const exp = decodeJwt(token).exp ?? 0;
    this.attested = { token, exp, privateKey };
    this.attestations++;
    return token;
  }

  /** A resource's plaintext: with the cached token, attesting first when there is none or it was refused. */
  async getResource(repository: string, type: string, tag: string): Promise<Buffer> {
    const p = `/kbs/v0/resource/${[repository, type, tag].map(encodeURIComponent).join('/')}`;
    const fresh = this.attested && this.attested.exp - TOKEN_MARGIN_S > Date.now() / 1000;
    if (!fresh) await this.attest();
    let r;
    try {
      r = await this.call('GET', p, { token: this.attested!.token });
    } catch (e) {
      if (!(e instanceof KbsClientError) || e.status !== 401 || !fresh) throw e;
      await this.attest();
      r = await this.call('GET', p, { token: this.attested!.token });
    }
    const jwe = JSON.parse(r.body.toString('utf8')) as FlattenedJWE;
    const { plaintext } = await flattenedDecrypt(jwe, this.attested!.privateKey, { keyManagementAlgorithms: [TEE_KEY_ALG], contentEncryptionAlgorithms: ['A256GCM'] });
    return Buffer.from(plaintext);
  }

  /** Forgets the token (the next request attests again). */
  reset(): void {
    this.attested = undefined;
  }
}
