// The pod's local attestation endpoint (what a container calls on 127.0.0.1:8006) with the real SNP
// daemon and the real KBS, host-only: the report travels the way it does on the guest's port (one
// byte stream, answers matched by REPORT_DATA) over the daemon's per-VM socket. A pod whose policy
// digest the attestation policy names gets its key; the same pod with a changed policy (another
// HOST_DATA) gets the KBS's 403 and no bytes; 404, bad paths and a missing KBS are clear answers.
import { createHash, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CdhServer, checkKbsUrl } from '../../attestation/cdh.js';
import { SnpDaemon } from '../../attestation/daemon.js';
import type { ExtReport, ReportDevice } from '../../attestation/device.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { encodeCertTable, encodeReportRsp, frame } from '../../attestation/guest-msg.js';
import { adminToken } from '../../attestation/kbs/cli.js';
import { buildKbs, type Kbs } from '../../attestation/kbs/server.js';
import { SnpStreamSession } from '../../attestation/port-device.js';
import { decodeReport } from '../../attestation/report.js';
import { verifyReport } from '../../attestation/verify.js';
import { parseSealedSecret, sealSecret } from '../../attestation/sealed-secret.js';
import { unsealEnv, unsealSpec } from '../../agent/unseal.js';
import { Code, TtrpcError } from '../../agent/errors.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-cdh-');
const log = pino({ level: 'silent' });
const MEASUREMENT = 'a5'.repeat(48);
const POLICY_A = 'package agent_policy\ndefault allow := true\n';
const HOST_DATA = createHash('sha256').update(POLICY_A).digest('hex');
const OTHER_HOST_DATA = createHash('sha256').update(`${POLICY_A}# one line more\n`).digest('hex');
const SECRET = Buffer.from('the disk key of the pod, 32 bytes');
const KBS_POLICY = `package kbs

default allow := false

allow if {
  input.snp.measurement == "${MEASUREMENT}"
  input.snp.host_data == "${HOST_DATA}"
  input.resource.repository == "default"
}
`;

let fw: SnpFirmware;
let daemon: SnpDaemon;
let kbs: Kbs;
let kbsUrl: string;
const sockets: net.Socket[] = [];
const servers: CdhServer[] = [];

/** The guest's port, as a stream session over the daemon's socket for this VM. */
async function portDevice(vm: string, hostData: string): Promise<ReportDevice> {
  const sock = await daemon.launch(vm, Buffer.from(MEASUREMENT, 'hex'), Buffer.from(hostData, 'hex'));
  const c = net.connect(sock);
  sockets.push(c);
  await new Promise((r) => c.once('connect', r));
  const s = new SnpStreamSession((b) => new Promise((resolve, reject) => c.write(b, (e) => (e ? reject(e) : resolve()))));
  c.on('data', (d: Buffer) => s.push(d));
  return s;
}

async function cdhFor(device: ReportDevice, withKbs = true): Promise<string> {
  const s = new CdhServer({ device, log, ...(withKbs ? { kbsUrl } : {}) });
  servers.push(s);
  const { port } = await s.listen(0);
  return `http://127.0.0.1:${port}`;
}

/**
 * A request sent byte for byte (fetch would resolve dot segments). node:http also because this file
 * runs under node --jitless too (the guest agent's node on TCG), where fetch has no WebAssembly.
 */
interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer;
}
function request(base: string, p: string, o: RequestOptions = {}): Promise<{ status: number; body: Buffer }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: p, method: o.method ?? 'GET', headers: o.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}
const get = (base: string, p: string) => request(base, p);

beforeAll(async () => {
  fw = await SnpFirmware.open(path.join(tmp.dir, 'fw'), { rsaBits: 2048 });
  daemon = new SnpDaemon(fw, path.join(tmp.dir, 'vms'), log);
  await daemon.listen(path.join(tmp.dir, 'snp.sock'));
  const kp = generateKeyPairSync('ed25519');
  const adminKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  kbs = await buildKbs({ trustedArks: [Buffer.from(fw.chain.ark.rawData)], adminPublicKey: kp.publicKey, resourcesDir: path.join(tmp.dir, 'resources'), logger: log });
  kbsUrl = await kbs.app.listen({ host: '127.0.0.1', port: 0 });
  const admin = async (p: string, body: Buffer, type: string) => {
    const r = await request(kbsUrl, p, { method: 'POST', headers: { 'content-type': type, authorization: `Bearer ${await adminToken(adminKey)}` }, body });
    return r.status;
  };
  expect(await admin('/kbs/v0/resource/default/key/disk', SECRET, 'application/octet-stream')).toBe(200);
  expect(await admin('/kbs/v0/resource-policy', Buffer.from(JSON.stringify({ policy: Buffer.from(KBS_POLICY).toString('base64url') })), 'application/json')).toBe(200);
});

