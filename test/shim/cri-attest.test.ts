// Secure key release through CRI on TCG (bookworm's containerd 1.6, CNI bridge): the KBS listens on
// the bridge's address (the pods' gateway), the SNP daemon is the node's firmware, the shim registers
// each pod's VM with HOST_DATA = its policy's (or its initdata's) digest and the MEASUREMENT of what
// it boots. The KBS's attestation policy names the measurement of the default handler's guest and
// two HOST_DATA values: the policy POLICY_A's digest and the initdata document's.
//   - a pod with POLICY_A gets its key from 127.0.0.1:8006 in the pod and prints its digest; its
//     evidence verifies (HOST_DATA = the policy's sha256, MEASUREMENT = the booted files and command line);
//   - the same pod with a one-line policy change (another HOST_DATA) gets the KBS's 403 and no
//     secret, and a container whose env holds a sealed secret is not created: the error names the
//     env var and the KBS's answer;
//   - a pod with initdata (no policy or KBS annotation): the KBS comes from its cdh.toml, the policy
//     in force is its policy.rego (which refuses one env value, proven by a refused container), the
//     report's HOST_DATA is the document's sha384 cut to 32 bytes, and its container's sealed env
//     value and sealed volume file are unsealed before it starts (the host's file keeps the sealed text);
//   - a pod of a second runtime handler whose configuration adds a kernel parameter: another command
//     line, so (in this emulation, where MEASUREMENT covers the command line) another measurement;
//     the KBS refuses it with 403 and its container sees no secret;
//   - a pod of a third handler whose configuration names another initrd (the image's own followed by
//     a cpio archive with /etc/katats-variant: other booted files, the same command line): its guest's
//     init finds the file and says its label on the console, its evidence shows the measurement of
//     those files (not the default's), and the KBS refuses it with 403: no secret.
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
import { resolveAccel } from '../../vmm/accel.js';
import { qemuCmdline } from '../../shim/vm-qemu.js';
import { writeVariantInitrd } from '../../guest/variant.js';
import { adminToken } from '../../attestation/kbs/cli.js';
import { buildKbs, type Kbs } from '../../attestation/kbs/server.js';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import { encodeInitdataAnnotation, hostDataOf, INITDATA_ANNOTATION } from '../../attestation/initdata.js';
import { sealSecret } from '../../attestation/sealed-secret.js';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;
const SECRET = Buffer.from('the disk key of the attested pod\n');
const POLICY_A = `${allowAllPolicy()}\n# pod attest\n`;
const POLICY_B = `${POLICY_A}# one line more\n`;
const sha256 = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
const SEALED = sealSecret('kbs:///default/key/disk');
/** initdata's policy: allow-all but for containers carrying FORBIDDEN=1 (so that it is seen to be the policy in force). */
const INIT_POLICY = allowAllPolicy().replace('package agent_policy\n', 'package agent_policy\n\nimport rego.v1\n').replace(
  'default CreateContainerRequest := true',
  'default CreateContainerRequest := false\n\nCreateContainerRequest if {\n  not "FORBIDDEN=1" in input.OCI.Process.Env\n}',
);
const initdataDoc = (kbs: string) =>
  `algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n"cdh.toml" = '''\nsocket = 'unix:///run/confidential-containers/cdh.sock'\ncredentials = []\n\n[kbc]\nname = 'cc_kbc'\nurl = '${kbs}'\n'''\n\n"policy.rego" = '''\n${INIT_POLICY}'''\n`;

let env: KatatsEnv;
let cd: Containerd;
let cri: CriClient;
let image: string;
let fw: SnpFirmware;
let daemon: SnpDaemon;
let kbs: Kbs;
let kbsUrl: string;
let dir: string;
let initdata: string;
/** The default handler's guest measurement (its files and command line), hex. */
let measurement: Buffer;
/** The configuration of the handler whose initrd carries one more file, and that file's label. */
let variantConfig: string;
const VARIANT = 'katats-test-variant';
const pods: string[] = [];

interface PodOptions {
  annotations: Record<string, string>;
  handler?: string;
  /** The app container's env and volumes. */
  envs?: { key: string; value: string }[];
  mounts?: Init<runtime.v1.Mount>[];
  command?: string[];
}

