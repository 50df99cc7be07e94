// The emulated SNP firmware: the report's bytes where AMD's ABI puts them, a signature any ECDSA
// verifier checks from the raw layout (r, s little-endian at 0x2A0), the chip identity kept across
// restarts with private modes, and the daemon answering each VM's socket with that VM's values only.
import { createPublicKey, verify } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCert, type CertChain } from '../../attestation/chain.js';
import { SnpDaemon } from '../../attestation/daemon.js';
import { EmulatedSnpDevice } from '../../attestation/device.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { frame } from '../../attestation/guest-msg.js';
import { registerVm, releaseVm } from '../../attestation/snp-control.js';
import { isTimeout } from '../../sys/timeout.js';
import { decodeReport, REPORT_SIZE } from '../../attestation/report.js';
import { verifyReport } from '../../attestation/verify.js';
import { tempDir } from '../support/tmp.js';

// 2048-bit ARK/ASK keep the suite fast; the daemon's default is AMD's 4096 (the layout does not depend on it).
const RSA_BITS = 2048;
const tmp = tempDir('katats-snp-');
let fw: SnpFirmware;
let other: SnpFirmware;
const M1 = Buffer.alloc(48, 0x11);
const H1 = Buffer.alloc(32, 0x22);
const RD = Buffer.from(Array.from({ length: 64 }, (_, i) => i));

beforeAll(async () => {
  fw = await SnpFirmware.open(path.join(tmp.dir, 'fw'), { rsaBits: RSA_BITS });
  other = await SnpFirmware.open(path.join(tmp.dir, 'other'), { rsaBits: RSA_BITS });
  fw.launch('vm-a', { measurement: M1, hostData: H1 });
  other.launch('vm-a', { measurement: M1, hostData: H1 });
});
afterAll(() => tmp.cleanup());

describe('ATTESTATION_REPORT', () => {
  it('puts each field at its ABI offset and signs 0x000-0x29F with r, s little-endian at 0x2A0', () => {
    const b = fw.report('vm-a', RD);
    expect(b.length).toBe(REPORT_SIZE);
    expect(b.readUInt32LE(0x00)).toBe(2);
    expect(b.readUInt32LE(0x34)).toBe(1);
    expect(b.readBigUInt64LE(0x08) & (1n << 17n)).toBe(1n << 17n); // reserved-one bit
    expect(b.readBigUInt64LE(0x08) & (1n << 19n)).toBe(0n); // no debug
    expect(b.subarray(0x50, 0x90)).toEqual(RD);
    expect(b.subarray(0x90, 0xc0)).toEqual(M1);
    expect(b.subarray(0xc0, 0xe0)).toEqual(H1);
    expect(b.subarray(0x1a0, 0x1e0)).toEqual(fw.chipId);
    expect(b.subarray(0x180, 0x188)).toEqual(Buffer.from([3, 0, 0, 0, 0, 0, 8, 115]));
    // Signature field: r at +0x00 and s at +0x48, 48 significant bytes each, zeros elsewhere.
    const sig = b.subarray(0x2a0);
    expect(sig.subarray(48, 72).every((x) => x === 0)).toBe(true);
    expect(sig.subarray(72 + 48).every((x) => x === 0)).toBe(true);
    const r = Buffer.from(sig.subarray(0, 48)).reverse();
    const s = Buffer.from(sig.subarray(72, 120)).reverse();
    const vcek = createPublicKey({ key: Buffer.from(fw.chain.vcek.publicKey.rawData), format: 'der', type: 'spki' });
    expect(verify('sha384', b.subarray(0, 0x2a0), { key: vcek, dsaEncoding: 'ieee-p1363' }, Buffer.concat([r, s]))).toBe(true);
    // Big-endian (the wrong order) does not verify: the test would catch a swapped encoding.
    expect(verify('sha384', b.subarray(0, 0x2a0), { key: vcek, dsaEncoding: 'ieee-p1363' }, Buffer.concat([sig.subarray(0, 48), sig.subarray(72, 120)]))).toBe(false);
  });

  it('verifies, and refuses a flipped bit anywhere in the signed part, another chip\'s chain and an untrusted root', async () => {
    const b = fw.report('vm-a', RD);
    const ok = await verifyReport(b, fw.chain, { trustedArks: [Buffer.from(fw.chain.ark.rawData)] });
    expect(ok.measurement).toEqual(M1);
    for (const at of [0x08, 0x50, 0x90 + 47, 0xc0, 0x1a0, 0x29f, 0x2a0]) {
      const t = Buffer.from(b);
      t[at]! ^= 0x01;
      await expect(verifyReport(t, fw.chain), `bit at 0x${at.toString(16)}`).rejects.toThrow(/signature|VCEK/);
    }
    await expect(verifyReport(b, other.chain)).rejects.toThrow(/signature does not verify/);
    await expect(verifyReport(other.report('vm-a', RD), other.chain, { trustedArks: [Buffer.from(fw.chain.ark.rawData)] })).rejects.toThrow(/not a trusted root/);
    // Another chip's VCEK under this chip's ASK would need this ASK's key: a forged chain mixing them fails.
    await expect(verifyReport(b, { ...fw.chain, vcek: other.chain.vcek })).rejects.toThrow(/VCEK: signature/);
  });

  it('refuses wrong sizes and unknown VMs', () => {
    expect(() => fw.report('vm-a', Buffer.alloc(63))).toThrow(/64 bytes/);
    expect(() => fw.report('nope', RD)).toThrow(/no launched VM/);
    expect(() => fw.launch('../x', { measurement: M1, hostData: H1 })).toThrow(/invalid VM id/);
    expect(() => fw.launch('vm-b', { measurement: M1, hostData: Buffer.alloc(31) })).toThrow(/HOST_DATA/);
    expect(() => decodeReport(Buffer.alloc(100))).toThrow(/1184/);
  });

  it('keeps the chip identity across a restart, keys 0600 in a 0700 dir', async () => {
    const again = await SnpFirmware.open(fw.dir);
    expect(again.chipId).toEqual(fw.chipId);
    expect(Buffer.from(again.chain.vcek.rawData)).toEqual(Buffer.from(fw.chain.vcek.rawData));
    expect(fs.statSync(fw.dir).mode & 0o777).toBe(0o700);
    for (const k of ['ark.key', 'ask.key', 'vcek.key', 'chip-id']) expect(fs.statSync(path.join(fw.dir, k)).mode & 0o777).toBe(0o600);
  });
});