afterAll(async () => {
  for (const s of servers) await s.close();
  for (const c of sockets) c.destroy();
  await kbs?.app.close();
  await daemon?.close();
  tmp.cleanup();
});

describe('GET /cdh/resource', () => {
  it('releases the key to the pod whose policy digest the attestation policy names', async () => {
    const base = await cdhFor(await portDevice('pod-a', HOST_DATA));
    const r = await get(base, '/cdh/resource/default/key/disk');
    expect(r.status).toBe(200);
    expect(r.body).toEqual(SECRET);
  });

  it('passes the KBS\'s 403 on to the pod with a one-line policy change, with no secret bytes', async () => {
    const base = await cdhFor(await portDevice('pod-b', OTHER_HOST_DATA));
    const r = await get(base, '/cdh/resource/default/key/disk');
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body.toString()).type).toMatch(/\/PolicyDeny$/);
    expect(r.body.includes(SECRET)).toBe(false);
  });

  it('answers 404 for a resource the KBS does not hold, 400 for a bad component, 404 for dot segments, 405 for POST, and keeps serving', async () => {
    const base = await cdhFor(await portDevice('pod-c', HOST_DATA));
    expect((await get(base, '/cdh/resource/default/key/nothing')).status).toBe(404);
    expect((await get(base, '/cdh/resource/default/../disk')).status).toBe(404); // no such route: four components
    expect((await get(base, '/cdh/resource/default/%2e%2e/disk')).status).toBe(404); // resolved by URL parsing: no route either
    expect((await get(base, '/cdh/resource/default/key/a%2Fb')).status).toBe(400);
    expect((await get(base, '/cdh/resource/default/key/.')).status).toBe(404);
    expect((await get(base, `/cdh/resource/default/key/${'x'.repeat(129)}`)).status).toBe(400);
    expect((await request(base, '/cdh/resource/default/key/disk', { method: 'POST' })).status).toBe(405);
    expect((await get(base, '/cdh/resource/default/key/disk')).body).toEqual(SECRET);
  });

  it('says so when the pod names no KBS, and refuses a KBS URL that is not plain http(s)', async () => {
    const base = await cdhFor(await portDevice('pod-d', HOST_DATA), false);
    const r = await get(base, '/cdh/resource/default/key/disk');
    expect(r.status).toBe(503);
    expect(r.body.toString()).toMatch(/names no KBS \(annotation io\.katats\.attestation\.kbs_url\)/);
    expect(() => checkKbsUrl('file:///etc/passwd')).toThrow(/not http/);
    expect(() => checkKbsUrl('http://u:p@kbs:8080')).toThrow(/credentials/);
    expect(checkKbsUrl('http://10.0.0.1:8080/')).toBe('http://10.0.0.1:8080');
  });

  it('a KBS that does not answer is a 502, not a hang', async () => {
    const s = net.createServer((c) => c.destroy());
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    const dead = `http://127.0.0.1:${(s.address() as net.AddressInfo).port}`;
    const cdh = new CdhServer({ device: await portDevice('pod-e', HOST_DATA), log, kbsUrl: dead });
    servers.push(cdh);
    const { port } = await cdh.listen(0);
    const r = await get(`http://127.0.0.1:${port}`, '/cdh/resource/default/key/disk');
    expect(r.status).toBe(502);
    await new Promise((r2) => s.close(r2));
  });
});

describe('GET /aa/evidence', () => {
  it("returns this VM's verified report with the runtime data as REPORT_DATA", async () => {
    const base = await cdhFor(await portDevice('pod-f', HOST_DATA));
    const r = await get(base, '/aa/evidence?runtime_data=hello');
    expect(r.status).toBe(200);
    const ev = JSON.parse(r.body.toString()) as { attestation_report: string };
    const rep = decodeReport(Buffer.from(ev.attestation_report, 'base64'));
    expect(rep.hostData.toString('hex')).toBe(HOST_DATA);
    expect(rep.reportData.subarray(0, 5).toString()).toBe('hello');
    expect(rep.reportData.subarray(5).every((x) => x === 0)).toBe(true);
    await verifyReport(Buffer.from(ev.attestation_report, 'base64'), fw.chain);
    expect((await get(base, `/aa/evidence?runtime_data=${'x'.repeat(65)}`)).status).toBe(400);
  });
});