async function podWith(key: string, o: PodOptions): Promise<{ pod: string; container: string; config: Init<runtime.v1.PodSandboxConfig> }> {
  const config: Init<runtime.v1.PodSandboxConfig> = {
    metadata: { name: `attest-${key}`, uid: `uid-attest-${key}-${process.pid}`, namespace: 'default' },
    hostname: `attest-${key}`,
    annotations: o.annotations,
    linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id: pod } = await cri.runtime.RunPodSandbox({ config, runtime_handler: o.handler ?? 'katats' }, { timeoutMs: 300_000 });
  pods.push(pod);
  const container = await containerIn(pod, config, 'app', { envs: o.envs ?? [], mounts: o.mounts ?? [], ...(o.command ? { command: o.command } : {}) });
  await cri.runtime.StartContainer({ container_id: container }, { timeoutMs: 180_000 });
  return { pod, container, config };
}

async function containerIn(
  pod: string,
  config: Init<runtime.v1.PodSandboxConfig>,
  name: string,
  c: { envs: { key: string; value: string }[]; mounts: Init<runtime.v1.Mount>[]; command?: string[] },
): Promise<string> {
  const { container_id } = await cri.runtime.CreateContainer(
    {
      pod_sandbox_id: pod,
      sandbox_config: config,
      config: { metadata: { name }, image: { image }, command: c.command ?? ['sleep', '3600'], envs: c.envs, mounts: c.mounts, linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } } },
    },
    { timeoutMs: 180_000 },
  );
  return container_id;
}

/** StartContainer's error message (the agent's CreateContainer runs there); undefined if it started. */
function startRefused(container: string): Promise<string | undefined> {
  return cri.runtime.StartContainer({ container_id: container }, { timeoutMs: 300_000 }).then(
    () => undefined,
    (e: Error) => e.message,
  );
}

const policyAnnotations = (policy: string) => ({ 'io.katacontainers.config.agent.policy': Buffer.from(policy).toString('base64'), 'io.katats.attestation.kbs_url': kbsUrl });

/** A handler's MEASUREMENT as a verifier computes it: the image's files and the command line QEMU is given. */
async function measurementOf(configFile: string): Promise<Buffer> {
  const cfg = loadConfig(configFile);
  const files = resolveGuestFiles(cfg.hypervisor.qemu);
  const params = cfg.hypervisor.qemu.kernel_params.split(/\s+/).filter(Boolean);
  if (cfg.runtime.enable_debug && !params.some((p) => p.startsWith('agent.log='))) params.push('agent.log=debug');
  const q = cfg.hypervisor.qemu;
  const { accel } = await resolveAccel(q.accel, { cacheDir: path.join(cfg.runtime.state_dir, 'vmm'), kernel: files.kernel, qemuBinary: q.path });
  const cmdline = qemuCmdline(q, files.cmdline, params, accel);
  return snpMeasurement(await fileDigests(files, path.join(dir, 'digests')), cmdline);
}

