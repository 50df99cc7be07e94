// The shim's attestation wiring ([attestation] snp_socket) against the real SNP daemon: a VM is
// registered with the emulated MEASUREMENT of the files it boots and HOST_DATA = its launch data
// (the pod policy's digest), the daemon's per-VM socket answers with exactly those values, QEMU
// gets that socket as the guest port katats.snp.0 and really connects to it, release removes it,
// and the factory boots such a VM cold, saying why.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnpDaemon } from '../../attestation/daemon.js';
import { EmulatedSnpDevice } from '../../attestation/device.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { decodeReport } from '../../attestation/report.js';
import { verifyReport } from '../../attestation/verify.js';
import { DEFAULTS, parseConfig, type KatatsConfig } from '../../shim/config.js';
import { cloneForPod } from '../../shim/factory.js';
import { fileDigests, measurementText, registerSnpVm, releaseSnpVm, SNP_PORT_NAME, snpMeasurement } from '../../shim/snp-launch.js';
import type { VmConfig } from '../../vmm/config.js';
import { buildQemuArgs } from '../../vmm/qemu-args.js';
import { sleep } from '../../sys/timeout.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('ksnpl-');
const log = pino({ level: 'silent' });
let fw: SnpFirmware;
let daemon: SnpDaemon;
let control: string;
const files = () => ({ kernel: path.join(tmp.dir, 'vmlinuz'), initrd: path.join(tmp.dir, 'initrd'), rootfs: path.join(tmp.dir, 'rootfs.img'), cmdline: 'console=ttyS0', measurement: undefined });
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  fs.writeFileSync(files().kernel, 'kernel bytes');
  fs.writeFileSync(files().initrd, 'initrd bytes');
  fs.writeFileSync(files().rootfs, Buffer.alloc(4096, 7));
  fw = await SnpFirmware.open(path.join(tmp.dir, 'fw'), { rsaBits: 2048 });
  daemon = new SnpDaemon(fw, path.join(tmp.dir, 'run'), log);
  control = path.join(tmp.dir, 'control.sock');
  await daemon.listen(control);
});
afterAll(async () => {
  await daemon.close();
  tmp.cleanup();
});

describe('[attestation] snp_socket', () => {
  it('is off by default, takes an absolute socket path, and is refused for cloud-hypervisor', () => {
    expect(DEFAULTS.attestation.snp_socket).toBe('');
    expect(parseConfig('[attestation]\nsnp_socket = "/run/katats/snp.sock"\n').attestation.snp_socket).toBe('/run/katats/snp.sock');
    expect(() => parseConfig('[attestation]\nsnp_socket = "snp.sock"\n')).toThrow(/attestation.snp_socket must be an absolute path/);
    expect(() => parseConfig('[runtime]\nhypervisor = "clh"\n[attestation]\nsnp_socket = "/run/s.sock"\n')).toThrow(/QEMU only/);
  });
});

describe('the emulated launch measurement', () => {
  it('is SHA-384 of the image measurement text over the booted files and the exact command line', async () => {
    const d = await fileDigests(files(), path.join(tmp.dir, 'cache'));
    expect(d).toEqual({ kernel: sha256('kernel bytes'), initrd: sha256('initrd bytes'), rootfs: sha256(Buffer.alloc(4096, 7)) });
    const m = snpMeasurement(d, 'console=ttyS0 agent.log=debug');
    expect(m.length).toBe(48);
    expect(m).toEqual(createHash('sha384').update(measurementText(d, 'console=ttyS0 agent.log=debug')).digest());
    expect(snpMeasurement(d, 'console=ttyS0')).not.toEqual(m);
  });

  it('hashes a file again once it changed (the cache is keyed by the file version)', async () => {
    const cache = path.join(tmp.dir, 'cache2');
    const f = { ...files(), initrd: path.join(tmp.dir, 'initrd2') };
    fs.writeFileSync(f.initrd, 'one');
    expect((await fileDigests(f, cache)).initrd).toBe(sha256('one'));
    expect(fs.existsSync(path.join(cache, 'file-digests.json'))).toBe(true);
    fs.writeFileSync(f.initrd, 'two, longer');
    expect((await fileDigests(f, cache)).initrd).toBe(sha256('two, longer'));
  });
});

