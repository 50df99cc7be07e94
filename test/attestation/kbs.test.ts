// The KBS and the guest's client, host-only: a real SNP daemon gives each pod its report socket, a
// real fastify KBS on a loopback port, and the client the guest will run. Each protocol attack is
// performed and refused with its ErrorInformation, and the KBS serves the next good request.
import { createHash, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnpDaemon } from '../../attestation/daemon.js';
import { EmulatedSnpDevice, type ReportDevice } from '../../attestation/device.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { KbsClient, KbsClientError } from '../../attestation/client.js';
import { adminToken } from '../../attestation/kbs/cli.js';
import { buildKbs, type Kbs } from '../../attestation/kbs/server.js';
import { reportDataFor, type RuntimeData } from '../../attestation/runtime-data.js';
import { tempDir } from '../support/tmp.js';

const RSA_BITS = 2048;
const tmp = tempDir('katats-kbs-');
const log = pino({ level: 'silent' });
const MEASUREMENT = 'a5'.repeat(48);
const OTHER_MEASUREMENT = 'b6'.repeat(48);
const HOST_DATA = createHash('sha256').update('package agent_policy\ndefault allow := true\n').digest('hex');
const OTHER_HOST_DATA = createHash('sha256').update('package agent_policy\ndefault allow := true\n# one line more\n').digest('hex');
const SECRET = Buffer.from('the disk key of the pod, 32 bytes');

const POLICY = `package kbs

default allow := false

allow if {
  input.tee == "snp"
  input.snp.measurement == "${MEASUREMENT}"
  input.snp.host_data == "${HOST_DATA}"
  input.snp.policy.debug == false
  input.snp.reported_tcb.snp >= 8
  input.resource.repository == "default"
}
`;

let fw: SnpFirmware;
let other: SnpFirmware;
let daemon: SnpDaemon;
const ports: Record<string, string> = {};
let kbs: Kbs;
let url: string;
let adminKey: string;

async function launch(vm: string, measurement: string, hostData: string): Promise<void> {
  ports[vm] = await daemon.launch(vm, Buffer.from(measurement, 'hex'), Buffer.from(hostData, 'hex'));
}

type Answer = { status: number; json: Record<string, unknown>; headers: Headers };
async function post(p: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {}, headers: res.headers };
}