async function exec(container: string, script: string): Promise<{ code: number; out: string }> {
  const r = await cri.runtime.ExecSync({ container_id: container, cmd: ['sh', '-c', script], timeout: 240 }, { timeoutMs: 270_000 });
  return { code: r.exit_code, out: Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString() };
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kcria-'));
  const log = pino({ level: 'silent' });
  fw = await SnpFirmware.open(path.join(dir, 'fw'), { rsaBits: 2048 });
  daemon = new SnpDaemon(fw, path.join(dir, 'vms'), log);
  await daemon.listen(path.join(dir, 'snp.sock'));
  env = await katatsEnv({ extraToml: `[attestation]\nsnp_socket = "${path.join(dir, 'snp.sock')}"` });
  // A second handler (Kata's way: its own configuration file) whose guests boot with one more kernel parameter.
  const altConfig = path.join(env.dir, 'configuration-alt.toml');
  const base = fs.readFileSync(env.configFile, 'utf8');
  expect(base).toContain('[hypervisor.qemu]\n');
  fs.writeFileSync(altConfig, base.replace('[hypervisor.qemu]\n', '[hypervisor.qemu]\nkernel_params = "katats.variant=alt"\n'));
  // A third handler boots another guest image: the same kernel and rootfs, the initrd with one more file.
  const variantInitrd = path.join(env.dir, 'initrd-variant.img');
  writeVariantInitrd(resolveGuestFiles(loadConfig(env.configFile).hypervisor.qemu).initrd, VARIANT, variantInitrd);
  variantConfig = path.join(env.dir, 'configuration-variant.toml');
  fs.writeFileSync(variantConfig, base.replace('[hypervisor.qemu]\n', `[hypervisor.qemu]\ninitrd = "${variantInitrd}"\n`));
  const annotations = ['io.katacontainers.*', 'io.katats.*'];
  cd = await startContainerd({
    cri: true,
    cni: true,
    flavor: 'bookworm',
    runtimes: [
      { ...env.runtime, podAnnotations: annotations },
      { ...env.runtime, name: 'katats-alt', options: { ConfigPath: altConfig }, podAnnotations: annotations },
      { ...env.runtime, name: 'katats-variant', options: { ConfigPath: variantConfig }, podAnnotations: annotations },
    ],
  });
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
  initdata = initdataDoc(kbsUrl);
  measurement = await measurementOf(env.configFile);
  const initHostData = hostDataOf(createHash('sha384').update(initdata).digest()).toString('hex');
  const policy = `package kbs\n\ndefault allow := false\n\nallowed_host_data := {"${sha256(POLICY_A)}", "${initHostData}"}\n\nallow if {\n  input.snp.measurement == "${measurement.toString('hex')}"\n  input.snp.host_data in allowed_host_data\n  input.resource.repository == "default"\n}\n`;
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
    const { pod, container } = await podWith('a', { annotations: policyAnnotations(POLICY_A) });
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
    expect(rep.measurement).toEqual(measurement);
  }, 600_000);

  it('the same pod with a one-line policy change gets 403 and no secret; a container with a sealed env value is not created', async () => {
    const { pod, container, config } = await podWith('b', { annotations: policyAnnotations(POLICY_B) });
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    const r = await exec(container, 'wget -O /tmp/key http://127.0.0.1:8006/cdh/resource/default/key/disk; echo "exit $?"; ls /tmp/key 2>&1; true');
    expect(r.out, logs()).toMatch(/403 Forbidden/);
    expect(r.out).toMatch(/exit 1/);
    expect(r.out).not.toContain(SECRET.toString().trim());
    expect(fs.readFileSync(path.join(env.logDir, `${pod}-agent.log`), 'utf8')).toMatch(/PolicyDeny/);
    // The agent unseals before the container exists: the KBS's refusal is the agent's CreateContainer's,
    // which containerd's CRI makes at StartContainer.
    const sealed = await containerIn(pod, config, 'sealed', { envs: [{ key: 'DISK_KEY', value: SEALED }], mounts: [] });
    const err = await startRefused(sealed);
    expect(err, logs()).toMatch(/env DISK_KEY: sealed secret kbs:\/\/\/default\/key\/disk: the KBS answered 403: PolicyDeny/);
    const { status } = await cri.runtime.ContainerStatus({ container_id: sealed });
    expect(status?.state).not.toBe(runtime.v1.ContainerState.CONTAINER_RUNNING);
  }, 600_000);

  it('a pod with initdata: its KBS, its policy, HOST_DATA = its digest; sealed env and volume unsealed before the container starts', async () => {
    const vol = path.join(dir, 'sealed-volume');
    fs.mkdirSync(vol);
    fs.writeFileSync(path.join(vol, 'disk-key'), `${SEALED}\n`);
    fs.writeFileSync(path.join(vol, 'plain'), 'not sealed\n');
    const { pod, container, config } = await podWith('init', {
      annotations: { [INITDATA_ANNOTATION]: await encodeInitdataAnnotation(initdata) },
      envs: [{ key: 'DISK_KEY', value: SEALED }],
      mounts: [{ container_path: '/secrets', host_path: vol, readonly: true }],
      // What the container's own process saw, written before anything else runs in it.
      command: ['sh', '-c', 'printf %s "$DISK_KEY" | sha256sum > /tmp/init-env.sum; exec sleep 3600'],
    });
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    // The env of an exec is built by the host from the container's spec: unsealed as well.
    const r = await exec(container, 'cat /tmp/init-env.sum; printf %s "$DISK_KEY" | sha256sum; sha256sum /secrets/disk-key; cat /secrets/plain');
    expect(r, logs()).toMatchObject({ code: 0 });
    const lines = r.out.trim().split('\n');
    expect(lines[0]!.split(/\s+/)[0], logs()).toBe(sha256(SECRET));
    expect(lines[1]!.split(/\s+/)[0]).toBe(sha256(SECRET));
    expect(lines[2]!.split(/\s+/)[0]).toBe(sha256(SECRET));
    expect(lines[3]).toBe('not sealed');
    // The host's copy keeps the sealed text: the plaintext stayed in the guest.
    expect(fs.readFileSync(path.join(vol, 'disk-key'), 'utf8')).toBe(`${SEALED}\n`);
    const ev = await exec(container, 'wget -qO- "http://127.0.0.1:8006/aa/evidence?runtime_data=initdata"');
    const rep = decodeReport(Buffer.from((JSON.parse(ev.out) as { attestation_report: string }).attestation_report, 'base64'));
    expect(rep.hostData).toEqual(createHash('sha384').update(initdata).digest().subarray(0, 32));
    // initdata's policy.rego is in force: the one env value it refuses.
    const forbidden = await containerIn(pod, config, 'forbidden', { envs: [{ key: 'FORBIDDEN', value: '1' }], mounts: [] });
    expect(await startRefused(forbidden), logs()).toMatch(/CreateContainerRequest is blocked by policy/);
  }, 600_000);

  it('a pod whose guest boots another command line (a second runtime handler) has another measurement: 403, no secret', async () => {
    const { pod, container } = await podWith('alt', { annotations: policyAnnotations(POLICY_A), handler: 'katats-alt' });
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    const r = await exec(container, 'cat /proc/cmdline; wget -O /tmp/key http://127.0.0.1:8006/cdh/resource/default/key/disk; echo "exit $?"; ls /tmp/key 2>&1; true');
    expect(r.out, logs()).toContain('katats.variant=alt');
    expect(r.out, logs()).toMatch(/403 Forbidden/);
    expect(r.out).toMatch(/exit 1/);
    expect(r.out).not.toContain(SECRET.toString().trim());
    const ev = await exec(container, 'wget -qO- "http://127.0.0.1:8006/aa/evidence?runtime_data=alt"');
    const rep = decodeReport(Buffer.from((JSON.parse(ev.out) as { attestation_report: string }).attestation_report, 'base64'));
    expect(rep.hostData.toString('hex')).toBe(sha256(POLICY_A));
    expect(rep.measurement).not.toEqual(measurement);
  }, 600_000);

  it('a pod of another guest image (its initrd holds one more file) boots that image, has its measurement: 403, no secret', async () => {
    const { pod, container } = await podWith('variant', { annotations: policyAnnotations(POLICY_A), handler: 'katats-variant' });
    const logs = () => helpers.logsOf(env.logDir, pod, cd.logFile, 30);
    // The initramfs is gone once the guest switched to its rootfs: its init said what it found there.
    expect(fs.readFileSync(path.join(env.logDir, `${pod}-console.log`), 'utf8'), logs()).toContain(`katats-init: image variant ${VARIANT}`);
    const r = await exec(container, 'cat /proc/cmdline; wget -O /tmp/key http://127.0.0.1:8006/cdh/resource/default/key/disk; echo "exit $?"; ls /tmp/key 2>&1; true');
    expect(r.out, logs()).not.toContain('katats.variant=');
    expect(r.out, logs()).toMatch(/403 Forbidden/);
    expect(r.out).toMatch(/exit 1/);
    expect(r.out).not.toContain(SECRET.toString().trim());
    const ev = await exec(container, 'wget -qO- "http://127.0.0.1:8006/aa/evidence?runtime_data=variant"');
    const bytes = Buffer.from((JSON.parse(ev.out) as { attestation_report: string }).attestation_report, 'base64');
    await verifyReport(bytes, fw.chain);
    const rep = decodeReport(bytes);
    expect(rep.hostData.toString('hex')).toBe(sha256(POLICY_A));
    // The same command line as the default handler's; the initrd's bytes make the difference.
    expect(rep.measurement).toEqual(await measurementOf(variantConfig));
    expect(rep.measurement).not.toEqual(measurement);
  }, 600_000);

  it('removing the pods releases their VMs from the SNP firmware', async () => {
    for (const id of pods.splice(0)) {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
    }
    expect(fs.readdirSync(path.join(dir, 'vms'))).toEqual([]);
  }, 300_000);
});
