// Attestation wired end to end in a real TCG guest, through containerd 1.6 and ctr: the shim
// registers the pod's VM with the SNP daemon ([attestation] snp_socket), QEMU connects the VM's
// report socket as port katats.snp.0, the agent serves the pod's local endpoint on 127.0.0.1:8006,
// and a container asks it for evidence: the report it prints verifies against the daemon's chain
// and carries HOST_DATA = the sha256 of the pod's policy annotation and the MEASUREMENT of the
// files the VM booted. The VM is released when the pod goes. (No pod network here: the KBS
// exchange from a guest needs CNI; the KBS URL annotation is shown to reach the endpoint.)
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnpDaemon } from '../../attestation/daemon.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { decodeReport } from '../../attestation/report.js';
import { verifyReport } from '../../attestation/verify.js';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import { loadConfig } from '../../shim/config.js';
import { resolveGuestFiles } from '../../shim/vm.js';
import { fileDigests, snpMeasurement } from '../../shim/snp-launch.js';
import { kernelCmdline } from '../../vmm/qemu-args.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';

const INDEX = 'katats.local/busybox:index';
let env: KatatsEnv;
let c: Containerd;
let image: string;
let fw: SnpFirmware;
let daemon: SnpDaemon;
let dir: string;
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, c.logFile);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ksnpg-'));
  fw = await SnpFirmware.open(path.join(dir, 'fw'), { rsaBits: 2048 });
  daemon = new SnpDaemon(fw, path.join(dir, 'vms'), pino({ level: 'silent' }));
  await daemon.listen(path.join(dir, 'snp.sock'));
  env = await katatsEnv({ extraToml: `[attestation]\nsnp_socket = "${path.join(dir, 'snp.sock')}"` });
  c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, INDEX);
  image = img.name;
}, 600_000);

afterAll(async () => {
  try {
    await helpers.endKatatsSuite(c, env);
  } finally {
    await daemon?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

describe('SEV-SNP report port in a real guest', () => {
  it("a container gets its VM's evidence from 127.0.0.1:8006: HOST_DATA is the pod policy's digest, MEASUREMENT the booted files", async () => {
    const policy = `${allowAllPolicy()}\n# pod snp-guest\n`;
    const b64 = Buffer.from(policy).toString('base64');
    const r = await c.ctr(
      [
        'run', '--rm',
        '--annotation', `io.katacontainers.config.agent.policy=${b64}`,
        '--annotation', 'io.katats.attestation.kbs_url=http://127.0.0.1:1',
        ...c.runtimeArgs('katats'), image, 'snp1',
        'sh', '-c',
        'wget -qO- "http://127.0.0.1:8006/aa/evidence?runtime_data=katats-guest-test"; echo; wget -qO- http://127.0.0.1:8006/cdh/resource/default/key/disk; echo "resource exit $?"',
      ],
      { timeoutMs: 300_000 },
    );
    const agentLog = () => fs.readFileSync(path.join(env.logDir, 'snp1-agent.log'), 'utf8');
    expect(r.code, `${r.stderr}\n${logsOf('snp1')}`).toBe(0);
    const attLog = agentLog().split('\n').filter((l) => /cdh|snp|attest/i.test(l)).join('\n');
    expect(r.stdout, `${r.stderr}\n${attLog}`).toMatch(/^\{"attestation_report"/);
    const [evidenceLine, ...rest] = r.stdout.split('\n');
    const ev = JSON.parse(evidenceLine!) as { attestation_report: string; cert_chain: { cert_type: string }[] };
    const bytes = Buffer.from(ev.attestation_report, 'base64');
    await verifyReport(bytes, fw.chain);
    const rep = decodeReport(bytes);
    expect(rep.hostData).toEqual(createHash('sha256').update(policy).digest());
    expect(rep.reportData.subarray(0, 17).toString()).toBe('katats-guest-test');
    // The measurement the shim stated: the image's files and the command line QEMU was given.
    const cfg = loadConfig(env.configFile);
    const files = resolveGuestFiles(cfg.hypervisor.qemu);
    const params = cfg.hypervisor.qemu.kernel_params.split(/\s+/).filter(Boolean);
    if (cfg.runtime.enable_debug && !params.some((p) => p.startsWith('agent.log='))) params.push('agent.log=debug');
    const vm = { baseCmdline: files.cmdline, kernelParams: params } as Parameters<typeof kernelCmdline>[0];
    const cmdline = kernelCmdline(vm, cfg.hypervisor.qemu.machine_type);
    expect(rep.measurement).toEqual(snpMeasurement(await fileDigests(files, path.join(dir, 'digests')), cmdline));
    expect(ev.cert_chain.map((x) => x.cert_type)).toEqual(['ark', 'ask', 'vcek']);
    // The pod's KBS URL reached the endpoint: nothing listens there in the guest, so the fetch fails (502), not "no KBS" (503).
    expect(rest.join('\n')).toMatch(/resource exit 1/);
    expect(agentLog()).toMatch(/CDH: KBS set/);
    // The pod is gone: so is its registration and report socket.
    await helpers.until(() => fs.readdirSync(path.join(dir, 'vms')), (l) => l.length === 0, 30_000);
  }, 600_000);
});