describe('the report port stream', () => {
  it('drops an answer to an earlier request (matched by REPORT_DATA) and returns its own', async () => {
    const fake = Buffer.alloc(1184);
    const mine = Buffer.alloc(64, 7);
    fake.fill(9, 0x50, 0x90);
    const real = Buffer.from(fake);
    mine.copy(real, 0x50);
    const table = encodeCertTable({ ark: Buffer.from('a'), ask: Buffer.from('b'), vcek: Buffer.from('c') });
    let s: SnpStreamSession;
    // eslint-disable-next-line prefer-const
    s = new SnpStreamSession(async () => {
      // The stale answer arrives first, then this request's.
      setImmediate(() => s.push(Buffer.concat([frame(encodeReportRsp(0, fake)), frame(table), frame(encodeReportRsp(0, real)), frame(table)])));
    });
    const got: ExtReport = await s.getReport(mine);
    expect(got.report.subarray(0x50, 0x90)).toEqual(mine);
  });

  it('times out with a coded error when the port never answers, and the next request still works', async () => {
    const writes: Buffer[] = [];
    const s = new SnpStreamSession(async (b) => void writes.push(b), 200);
    await expect(s.getReport(Buffer.alloc(64))).rejects.toMatchObject({ code: 'KATATS_SNP_REPORT_TIMEOUT' });
    const rd = Buffer.alloc(64, 3);
    const real = Buffer.alloc(1184);
    rd.copy(real, 0x50);
    const p = s.getReport(rd);
    await new Promise((r) => setTimeout(r, 20));
    s.push(Buffer.concat([frame(encodeReportRsp(0, real)), frame(encodeCertTable({ ark: Buffer.from('a'), ask: Buffer.from('b'), vcek: Buffer.from('c') }))]));
    expect((await p).report.subarray(0x50, 0x90)).toEqual(rd);
  });
});

