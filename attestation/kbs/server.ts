// The Key Broker Service on fastify: the KBS attestation protocol (RCAR) for SEV-SNP evidence and
// resource release as flattened JWE to the attested TEE key.
//   POST /kbs/v0/auth       Request {version, tee, extra-params} -> Challenge {nonce, extra-params},
//                           Set-Cookie kbs-session-id
//   POST /kbs/v0/attest     Attestation {runtime-data: {nonce, tee-pubkey}, tee-evidence, init-data?}
//                           -> {token} (a JWT, ES256, the claims and tee-pubkey inside)
//   GET  /kbs/v0/resource/<repository>/<type>/<tag>
//                           with the session cookie or `Authorization: Bearer <token>`: the resource
//                           if the attestation policy allows it, as a flattened JWE
//                           (ECDH-ES+A256KW, A256GCM) to tee-pubkey
// Administration (Authorization: Bearer <JWT signed EdDSA by the admin key, exp at most 10 minutes
// away>, as trustee's KBS authenticates its admin):
//   POST /kbs/v0/resource/<repository>/<type>/<tag>   the resource's bytes (application/octet-stream)
//   POST /kbs/v0/resource-policy                      {policy: base64 Rego}; GET returns it
// Every error is ErrorInformation {type, detail} with 400/401/403/404/413.
import fs from 'node:fs';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { FlattenedEncrypt, SignJWT, exportJWK, generateKeyPair, importJWK, jwtVerify, type CryptoKey, type JWK } from 'jose';
import type { Logger } from 'pino';
import { DEFAULT_RUNTIME_DATA_HASH, type HashAlgorithm, type RuntimeData, type TeePubKey } from '../runtime-data.js';
import { KbsError } from './errors.js';
import { verifySnpEvidence, type Claims } from './evidence.js';
import { AttestationPolicy, DENY_ALL, type ResourceRef } from './policy.js';
import { Sessions, type Session } from './sessions.js';

export const COOKIE = 'kbs-session-id';
export const TEE_KEY_ALG = 'ECDH-ES+A256KW';
export const CONTENT_ENC = 'A256GCM';
/** Protocol versions this KBS speaks (trustee's 0.1.0 through 0.4.x: the same RCAR messages). */
const VERSION = /^0\.[0-4]\.\d+$/;
/** A resource path component: no '/', no '.' or '..', nothing a filesystem reads specially. */
const COMPONENT = '^(?!\\.\\.?$)[A-Za-z0-9._-]{1,128}$';
const COMPONENT_RE = new RegExp(COMPONENT);

export interface KbsOptions {
  /** DER of the ARKs whose chips this KBS believes (the node's emulated ARK; AMD's on real hardware). */
  trustedArks: Buffer[];
  /** Ed25519 public key of the administrator. */
  adminPublicKey: KeyObject;
  /** Resources live at <dir>/<repository>/<type>/<tag>. */
  resourcesDir: string;
  logger: Logger;
  policy?: string;
  sessionTimeoutMs?: number;
  maxSessions?: number;
  tokenTtlSeconds?: number;
  /** Largest protocol request body (auth, attest). */
  bodyLimit?: number;
  /** Largest resource an administrator may store. */
  resourceLimit?: number;
  runtimeDataHash?: HashAlgorithm;
  issuer?: string;
}

const componentSchema = { type: 'string', pattern: COMPONENT };
const resourceParams = {
  type: 'object',
  required: ['repository', 'type', 'tag'],
  properties: { repository: componentSchema, type: componentSchema, tag: componentSchema },
} as const;
const errorInformation = { type: 'object', required: ['type', 'detail'], properties: { type: { type: 'string' }, detail: { type: 'string' } } } as const;

function cookieOf(req: FastifyRequest): string | undefined {
  const h = req.headers.cookie;
  if (!h) return undefined;
  for (const part of h.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === COOKIE) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined;
}