/** A request sent byte for byte (fetch would resolve dot segments before sending). */
function rawGet(p: string, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: p, method: 'GET', headers }, (res) => {
      let b = '';
      res.on('data', (c: Buffer) => (b += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(b || '{}') as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function admin(p: string, body: Buffer | object, token?: string): Promise<number> {
  const isBuf = Buffer.isBuffer(body);
  const res = await fetch(url + p, {
    method: 'POST',
    headers: { 'content-type': isBuf ? 'application/octet-stream' : 'application/json', ...(token === '' ? {} : { authorization: `Bearer ${token ?? (await adminToken(adminKey))}` }) },
    body: isBuf ? body : JSON.stringify(body),
  });
  await res.arrayBuffer();
  return res.status;
}

/** The session cookie and challenge of a fresh /auth. */
async function auth(): Promise<{ cookie: string; nonce: string }> {
  const r = await post('/kbs/v0/auth', { version: '0.4.0', tee: 'snp', 'extra-params': {} });
  expect(r.status).toBe(200);
  return { cookie: /kbs-session-id=[^;]+/.exec(r.headers.get('set-cookie')!)![0], nonce: r.json.nonce as string };
}

const TEE_PUBKEY = { kty: 'EC', crv: 'P-256', alg: 'ECDH-ES+A256KW', x: 'gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0', y: 'SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps' };

/** An Attestation payload for `nonce` from `device` (what the client sends, built by hand for the attacks). */
async function attestation(device: ReportDevice, nonce: string, mutate?: (report: Buffer) => void): Promise<object> {
  const runtime: RuntimeData = { nonce, 'tee-pubkey': TEE_PUBKEY };
  const ext = await device.getReport(reportDataFor(runtime));
  mutate?.(ext.report);
  const certs = (['ark', 'ask', 'vcek'] as const).map((k) => ({ cert_type: k, data: ext.certs[k]!.toString('base64') }));
  return { 'runtime-data': runtime, 'tee-evidence': { attestation_report: ext.report.toString('base64'), cert_chain: certs } };
}

function problem(j: Record<string, unknown>): string {
  return String(j.type).split('/').pop()!;
}

const client = (vm: string): KbsClient => new KbsClient({ url, device: new EmulatedSnpDevice(ports[vm]!) });

async function stillServes(): Promise<void> {
  expect(await client('good').getResource('default', 'key', 'disk')).toEqual(SECRET);
}

beforeAll(async () => {
  fw = await SnpFirmware.open(path.join(tmp.dir, 'fw'), { rsaBits: RSA_BITS });
  other = await SnpFirmware.open(path.join(tmp.dir, 'other-chip'), { rsaBits: RSA_BITS });
  other.launch('good', { measurement: Buffer.from(MEASUREMENT, 'hex'), hostData: Buffer.from(HOST_DATA, 'hex') });
  daemon = new SnpDaemon(fw, path.join(tmp.dir, 'vms'), log);
  await daemon.listen(path.join(tmp.dir, 'snp.sock'));
  await launch('good', MEASUREMENT, HOST_DATA);
  await launch('changed-policy', MEASUREMENT, OTHER_HOST_DATA);
  await launch('other-image', OTHER_MEASUREMENT, HOST_DATA);
  const kp = generateKeyPairSync('ed25519');
  adminKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  fs.mkdirSync(path.join(tmp.dir, 'outside'));
  fs.writeFileSync(path.join(tmp.dir, 'outside', 'secret'), 'not a KBS resource');
  kbs = await buildKbs({ trustedArks: [Buffer.from(fw.chain.ark.rawData)], adminPublicKey: kp.publicKey, resourcesDir: path.join(tmp.dir, 'kbs', 'resources'), logger: log });
  url = await kbs.app.listen({ host: '127.0.0.1', port: 0 });
  expect(await admin('/kbs/v0/resource/default/key/disk', SECRET)).toBe(200);
  expect(await admin('/kbs/v0/resource/other-repo/key/disk', SECRET)).toBe(200);
  expect(await admin('/kbs/v0/resource-policy', { policy: Buffer.from(POLICY).toString('base64url') })).toBe(200);
});

afterAll(async () => {
  await kbs?.app.close();
  await daemon?.close();
  tmp.cleanup();
});

describe('RCAR', () => {
  it('a pod whose measurement and policy digest the policy names gets its key, decrypted from a JWE to its TEE key; the token is reused', async () => {
    const c = client('good');
    const got = await c.getResource('default', 'key', 'disk');
    expect(got).toEqual(SECRET);
    expect(await c.getResource('default', 'key', 'disk')).toEqual(SECRET);
    expect(c.attestations).toBe(1);
  });

  it('speaks the protocol\'s messages: a 32-byte nonce, an HttpOnly session cookie, a token, a flattened JWE', async () => {
    const r = await post('/kbs/v0/auth', { version: '0.4.0', tee: 'snp', 'extra-params': {} });
    expect(Buffer.from(r.json.nonce as string, 'base64').length).toBe(32);
    expect(r.json['extra-params']).toEqual({});
    expect(r.headers.get('set-cookie')).toMatch(/^kbs-session-id=[0-9a-f-]{36}; Path=\/kbs\/v0; Max-Age=\d+; HttpOnly/);
    const cookie = /kbs-session-id=[^;]+/.exec(r.headers.get('set-cookie')!)![0];
    const att = await post('/kbs/v0/attest', await attestation(new EmulatedSnpDevice(ports.good!), r.json.nonce as string), { cookie });
    expect(att.status).toBe(200);
    expect(String(att.json.token).split('.')).toHaveLength(3);
    const res = await fetch(`${url}/kbs/v0/resource/default/key/disk`, { headers: { cookie } });
    const jwe = (await res.json()) as Record<string, string>;
    expect(Object.keys(jwe).sort()).toEqual(['ciphertext', 'encrypted_key', 'iv', 'protected', 'tag']);
    expect(JSON.parse(Buffer.from(jwe.protected!, 'base64url').toString())).toMatchObject({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
    expect(await post('/kbs/v0/auth', { version: '9.0.0', tee: 'snp' }).then((x) => [x.status, problem(x.json)])).toEqual([400, 'ProtocolVersion']);
    expect(await post('/kbs/v0/auth', { version: '0.4.0', tee: 'tdx' }).then((x) => [x.status, problem(x.json)])).toEqual([400, 'UnsupportedTee']);
    expect(await post('/kbs/v0/auth', { tee: 'snp' }).then((x) => [x.status, problem(x.json)])).toEqual([400, 'InvalidRequest']);
  });
});

describe('the attestation policy', () => {
  it('refuses a pod whose policy changed by one line (another HOST_DATA) with 403, and a pod of another guest image', async () => {
    for (const vm of ['changed-policy', 'other-image']) {
      const e = await client(vm).getResource('default', 'key', 'disk').catch((x: unknown) => x);
      expect(e, vm).toBeInstanceOf(KbsClientError);
      expect((e as KbsClientError).status).toBe(403);
      expect(problem((e as KbsClientError).info as unknown as Record<string, unknown>)).toBe('PolicyDeny');
    }
    // The good pod is refused a resource outside what the policy grants.
    expect(await client('good').getResource('other-repo', 'key', 'disk').catch((x: KbsClientError) => x.status)).toBe(403);
    await stillServes();
  });

  it('answers 404 for a resource that does not exist, to an attested pod', async () => {
    expect(await client('good').getResource('default', 'key', 'nope').catch((x: KbsClientError) => x.status)).toBe(404);
  });
});

describe('protocol abuse', () => {
  it('a report with one flipped bit: 401, for a bit in MEASUREMENT, HOST_DATA, REPORT_DATA or the signature', async () => {
    for (const at of [0x90, 0xc0 + 31, 0x50 + 5, 0x2a0 + 3]) {
      const { cookie, nonce } = await auth();
      const r = await post('/kbs/v0/attest', await attestation(new EmulatedSnpDevice(ports.good!), nonce, (b) => void (b[at]! ^= 0x01)), { cookie });
      expect([r.status, problem(r.json)], `bit at 0x${at.toString(16)}`).toEqual([401, 'AttestationFailed']);
    }
    await stillServes();
  });

  it('a report signed by another chip: 401 with its own chain (untrusted ARK) and with this chip\'s chain (bad signature)', async () => {
    const otherChip: ReportDevice = {
      getReport: async (rd) => ({ report: other.report('good', rd), certs: { ark: Buffer.from(other.chain.ark.rawData), ask: Buffer.from(other.chain.ask.rawData), vcek: Buffer.from(other.chain.vcek.rawData) } }),
    };
    const mixed: ReportDevice = {
      getReport: async (rd) => ({ report: other.report('good', rd), certs: { ark: Buffer.from(fw.chain.ark.rawData), ask: Buffer.from(fw.chain.ask.rawData), vcek: Buffer.from(fw.chain.vcek.rawData) } }),
    };
    for (const [name, dev, why] of [['own chain', otherChip, /not a trusted root/], ['this chip\'s chain', mixed, /signature does not verify/]] as const) {
      const { cookie, nonce } = await auth();
      const r = await post('/kbs/v0/attest', await attestation(dev, nonce), { cookie });
      expect([r.status, problem(r.json)], name).toEqual([401, 'AttestationFailed']);
      expect(r.json.detail).toMatch(why);
    }
    await stillServes();
  });

  it('a genuine report with another TEE key put in runtime-data (key substitution): 401, REPORT_DATA does not bind it', async () => {
    const { cookie, nonce } = await auth();
    const payload = (await attestation(new EmulatedSnpDevice(ports.good!), nonce)) as { 'runtime-data': RuntimeData };
    payload['runtime-data']['tee-pubkey'] = { ...TEE_PUBKEY, x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0' };
    const r = await post('/kbs/v0/attest', payload, { cookie });
    expect([r.status, problem(r.json)]).toEqual([401, 'AttestationFailed']);
    expect(r.json.detail).toMatch(/REPORT_DATA/);
  });

  it('a replayed nonce: a captured Attestation is refused in another session and again in its own', async () => {
    const a = await auth();
    const captured = await attestation(new EmulatedSnpDevice(ports.good!), a.nonce);
    expect((await post('/kbs/v0/attest', captured, { cookie: a.cookie })).status).toBe(200);
    const b = await auth();
    const r1 = await post('/kbs/v0/attest', captured, { cookie: b.cookie });
    expect([r1.status, problem(r1.json)]).toEqual([401, 'AttestationFailed']);
    const r2 = await post('/kbs/v0/attest', captured, { cookie: a.cookie });
    expect([r2.status, problem(r2.json)]).toEqual([401, 'ChallengeConsumed']);
    // Same nonce, fresh evidence after a failed answer: the session's challenge is spent either way.
    const r3 = await post('/kbs/v0/attest', await attestation(new EmulatedSnpDevice(ports.good!), b.nonce), { cookie: b.cookie });
    expect([r3.status, problem(r3.json)]).toEqual([401, 'ChallengeConsumed']);
    await stillServes();
  });

  it('an expired session: 401 ExpiredCookie at attest and at resource', async () => {
    const kp = generateKeyPairSync('ed25519');
    const short = await buildKbs({ trustedArks: [Buffer.from(fw.chain.ark.rawData)], adminPublicKey: kp.publicKey, resourcesDir: path.join(tmp.dir, 'kbs-short'), logger: log, sessionTimeoutMs: 300 });
    try {
      const auth1 = await short.app.inject({ method: 'POST', url: '/kbs/v0/auth', payload: { version: '0.4.0', tee: 'snp' } });
      const cookie = /kbs-session-id=[^;]+/.exec(String(auth1.headers['set-cookie']))![0];
      const nonce = auth1.json<{ nonce: string }>().nonce;
      const payload = await attestation(new EmulatedSnpDevice(ports.good!), nonce);
      await new Promise((r) => setTimeout(r, 400));
      const r = await short.app.inject({ method: 'POST', url: '/kbs/v0/attest', payload, headers: { cookie } });
      expect([r.statusCode, r.json<{ type: string }>().type.split('/').pop()]).toEqual([401, 'ExpiredCookie']);
      const g = await short.app.inject({ method: 'GET', url: '/kbs/v0/resource/default/key/disk', headers: { cookie } });
      expect(g.statusCode).toBe(401);
    } finally {
      await short.app.close();
    }
  });

  it('resource paths with ".." or an encoded slash: 400, nothing outside the resource directory is read or written', async () => {
    const token = await client('good').attest();
    const h = { authorization: `Bearer ${token}` };
    for (const p of ['/kbs/v0/resource/%2e%2e/%2e%2e/outside', '/kbs/v0/resource/default/key/..%2F..%2F..%2Foutside%2Fsecret', '/kbs/v0/resource/default/%2E%2E/secret', '/kbs/v0/resource/./key/disk']) {
      const r = await rawGet(p, h);
      expect([r.status, problem(r.json)], p).toEqual([400, 'InvalidRequest']);
    }
    expect(await admin('/kbs/v0/resource/default/key/..%2F..%2F..%2F..%2Fescaped', Buffer.from('x'))).toBe(400);
    expect(fs.existsSync(path.join(tmp.dir, 'escaped')) || fs.existsSync(path.join(tmp.dir, 'kbs', 'escaped'))).toBe(false);
    await stillServes();
  });

  it('an oversized body: 413 PayloadTooLarge', async () => {
    const { cookie } = await auth();
    const r = await post('/kbs/v0/attest', { 'runtime-data': { nonce: 'x', 'tee-pubkey': { kty: 'EC' } }, 'tee-evidence': { pad: 'A'.repeat(200 * 1024) } }, { cookie });
    expect([r.status, problem(r.json)]).toEqual([413, 'PayloadTooLarge']);
    await stillServes();
  });

  it('no session, an unattested session, a forged token: 401', async () => {
    expect((await rawGet('/kbs/v0/resource/default/key/disk')).status).toBe(401);
    const { cookie } = await auth();
    expect(await rawGet('/kbs/v0/resource/default/key/disk', { cookie }).then((r) => [r.status, problem(r.json)])).toEqual([401, 'AttestationFailed']);
    // A token whose claims were edited (another measurement) keeps its old signature: refused.
    const token = await client('good').attest();
    const [h, p, sig] = token.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString()) as { snp: { measurement: string } };
    claims.snp.measurement = OTHER_MEASUREMENT;
    const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${sig}`;
    expect(await rawGet('/kbs/v0/resource/default/key/disk', { authorization: `Bearer ${forged}` }).then((r) => [r.status, problem(r.json)])).toEqual([401, 'TokenInvalid']);
    expect((await rawGet('/kbs/v0/resource/default/key/disk', { authorization: `Bearer ${token}` })).status).toBe(200);
  });

  it('administration without the admin key: 401; a policy that does not compile: 400 and the old policy stays', async () => {
    expect(await admin('/kbs/v0/resource/default/key/disk', Buffer.from('stolen'), '')).toBe(401);
    const stranger = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(await admin('/kbs/v0/resource/default/key/disk', Buffer.from('stolen'), await adminToken(stranger))).toBe(401);
    expect(await admin('/kbs/v0/resource-policy', { policy: Buffer.from('package kbs\nallow if {').toString('base64url') })).toBe(400);
    // A policy larger than a protocol message (64 KiB) is accepted on the admin endpoint.
    const big = `${POLICY}\n${Array.from({ length: 3000 }, (_, i) => `# padding line ${i} of a long generated policy`).join('\n')}\n`;
    expect(big.length).toBeGreaterThan(100 * 1024);
    expect(await admin('/kbs/v0/resource-policy', { policy: Buffer.from(big).toString('base64url') })).toBe(200);
    await stillServes();
  });
});