describe('registration with the SNP daemon', () => {
  it("gives the VM a socket whose reports carry the VM's MEASUREMENT and its policy digest as HOST_DATA; release removes it", async () => {
    const policyDigest = createHash('sha256').update('package agent_policy\n').digest();
    const reg = await registerSnpVm({ controlSocket: control, sandboxId: 'pod-a', files: files(), cmdline: 'console=ttyS0', hostData: policyDigest, cacheDir: path.join(tmp.dir, 'cache'), log });
    expect(fs.existsSync(reg.socket)).toBe(true);
    const expected = snpMeasurement(await fileDigests(files(), path.join(tmp.dir, 'cache')), 'console=ttyS0');
    expect(reg.measurement).toEqual(expected);
    const rd = Buffer.alloc(64, 0x5a);
    const ext = await new EmulatedSnpDevice(reg.socket).getReport(rd);
    const r = decodeReport(ext.report);
    expect(r.hostData).toEqual(policyDigest);
    expect(r.measurement).toEqual(expected);
    expect(r.reportData).toEqual(rd);
    await expect(verifyReport(ext.report, { ark: fw.chain.ark, ask: fw.chain.ask, vcek: fw.chain.vcek })).resolves.toBeDefined();
    await reg.release();
    expect(fs.existsSync(reg.socket)).toBe(false);
    await reg.release(); // twice is harmless
  });

  it('`shim delete` after a kill -9 releases the VM by its sandbox id', async () => {
    const reg = await registerSnpVm({ controlSocket: control, sandboxId: 'pod-b', files: files(), cmdline: '', hostData: Buffer.alloc(32), cacheDir: path.join(tmp.dir, 'cache'), log });
    await releaseSnpVm(control, 'pod-b');
    expect(fs.existsSync(reg.socket)).toBe(false);
    await expect(new EmulatedSnpDevice(reg.socket, 2000).getReport(Buffer.alloc(64))).rejects.toThrow();
  });
});

describe('QEMU', () => {
  it('gets the VM socket as virtio-serial port katats.snp.0, connects to the daemon at start, and again to a restarted daemon', async () => {
    const reg = await registerSnpVm({ controlSocket: control, sandboxId: 'pod-q', files: files(), cmdline: '', hostData: Buffer.alloc(32, 1), cacheDir: path.join(tmp.dir, 'cache'), log });
    const runDir = path.join(tmp.dir, 'q');
    fs.mkdirSync(runDir);
    const cfg: VmConfig = { id: 'kq', vcpus: 1, memoryMiB: 128, kernel: files().kernel, initrd: files().initrd, rootfs: files().rootfs, baseCmdline: '', agentSocket: path.join(runDir, 'agent.sock'), accel: 'tcg', runDir, snpReportSocket: reg.socket };
    const { argv } = buildQemuArgs(cfg, 'tcg');
    expect(argv).toContain(`socket,id=snp,path=${reg.socket},reconnect=1`);
    expect(argv).toContain(`virtserialport,bus=vser0.0,chardev=snp,name=${SNP_PORT_NAME}`);
    expect(buildQemuArgs({ ...cfg, snpReportSocket: undefined }, 'tcg').argv.join(' ')).not.toContain('katats.snp');
    // -S: QEMU makes its devices and chardevs, then waits; no kernel to load (these files are not one).
    const noKernel = argv.filter((a, i) => !['-kernel', '-initrd', '-append'].includes(a) && !['-kernel', '-initrd', '-append'].includes(argv[i - 1]!));
    const conns = (daemon as unknown as { vmServers: Map<string, { conns: Set<unknown> }> }).vmServers.get('pod-q')!.conns;
    const q = spawn('/usr/bin/qemu-system-x86_64', [...noKernel, '-S'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise((r) => q.once('exit', r));
    let stderr = '';
    q.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      for (let i = 0; i < 200 && conns.size === 0 && q.exitCode === null; i++) await sleep(100);
      expect(stderr).toBe('');
      expect(conns.size).toBe(1);
      // The daemon stops (an upgrade) and a new one starts on the same dirs: it serves pod-q again
      // from its record, with the same values, and QEMU's chardev connects to it by itself.
      await daemon.close();
      expect(fs.existsSync(reg.socket)).toBe(false);
      daemon = new SnpDaemon(fw, path.join(tmp.dir, 'run'), log);
      await daemon.listen(control);
      const again = (daemon as unknown as { vmServers: Map<string, { conns: Set<unknown> }> }).vmServers.get('pod-q')!.conns;
      for (let i = 0; i < 100 && again.size === 0 && q.exitCode === null; i++) await sleep(100);
      expect(again.size).toBe(1);
      const r = await new EmulatedSnpDevice(reg.socket, 5000).getReport(Buffer.alloc(64, 3));
      expect(decodeReport(r.report).hostData.toString('hex')).toBe('01'.repeat(32));
    } finally {
      if (q.exitCode === null) q.kill('SIGKILL');
      await exited;
      await reg.release();
    }
  }, 60_000);
});

describe('the factory', () => {
  it('boots a VM with an SNP report port cold, naming attestation as the reason', async () => {
    const lines: string[] = [];
    const sink = new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) });
    const config: KatatsConfig = { ...DEFAULTS, factory: { enable_template: true, template_path: tmp.dir }, source: 'test' };
    const cfg = { id: 'kf', snpReportSocket: '/nonexistent.sock' } as VmConfig;
    await expect(cloneForPod(config, cfg, {}, pino(sink))).resolves.toBeUndefined();
    expect(lines.join('')).toMatch(/"boot":"cold","reason":"attestation: the SNP firmware registers each VM/);
  });
});