describe('katats snp daemon', () => {
  const log = pino({ level: 'silent' });
  let d: SnpDaemon;
  const control = (): string => path.join(tmp.dir, 'snp.sock');

  async function ctl(req: unknown): Promise<{ ok: boolean; socket?: string; error?: string }> {
    const c = net.connect(control());
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let buf = '';
        c.on('error', reject);
        c.on('data', (x) => {
          buf += x.toString();
          if (buf.includes('\n')) resolve(buf.slice(0, buf.indexOf('\n')));
        });
        c.write(`${typeof req === 'string' ? req : JSON.stringify(req)}\n`);
      });
      return JSON.parse(line) as { ok: boolean; socket?: string; error?: string };
    } finally {
      c.destroy();
    }
  }

  beforeAll(async () => {
    d = new SnpDaemon(fw, path.join(tmp.dir, 'vms'), log);
    await d.listen(control());
  });
  afterAll(async () => d.close());

  it('gives each VM a socket that reports that VM\'s MEASUREMENT and HOST_DATA, with the chain', async () => {
    const a = await ctl({ op: 'launch', vm: 'pod-a', measurement: 'aa'.repeat(48), host_data: 'a1'.repeat(32) });
    const b = await ctl({ op: 'launch', vm: 'pod-b', measurement: 'bb'.repeat(48), host_data: 'b1'.repeat(32) });
    expect(a.ok && b.ok).toBe(true);
    expect(fs.statSync(a.socket!).mode & 0o777).toBe(0o600);
    const ra = await new EmulatedSnpDevice(a.socket!).getReport(RD);
    const rb = await new EmulatedSnpDevice(b.socket!).getReport(RD);
    const chain = (c: typeof ra.certs): CertChain => ({ ark: parseCert(c.ark!), ask: parseCert(c.ask!), vcek: parseCert(c.vcek!) });
    const va = await verifyReport(ra.report, chain(ra.certs), { trustedArks: [Buffer.from(fw.chain.ark.rawData)] });
    const vb = await verifyReport(rb.report, chain(rb.certs));
    expect(va.measurement.toString('hex')).toBe('aa'.repeat(48));
    expect(va.hostData.toString('hex')).toBe('a1'.repeat(32));
    expect(vb.hostData.toString('hex')).toBe('b1'.repeat(32));
    expect(va.reportData).toEqual(RD);
  });

  it('refuses bad control requests and oversized guest frames, and keeps serving', async () => {
    expect((await ctl('not json')).ok).toBe(false);
    expect((await ctl({ op: 'launch', vm: '../../etc', measurement: 'aa'.repeat(48), host_data: 'a1'.repeat(32) })).error).toMatch(/not a valid id/);
    expect((await ctl({ op: 'launch', vm: 'pod-c', measurement: 'aa', host_data: 'a1'.repeat(32) })).error).toMatch(/measurement/);
    const a = await ctl({ op: 'launch', vm: 'pod-a', measurement: 'aa'.repeat(48), host_data: 'a1'.repeat(32) });
    // A frame claiming 1 MiB is not a MSG_REPORT_REQ: the connection is closed, not buffered.
    const c = net.connect(a.socket!);
    const closed = new Promise<void>((resolve) => c.on('close', () => resolve()));
    c.on('error', () => undefined);
    c.write(frame(Buffer.alloc(1024 * 1024)));
    await closed;
    expect((await new EmulatedSnpDevice(a.socket!).getReport(RD)).report.length).toBe(REPORT_SIZE);
  });

  it('registers and releases through the shim\'s control client: the socket and the record go away', async () => {
    const sock = await registerVm(control(), 'pod-r', Buffer.alloc(48, 0xcc), Buffer.alloc(32, 0xc1));
    expect((await verifyReport((await new EmulatedSnpDevice(sock).getReport(RD)).report, fw.chain)).hostData).toEqual(Buffer.alloc(32, 0xc1));
    await releaseVm(control(), 'pod-r');
    expect(fs.existsSync(sock)).toBe(false);
    expect(fw.has('pod-r')).toBe(false);
    // A socket path past sockaddr_un's 107 bytes is refused by name, before listen() fails obscurely.
    await expect(registerVm(control(), 'x'.repeat(76), Buffer.alloc(48), Buffer.alloc(32))).rejects.toThrow(/longer than a unix socket path may be/);
    expect(fw.has('x'.repeat(76))).toBe(false);
    await expect(registerVm(control(), 'pod-s', Buffer.alloc(47), Buffer.alloc(32))).rejects.toThrow(/refused VM pod-s: measurement must be 48 bytes/);
  });

  it('a restarted daemon serves the VMs it launched and did not release, with their values; a corrupt record is skipped', async () => {
    await ctl({ op: 'launch', vm: 'pod-k', measurement: 'ab'.repeat(48), host_data: 'a2'.repeat(32), policy: '0xb0000' });
    await ctl({ op: 'launch', vm: 'pod-gone', measurement: 'ac'.repeat(48), host_data: 'a3'.repeat(32) });
    await ctl({ op: 'release', vm: 'pod-gone' });
    fs.writeFileSync(path.join(tmp.dir, 'vms', 'pod-bad.launch.json'), '{"measurement":"zz"}', { mode: 0o600 });
    await d.close();
    expect(fw.has('pod-k')).toBe(false);
    d = new SnpDaemon(fw, path.join(tmp.dir, 'vms'), log);
    await d.listen(control());
    const k = await verifyReport((await new EmulatedSnpDevice(path.join(tmp.dir, 'vms', 'pod-k.sock')).getReport(RD)).report, fw.chain);
    expect(k.measurement.toString('hex')).toBe('ab'.repeat(48));
    expect(k.hostData.toString('hex')).toBe('a2'.repeat(32));
    expect(k.policy.debug).toBe(true);
    expect(fw.has('pod-gone')).toBe(false);
    expect(fs.existsSync(path.join(tmp.dir, 'vms', 'pod-gone.sock'))).toBe(false);
    expect(fw.has('pod-bad')).toBe(false);
    // and it serves control requests as before
    expect((await ctl({ op: 'release', vm: 'pod-k' })).ok).toBe(true);
    expect(fs.existsSync(path.join(tmp.dir, 'vms', 'pod-k.launch.json'))).toBe(false);
    fs.rmSync(path.join(tmp.dir, 'vms', 'pod-bad.launch.json'));
  });

  it('the control client gives up on a daemon that does not answer, with a coded timeout', async () => {
    const mute = net.createServer(() => undefined);
    const p = path.join(tmp.dir, 'mute.sock');
    await new Promise<void>((r) => mute.listen(p, () => r()));
    try {
      const e = await registerVm(p, 'pod-m', Buffer.alloc(48), Buffer.alloc(32), 300).catch((x: unknown) => x);
      expect(isTimeout(e, 'KATATS_SNP_CONTROL_TIMEOUT')).toBe(true);
    } finally {
      mute.close();
    }
  });
});