export interface Kbs {
  app: FastifyInstance;
  sessions: Sessions;
  /** The token key's public JWK (for relying parties that check KBS tokens). */
  tokenKey: JWK;
}

export async function buildKbs(o: KbsOptions): Promise<Kbs> {
  if (!o.trustedArks.length) throw new Error('the KBS needs at least one trusted ARK');
  const sessionTimeoutMs = o.sessionTimeoutMs ?? 300_000;
  const tokenTtl = o.tokenTtlSeconds ?? 300;
  const hashAlg = o.runtimeDataHash ?? DEFAULT_RUNTIME_DATA_HASH;
  const issuer = o.issuer ?? 'katats-kbs';
  const sessions = new Sessions(sessionTimeoutMs, o.maxSessions ?? 10_000);
  let policy = AttestationPolicy.compile(o.policy ?? DENY_ALL);
  const token = await generateKeyPair('ES256', { extractable: true });
  fs.mkdirSync(o.resourcesDir, { recursive: true, mode: 0o700 });

  const app = Fastify({ loggerInstance: o.logger as FastifyBaseLogger, bodyLimit: o.bodyLimit ?? 64 * 1024 });
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer', bodyLimit: o.resourceLimit ?? 1024 * 1024 }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: Error & { validation?: unknown; code?: string; statusCode?: number }, req, reply) => {
    let e: KbsError;
    if (err instanceof KbsError) e = err;
    else if (err.validation) e = new KbsError('InvalidRequest', err.message);
    else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new KbsError('PayloadTooLarge', err.message);
    else if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) e = new KbsError('InvalidRequest', err.message);
    else {
      req.log.error({ err }, 'KBS request failed');
      e = new KbsError('InternalError', 'internal error');
    }
    if (e.status >= 400 && e.status < 500) req.log.info({ url: req.url.slice(0, 200), problem: e.problem, detail: e.message }, 'KBS request refused');
    return reply.code(e.status).type('application/json').send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new KbsError('ResourceNotFound', `no such endpoint: ${req.method} ${req.url.slice(0, 200)}`);
    return reply.code(e.status).send(e.body());
  });

  // ---- RCAR ----
  app.post<{ Body: { version: string; tee: string; 'extra-params'?: unknown } }>('/kbs/v0/auth', {
    schema: {
      body: { type: 'object', required: ['version', 'tee'], properties: { version: { type: 'string', maxLength: 32 }, tee: { type: 'string', maxLength: 64 }, 'extra-params': {} } },
      response: { 200: { type: 'object', required: ['nonce', 'extra-params'], properties: { nonce: { type: 'string' }, 'extra-params': { type: 'object', additionalProperties: true } } }, '4xx': errorInformation },
    },
  }, async (req, reply) => {
    if (!VERSION.test(req.body.version)) throw new KbsError('ProtocolVersion', `protocol version ${JSON.stringify(req.body.version)} is not supported (0.1.0 - 0.4.x)`);
    if (req.body.tee !== 'snp') throw new KbsError('UnsupportedTee', `tee ${JSON.stringify(req.body.tee)} is not supported (snp)`);
    const s = sessions.create(req.body.tee);
    reply.header('set-cookie', `${COOKIE}=${s.id}; Path=/kbs/v0; Max-Age=${Math.ceil(sessionTimeoutMs / 1000)}; HttpOnly; SameSite=Strict`);
    return { nonce: s.nonce, 'extra-params': {} };
  });

  app.post<{ Body: { 'runtime-data': RuntimeData; 'tee-evidence': unknown; 'init-data'?: unknown } }>('/kbs/v0/attest', {
    schema: {
      body: {
        type: 'object',
        required: ['runtime-data', 'tee-evidence'],
        properties: {
          'runtime-data': {
            type: 'object',
            required: ['nonce', 'tee-pubkey'],
            properties: { nonce: { type: 'string', maxLength: 128 }, 'tee-pubkey': { type: 'object', required: ['kty'], properties: { kty: { type: 'string' } } } },
          },
          'tee-evidence': { type: 'object' },
          'init-data': {},
        },
      },
      response: { 200: { type: 'object', required: ['token'], properties: { token: { type: 'string' } } }, '4xx': errorInformation },
    },
  }, async (req, reply) => {
    const s = sessions.get(cookieOf(req));
    if (s.answered) throw new KbsError('ChallengeConsumed', 'this session\'s challenge was already answered: start again with POST /kbs/v0/auth');
    // Whatever the outcome, the nonce is spent: a second answer to it is a replay.
    s.answered = true;
    const rd = req.body['runtime-data'];
    if (rd.nonce !== s.nonce) throw new KbsError('AttestationFailed', 'runtime-data nonce is not this session\'s challenge');
    const teeKey = rd['tee-pubkey'];
    await teeEncryptionKey(teeKey);
    const claims = await verifySnpEvidence(req.body['tee-evidence'], rd, o.trustedArks, hashAlg);
    const jwt = await new SignJWT({ tee: s.tee, snp: claims as unknown as Record<string, unknown>, 'tee-pubkey': teeKey as JWK })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT' })
      .setIssuer(issuer)
      .setIssuedAt()
      .setExpirationTime(`${tokenTtl}s`)
      .sign(token.privateKey);
    s.attested = { claims, teePubKey: teeKey, token: jwt };
    req.log.info({ session: s.id, measurement: claims.measurement, host_data: claims.host_data }, 'attested');
    reply.header('set-cookie', `${COOKIE}=${s.id}; Path=/kbs/v0; Max-Age=${Math.max(1, Math.ceil((s.expiresAt - Date.now()) / 1000))}; HttpOnly; SameSite=Strict`);
    return { token: jwt };
  });

  async function attestedBy(req: FastifyRequest): Promise<{ tee: string; claims: Claims; teePubKey: TeePubKey }> {
    const t = bearer(req);
    if (t) {
      try {
        const { payload } = await jwtVerify(t, token.publicKey, { issuer, algorithms: ['ES256'] });
        return { tee: String(payload.tee), claims: payload.snp as Claims, teePubKey: payload['tee-pubkey'] as TeePubKey };
      } catch (e) {
        throw new KbsError('TokenInvalid', `attestation token: ${(e as Error).message}`);
      }
    }
    const s: Session = sessions.get(cookieOf(req));
    if (!s.attested) throw new KbsError('AttestationFailed', 'the session has not attested: POST /kbs/v0/attest first');
    return { tee: s.tee, claims: s.attested.claims, teePubKey: s.attested.teePubKey };
  }

  app.get<{ Params: ResourceRef }>('/kbs/v0/resource/:repository/:type/:tag', {
    schema: {
      params: resourceParams,
      response: {
        200: { type: 'object', required: ['protected', 'encrypted_key', 'iv', 'ciphertext', 'tag'], properties: { protected: { type: 'string' }, encrypted_key: { type: 'string' }, iv: { type: 'string' }, ciphertext: { type: 'string' }, tag: { type: 'string' } } },
        '4xx': errorInformation,
      },
    },
  }, async (req) => {
    const who = await attestedBy(req);
    const ref = req.params;
    if (!policy.allows(who.tee, who.claims, ref)) throw new KbsError('PolicyDeny', `the attestation policy does not release ${ref.repository}/${ref.type}/${ref.tag} to this TEE`);
    const data = await readResource(o.resourcesDir, ref);
    const jwe = await new FlattenedEncrypt(data).setProtectedHeader({ alg: TEE_KEY_ALG, enc: CONTENT_ENC }).encrypt(await teeEncryptionKey(who.teePubKey));
    return jwe;
  });

  // ---- administration ----
  async function admin(req: FastifyRequest): Promise<void> {
    const t = bearer(req);
    if (!t) throw new KbsError('AdminAuthFailed', 'administration needs Authorization: Bearer <admin token>');
    try {
      await jwtVerify(t, o.adminPublicKey, { algorithms: ['EdDSA'], requiredClaims: ['exp', 'iat'], maxTokenAge: '10m' });
    } catch (e) {
      throw new KbsError('AdminAuthFailed', `admin token: ${(e as Error).message}`);
    }
  }

  app.post<{ Params: ResourceRef; Body: Buffer }>('/kbs/v0/resource/:repository/:type/:tag', { schema: { params: resourceParams } }, async (req, reply) => {
    await admin(req);
    if (!Buffer.isBuffer(req.body)) throw new KbsError('InvalidRequest', 'a resource is sent as application/octet-stream');
    writeResource(o.resourcesDir, req.params, req.body);
    req.log.info({ resource: `${req.params.repository}/${req.params.type}/${req.params.tag}`, bytes: req.body.length }, 'resource set');
    return reply.code(200).send();
  });

  app.post<{ Body: { policy: string } }>('/kbs/v0/resource-policy', {
    // A policy may be larger than a protocol message; the admin token is checked before it is compiled.
    bodyLimit: 2 * 1024 * 1024,
    schema: { body: { type: 'object', required: ['policy'], properties: { policy: { type: 'string', maxLength: 1024 * 1024 } } } },
  }, async (req, reply) => {
    await admin(req);
    const text = Buffer.from(req.body.policy, 'base64url').toString('utf8');
    policy = AttestationPolicy.compile(text);
    req.log.info({ bytes: text.length }, 'attestation policy set');
    return reply.code(200).send();
  });

  app.get('/kbs/v0/resource-policy', async (req) => {
    await admin(req);
    return { policy: Buffer.from(policy.text).toString('base64url') };
  });

  return { app, sessions, tokenKey: await exportJWK(token.publicKey) };
}

