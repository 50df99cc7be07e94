// Secure key release through CRI on TCG (bookworm's containerd 1.6, CNI bridge): the KBS listens on
// the bridge's address (the pods' gateway), the SNP daemon is the node's firmware, the shim registers
// each pod's VM with HOST_DATA = its policy's digest. A pod whose policy digest the KBS's attestation
// policy names gets its key from 127.0.0.1:8006 in the pod and prints its digest; the same pod with a
// one-line policy change (another HOST_DATA) gets the KBS's 403 and no secret. The pod's evidence
// (GET /aa/evidence in the pod) verifies against the daemon's chain with HOST_DATA = the policy's
// sha256 and the MEASUREMENT of the files the VM booted with its command line.
import { createHash, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnpDaemon } from '../../attestation/daemon.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { decodeReport } from '../../attestation/report.js';
import { verifyReport } from '../../attestation/verify.js';
import { loadConfig } from '../../shim/config.js';
import { fileDigests, snpMeasurement } from '../../shim/snp-launch.js';
import { resolveGuestFiles } from '../../shim/vm.js';
import type { VmConfig } from '../../vmm/config.js';
import { kernelCmdline } from '../../vmm/qemu-args.js';
import { adminToken } from '../../attestation/kbs/cli.js';
import { buildKbs, type Kbs } from '../../attestation/kbs/server.js';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;
const SECRET = Buffer.from('the disk key of the attested pod\n');
const POLICY_A = `${allowAllPolicy()}\n# pod attest\n`;
const POLICY_B = `${POLICY_A}# one line more\n`;
const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

let env: KatatsEnv;
let cd: Containerd;
let cri: CriClient;
let image: string;
let fw: SnpFirmware;
let daemon: SnpDaemon;
let kbs: Kbs;
let kbsUrl: string;
let dir: string;
const pods: string[] = [];

async function podWith(key: string, policy: string): Promise<{ pod: string; container: string }> {
  const config: Init<runtime.v1.PodSandboxConfig> = {
    metadata: { name: `attest-${key}`, uid: `uid-attest-${key}-${process.pid}`, namespace: 'default' },
    hostname: `attest-${key}`,
    annotations: { 'io.katacontainers.config.agent.policy': Buffer.from(policy).toString('base64'), 'io.katats.attestation.kbs_url': kbsUrl },
    linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id: pod } = await cri.runtime.RunPodSandbox({ config, runtime_handler: 'katats' }, { timeoutMs: 300_000 });
  pods.push(pod);
  const { container_id: container } = await cri.runtime.CreateContainer(
    { pod_sandbox_id: pod, sandbox_config: config, config: { metadata: { name: 'app' }, image: { image }, command: ['sleep', '3600'], linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } } } },
    { timeoutMs: 180_000 },
  );
  await cri.runtime.StartContainer({ container_id: container }, { timeoutMs: 180_000 });
  return { pod, container };
}

async function exec(container: string, script: string): Promise<{ code: number; out: string }> {
  const r = await cri.runtime.ExecSync({ container_id: container, cmd: ['sh', '-c', script], timeout: 120 }, { timeoutMs: 150_000 });
  return { code: r.exit_code, out: Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString() };
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kcria-'));
  const log = pino({ level: 'silent' });
  fw = await SnpFirmware.open(path.join(dir, 'fw'), { rsaBits: 2048 });
  daemon = new SnpDaemon(fw, path.join(dir, 'vms'), log);
  await daemon.listen(path.join(dir, 'snp.sock'));
  env = await katatsEnv({ extraToml: `[attestation]\nsnp_socket = "${path.join(dir, 'snp.sock')}"` });
  cd = await startContainerd({ cri: true, cni: true, flavor: 'bookworm', runtimes: [{ ...env.runtime, podAnnotations: ['io.katacontainers.*', 'io.katats.*'] }] });
  const img = await busyboxImage();
  await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
  image = img.name;
  cri = cd.criApi();
  await cri.waitForImage(image);
  // The KBS where the pods reach this machine: the bridge's address, their gateway.
  const kp = generateKeyPairSync('ed25519');
  const adminKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  kbs = await buildKbs({ trustedArks: [Buffer.from(fw.chain.ark.rawData)], adminPublicKey: kp.publicKey, resourcesDir: path.join(dir, 'resources'), logger: log });
  kbsUrl = await kbs.app.listen({ host: cd.cniNetwork!.gateway, port: 0 });
  const policy = `package kbs\n\ndefault allow := false\n\nallow if {\n  input.snp.host_data == "${sha256(POLICY_A)}"\n  input.resource.repository == "default"\n}\n`;
  const admin = async (p: string, body: Buffer, type: string) => {
    const r = await fetch(kbsUrl + p, { method: 'POST', headers: { 'content-type': type, authorization: `Bearer ${await adminToken(adminKey)}` }, body });
    await r.arrayBuffer();
    return r.status;
  };
  expect(await admin('/kbs/v0/resource/default/key/disk', SECRET, 'application/octet-stream')).toBe(200);
  expect(await admin('/kbs/v0/resource-policy', Buffer.from(JSON.stringify({ policy: Buffer.from(policy).toString('base64url') })), 'application/json')).toBe(200);
}, 900_000);