describe('sealed secrets unsealed by the agent (agent/unseal.ts) through the pod\'s KBS', () => {
  const SEALED = sealSecret('kbs:///default/key/disk');
  const silent = pino({ level: 'silent' });

  /** A container's config.json parts: a sealed env value, a read-only volume below the shared root holding a sealed file. */
  function spec(shared: string) {
    const vol = path.join(shared, 'ctr-secret-vol');
    fs.mkdirSync(path.join(vol, '..data'), { recursive: true });
    fs.writeFileSync(path.join(vol, '..data', 'disk-key'), `${SEALED}\n`);
    fs.symlinkSync('..data/disk-key', path.join(vol, 'disk-key'));
    fs.writeFileSync(path.join(vol, '..data', 'plain'), 'plain\n');
    return {
      process: { env: ['PATH=/bin', `DISK_KEY=${SEALED}`] },
      mounts: [
        { destination: '/secrets', source: vol, type: 'bind', options: ['rbind', 'ro'] },
        { destination: '/rw', source: vol, type: 'bind', options: ['rbind', 'rw'] },
      ],
    };
  }

  it('replaces the env value and the volume file (in a guest-private copy) for an allowed pod; the shared copy keeps the sealed text', async () => {
    const cdh = new CdhServer({ device: await portDevice('pod-seal-a', HOST_DATA), log, kbsUrl });
    servers.push(cdh);
    const shared = fs.mkdtempSync(path.join(tmp.dir, 'shared-'));
    const copyDir = path.join(tmp.dir, 'bundle-a', 'sealed');
    const s = spec(shared);
    await unsealSpec(s, { sharedRoot: shared, copyDir, kbs: cdh.resourceSource(), cid: 'c1', log: silent });
    expect(s.process.env).toEqual(['PATH=/bin', `DISK_KEY=${SECRET.toString()}`]);
    expect(s.mounts[0]!.source).toBe(path.join(copyDir, '0'));
    expect(fs.readFileSync(path.join(s.mounts[0]!.source, 'disk-key'))).toEqual(SECRET);
    expect(fs.readlinkSync(path.join(s.mounts[0]!.source, 'disk-key'))).toBe('..data/disk-key');
    expect(fs.readFileSync(path.join(s.mounts[0]!.source, '..data', 'plain'), 'utf8')).toBe('plain\n');
    // A writable volume is shared, not copied; the shared copy is untouched.
    expect(s.mounts[1]!.source).toBe(path.join(shared, 'ctr-secret-vol'));
    expect(fs.readFileSync(path.join(shared, 'ctr-secret-vol', 'disk-key'), 'utf8')).toBe(`${SEALED}\n`);
  });

  it('refuses for a pod the KBS refuses, naming the env var and the KBS\'s answer, and leaves no copy', async () => {
    const cdh = new CdhServer({ device: await portDevice('pod-seal-b', OTHER_HOST_DATA), log, kbsUrl });
    servers.push(cdh);
    const shared = fs.mkdtempSync(path.join(tmp.dir, 'shared-'));
    const copyDir = path.join(tmp.dir, 'bundle-b', 'sealed');
    const s = spec(shared);
    const err = await unsealSpec(s, { sharedRoot: shared, copyDir, kbs: cdh.resourceSource(), cid: 'c2', log: silent }).catch((e: TtrpcError) => e);
    expect(err).toBeInstanceOf(TtrpcError);
    expect((err as TtrpcError).code).toBe(Code.PermissionDenied);
    expect((err as TtrpcError).message).toMatch(/^CreateContainer c2: env DISK_KEY: sealed secret kbs:\/\/\/default\/key\/disk: the KBS answered 403: PolicyDeny: /);
    expect(s.process.env).toContain(`DISK_KEY=${SEALED}`);
    // The volume alone: the file is named.
    s.process.env = ['PATH=/bin'];
    const err2 = await unsealSpec(s, { sharedRoot: shared, copyDir, kbs: cdh.resourceSource(), cid: 'c2', log: silent }).catch((e: TtrpcError) => e);
    expect((err2 as TtrpcError).message).toMatch(/volume \/secrets: file \.\.data\/disk-key: sealed secret kbs:\/\/\/default\/key\/disk: the KBS answered 403/);
    expect(fs.existsSync(copyDir)).toBe(false);
  });

  it('never follows a symlink the host planted in a volume\'s path: the guest\'s own files are not copied into the container', async () => {
    const cdh = new CdhServer({ device: await portDevice('pod-seal-l', HOST_DATA), log, kbsUrl });
    servers.push(cdh);
    const shared = fs.mkdtempSync(path.join(tmp.dir, 'shared-'));
    // A guest-private dir (another container's unsealed copy, say) and a share entry pointing at it.
    const privateDir = fs.mkdtempSync(path.join(tmp.dir, 'guest-private-'));
    fs.mkdirSync(path.join(privateDir, 'vol'));
    fs.writeFileSync(path.join(privateDir, 'vol', 'other-key'), 'plaintext of another container\n');
    fs.writeFileSync(path.join(privateDir, 'vol', 'bait'), `${SEALED}\n`);
    fs.symlinkSync(privateDir, path.join(shared, 'evil'));
    const copyDir = path.join(tmp.dir, 'bundle-l', 'sealed');
    // Through a symlinked directory on the way: refused, nothing read from where it points.
    const s = { process: { env: ['PATH=/bin'] }, mounts: [{ destination: '/secrets', source: path.join(shared, 'evil', 'vol'), type: 'bind', options: ['rbind', 'ro'] }] };
    const err = await unsealSpec(s, { sharedRoot: shared, copyDir, kbs: cdh.resourceSource(), cid: 'c4', log: silent }).catch((e: TtrpcError) => e);
    expect(err).toBeInstanceOf(TtrpcError);
    expect((err as TtrpcError).code).toBe(Code.PermissionDenied);
    expect((err as TtrpcError).message).toMatch(/evil is a symlink/);
    expect(fs.existsSync(copyDir)).toBe(false);
  });

  it('refuses what is not a sealed secret it can unseal, and a VM with no KBS, with a clear error', async () => {
    const env = (v: string) => unsealEnv([`K=${v}`], undefined, 'c3').catch((e: TtrpcError) => e.message);
    expect(await env('sealed.a.b')).toMatch(/env K: not a sealed secret this guest unseals: want sealed.<header>.<payload>.<signature>/);
    expect(await env('sealed.h.%%%.s')).toMatch(/the payload is not base64url/);
    const payload = (o: object) => `sealed.h.${Buffer.from(JSON.stringify(o)).toString('base64url')}.s`;
    expect(await env(payload({ version: '0.1.0', type: 'envelope', provider: 'aliyun' }))).toMatch(/envelope secrets .* are not supported/);
    expect(await env(payload({ version: '0.1.0', type: 'vault', provider: 'kbs', name: 'kbs://evil.example/default/key/disk' }))).toMatch(/names a KBS host \(evil.example\)/);
    expect(await env(payload({ version: '0.1.0', type: 'vault', provider: 'kbs', name: 'kbs:///default/../disk' }))).toMatch(/not \. or \.\./);
    expect(await env(SEALED)).toMatch(/env K: sealed secret kbs:\/\/\/default\/key\/disk: this VM has no attestation/);
    expect(parseSealedSecret(SEALED).resource).toEqual({ repository: 'default', type: 'key', tag: 'disk' });
    expect((await unsealEnv(['A=1', 'B=sealed'], undefined, 'c3')).env).toEqual(['A=1', 'B=sealed']);
  });
});