async function teeEncryptionKey(jwk: TeePubKey): Promise<CryptoKey> {
  if (jwk.kty !== 'EC' || !['P-256', 'P-384', 'P-521'].includes(String(jwk.crv))) throw new KbsError('InvalidRequest', 'tee-pubkey must be an EC JWK (P-256, P-384 or P-521) for ECDH-ES+A256KW');
  if (jwk.alg !== undefined && jwk.alg !== TEE_KEY_ALG) throw new KbsError('InvalidRequest', `tee-pubkey alg ${JSON.stringify(jwk.alg)} is not ${TEE_KEY_ALG}`);
  if ('d' in jwk) throw new KbsError('InvalidRequest', 'tee-pubkey carries a private key');
  try {
    return (await importJWK({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } as JWK, TEE_KEY_ALG)) as CryptoKey;
  } catch (e) {
    throw new KbsError('InvalidRequest', `tee-pubkey: ${(e as Error).message}`);
  }
}

function resourcePath(dir: string, r: ResourceRef): string {
  // The route schema already refused anything else; checked again here because this is the line a path is made on.
  for (const c of [r.repository, r.type, r.tag]) if (!COMPONENT_RE.test(c)) throw new KbsError('InvalidRequest', 'invalid resource path');
  return path.join(dir, r.repository, r.type, r.tag);
}

async function readResource(dir: string, r: ResourceRef): Promise<Buffer> {
  try {
    return await fs.promises.readFile(resourcePath(dir, r));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'EISDIR') throw new KbsError('ResourceNotFound', `no resource ${r.repository}/${r.type}/${r.tag}`);
    throw e;
  }
}

function writeResource(dir: string, r: ResourceRef, data: Buffer): void {
  const p = resourcePath(dir, r);
  fs.mkdirSync(path.dirname(p), { recursive: true, mode: 0o700 });
  fs.writeFileSync(`${p}.tmp`, data, { mode: 0o600 });
  fs.renameSync(`${p}.tmp`, p);
}