afterAll(async () => {
  try {
    for (const id of pods) {
      await cri?.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 }).catch(() => undefined);
      await cri?.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 }).catch(() => undefined);
    }
    await helpers.endKatatsSuite(cd, env);
  } finally {
    await kbs?.app.close();
    await daemon?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 300_000);

describe('secure key release to an attested pod, through CRI', () => {
  it('the pod whose policy digest the KBS allows fetches its key and prints its digest', async () => {
    const { pod, container } = await podWith('a', POLICY_A);
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    const r = await exec(container, 'wget -qO- http://127.0.0.1:8006/cdh/resource/default/key/disk | sha256sum');
    expect(r, logs()).toMatchObject({ code: 0 });
    expect(r.out.trim().split(/\s+/)[0], logs()).toBe(sha256(SECRET));
    const ev = await exec(container, 'wget -qO- "http://127.0.0.1:8006/aa/evidence?runtime_data=katats-guest-test"');
    expect(ev.out, logs()).toMatch(/^\{"attestation_report"/);
    const bytes = Buffer.from((JSON.parse(ev.out) as { attestation_report: string }).attestation_report, 'base64');
    await verifyReport(bytes, fw.chain);
    const rep = decodeReport(bytes);
    expect(rep.hostData.toString('hex')).toBe(sha256(POLICY_A));
    expect(rep.reportData.subarray(0, 17).toString()).toBe('katats-guest-test');
    // The measurement the shim stated: the image's files and the command line QEMU was given.
    const cfg = loadConfig(env.configFile);
    const files = resolveGuestFiles(cfg.hypervisor.qemu);
    const params = cfg.hypervisor.qemu.kernel_params.split(/\s+/).filter(Boolean);
    if (cfg.runtime.enable_debug && !params.some((p) => p.startsWith('agent.log='))) params.push('agent.log=debug');
    const cmdline = kernelCmdline({ baseCmdline: files.cmdline, kernelParams: params } as VmConfig, cfg.hypervisor.qemu.machine_type);
    expect(rep.measurement).toEqual(snpMeasurement(await fileDigests(files, path.join(dir, 'digests')), cmdline));
  }, 600_000);

  it('the same pod with a one-line policy change gets 403 and no secret', async () => {
    const { pod, container } = await podWith('b', POLICY_B);
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    const r = await exec(container, 'wget -O /tmp/key http://127.0.0.1:8006/cdh/resource/default/key/disk; echo "exit $?"; ls /tmp/key 2>&1; true');
    expect(r.out, logs()).toMatch(/403 Forbidden/);
    expect(r.out).toMatch(/exit 1/);
    expect(r.out).not.toContain(SECRET.toString().trim());
    expect(fs.readFileSync(path.join(env.logDir, `${pod}-agent.log`), 'utf8')).toMatch(/PolicyDeny/);
  }, 600_000);

  it('removing the pods releases their VMs from the SNP firmware', async () => {
    for (const id of pods.splice(0)) {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
    }
    expect(fs.readdirSync(path.join(dir, 'vms'))).toEqual([]);
  }, 300_000);
});
