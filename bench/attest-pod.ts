// In-pod key release figures: a real katats pod (QEMU, through a private containerd's CRI and a CNI
// bridge) whose container fetches its key N times from the agent's CDH endpoint
// http://127.0.0.1:8006/cdh/resource/default/key/disk. The node's emulated SNP daemon and a KBS bound
// on the bridge's address (the pod's gateway) run in this process, as in test/shim/cri-attest.test.ts.
//   - fetch 1: the RCAR exchange (auth, a report from the SNP daemon through the VM's port, attest)
//     and then the resource GET + JWE decrypt; it also pays the agent's first run of that code;
//   - fetches 2..N: the guest caches the token, not the resource: each is a GET to the KBS with the
//     token and a JWE decrypt with the TEE key (the KBS's request counts show it).
// Timed twice: by the agent (from the request to the plaintext, its log line `CDH: resource released
// by the KBS` with `ms` and `attested`), and by the container's shell around its wget loop with
// /proc/uptime (10 ms ticks: a batch mean that includes starting wget), next to the same loop
// against a path the endpoint refuses without asking the KBS (what wget and the endpoint cost alone).
import { createHash, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { SnpDaemon } from '../attestation/daemon.js';
import { SnpFirmware } from '../attestation/firmware.js';
import { adminToken } from '../attestation/kbs/cli.js';
import { buildKbs, type Kbs } from '../attestation/kbs/server.js';
import { KBS_URL_ANNOTATION } from '../attestation/kbs-url.js';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../harness/containerd.js';
import type { CriClient } from '../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../harness/images/busybox.js';
import { allowAllPolicy } from '../policy/allow-all.js';
import type { Init } from '../proto/registry.js';
import { runtime } from '../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';
import { summarize, type Summary } from './macro/stats.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;
const RESOURCE = '/cdh/resource/default/key/disk';
/** A path the endpoint answers 400 to on its own ('~' is not a resource path character). */
const LOCAL_REFUSAL = '/cdh/resource/default/key/not~valid';
const SECRET = Buffer.alloc(32, 7);
/** The agent writes its log through a virtio port: its last lines may arrive after the exec ended. */
const LOG_WAIT_MS = 30_000;

export interface PodFetchReport {
  accel: string;
  /** Pods started one after the other, each a new VM whose container fetches `fetches` times. */
  pods: number;
  fetches: number;
  /** The agent's times, ms: each pod's first fetch (RCAR + GET) and all later ones (GET with the cached token); per pod, which fetches attested. */
  agent: { first: Summary; later: Summary; attested: boolean[][] };
  /** The container's shell around its wget loops (/proc/uptime, 10 ms ticks): the first fetch, and mean ms per later fetch. */
  container: { first: Summary; later_mean_ms: number; localRefusal_mean_ms: number };
  /** Requests the KBS answered during each pod's fetches. */
  kbs: { auth: number; attest: number; resource: number }[];
  loadavgStart: number[];
  loadavgEnd: number[];
}

const policyAnnotation = 'io.katacontainers.config.agent.policy';

export async function runPodFetchBench(o: { pods: number; fetches: number; say: (s: string) => void }): Promise<PodFetchReport> {
  if (o.pods < 1) throw new Error('--pods: at least 1');
  if (o.fetches < 2) throw new Error('--fetches: at least 2 (the first attests, the others use its token)');
  const loadavgStart = os.loadavg();
  // Short: the SNP daemon's per-VM sockets live below it (a unix socket path has 107 bytes).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kbap-'));
  const log = pino({ level: 'silent' });
  let daemon: SnpDaemon | undefined;
  let kbs: Kbs | undefined;
  let env: KatatsEnv | undefined;
  let cd: Containerd | undefined;
  let pod: string | undefined;
  try {
    const fw = await SnpFirmware.open(path.join(dir, 'fw'));
    daemon = new SnpDaemon(fw, path.join(dir, 'vms'), log);
    await daemon.listen(path.join(dir, 'snp.sock'));
    o.say('building or finding the host binaries and the guest image');
    env = await katatsEnv({ extraToml: `[attestation]\nsnp_socket = "${path.join(dir, 'snp.sock')}"` });
    cd = await startContainerd({ cri: true, cni: true, flavor: 'bookworm', runtimes: [{ ...env.runtime, podAnnotations: ['io.katacontainers.*', 'io.katats.*'] }] });
    const img = await busyboxImage();
    await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
    await cd.criApi().waitForImage(img.name);

    const policy = allowAllPolicy();
    const admin = generateKeyPairSync('ed25519');
    kbs = await buildKbs({
      trustedArks: [Buffer.from(fw.chain.ark.rawData)],
      adminPublicKey: admin.publicKey,
      resourcesDir: path.join(dir, 'resources'),
      logger: log,
      policy: `package kbs\n\nallow if input.snp.host_data == "${createHash('sha256').update(policy).digest('hex')}"\n`,
    });
    const counts = { auth: 0, attest: 0, resource: 0 };
    kbs.app.addHook('onResponse', (req, _reply, done) => {
      if (req.url === '/kbs/v0/auth') counts.auth++;
      else if (req.url === '/kbs/v0/attest') counts.attest++;
      else if (req.method === 'GET' && req.url.startsWith('/kbs/v0/resource/')) counts.resource++;
      done();
    });
    const kbsUrl = await kbs.app.listen({ host: cd.cniNetwork!.gateway, port: 0 });
    const tok = await adminToken(admin.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
    const put = await fetch(`${kbsUrl}/kbs/v0/resource/default/key/disk`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/octet-stream' }, body: SECRET });
    if (put.status !== 200) throw new Error(`setting the resource: KBS answered ${put.status}`);

    const accel = env.accel.toUpperCase();
    const cri = cd.criApi();
    const annotations = { [policyAnnotation]: Buffer.from(policy).toString('base64'), [KBS_URL_ANNOTATION]: kbsUrl };
    const runs: PodRun[] = [];
    for (let i = 0; i < o.pods; i++) {
      o.say(`pod ${i + 1} of ${o.pods} (${accel}): starting it, then fetching the key ${o.fetches} times`);
      const before = { ...counts };
      const config = {
        metadata: { name: `bench-attest-${i}`, uid: `bench-attest-${i}-${process.pid}`, namespace: 'default' },
        annotations,
        linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
      };
      pod = (await cri.runtime.RunPodSandbox({ config, runtime_handler: 'katats' }, { timeoutMs: 300_000 })).pod_sandbox_id;
      const r = await fetchesIn(cri, pod, config, img.name, o.fetches, path.join(env.logDir, `${pod}-agent.log`));
      runs.push({ ...r, kbs: { auth: counts.auth - before.auth, attest: counts.attest - before.attest, resource: counts.resource - before.resource } });
      await removePod(cri, pod, o.say);
      pod = undefined;
    }
    const later = runs.flatMap((r) => r.agentMs.slice(1));
    return {
      accel,
      pods: o.pods,
      fetches: o.fetches,
      agent: { first: summarize(runs.map((r) => r.agentMs[0]!)), later: summarize(later), attested: runs.map((r) => r.attested) },
      container: {
        first: summarize(runs.map((r) => r.container.first_ms)),
        later_mean_ms: mean(runs.map((r) => r.container.later_mean_ms)),
        localRefusal_mean_ms: mean(runs.map((r) => r.container.localRefusal_mean_ms)),
      },
      kbs: runs.map((r) => r.kbs),
      loadavgStart,
      loadavgEnd: os.loadavg(),
    };
  } finally {
    if (pod && cd) await removePod(cd.criApi(), pod, o.say);
    await cd?.stop();
    env?.cleanup();
    await kbs?.app.close();
    await daemon?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

interface PodRun {
  /** The agent's time for each fetch, in order. */
  agentMs: number[];
  /** Whether each fetch made an RCAR exchange. */
  attested: boolean[];
  container: { first_ms: number; later_mean_ms: number; localRefusal_mean_ms: number };
  kbs: { auth: number; attest: number; resource: number };
}

const mean = (v: number[]): number => v.reduce((a, b) => a + b, 0) / v.length;

async function removePod(cri: CriClient, pod: string, say: (s: string) => void): Promise<void> {
  await cri.runtime.StopPodSandbox({ pod_sandbox_id: pod }, { timeoutMs: 180_000 }).catch((e: Error) => say(`stopping pod ${pod}: ${e.message}`));
  await cri.runtime.RemovePodSandbox({ pod_sandbox_id: pod }, { timeoutMs: 180_000 }).catch((e: Error) => say(`removing pod ${pod}: ${e.message}`));
}

/** A container in the pod fetches the key `fetches` times; the figures of its shell and of the agent. */
async function fetchesIn(
  cri: CriClient,
  pod: string,
  config: Init<runtime.v1.PodSandboxConfig>,
  image: string,
  fetches: number,
  agentLog: string,
): Promise<Omit<PodRun, 'kbs'>> {
  const ns = { linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } } };
  const { container_id: cid } = await cri.runtime.CreateContainer(
    { pod_sandbox_id: pod, sandbox_config: config, config: { metadata: { name: 'app' }, image: { image }, command: ['sleep', '3600'], ...ns } },
    { timeoutMs: 180_000 },
  );
  await cri.runtime.StartContainer({ container_id: cid }, { timeoutMs: 180_000 });
  const url = (p: string) => `http://127.0.0.1:8006${p}`;
  const later = fetches - 1;
  const script = [
    'u() { read -r a _ </proc/uptime; echo "$a"; }',
    `s=$(u); wget -qO /tmp/key ${url(RESOURCE)} || { echo "first fetch failed"; exit 3; }; e=$(u); echo "first $s $e"`,
    `s=$(u); i=0; while [ $i -lt ${later} ]; do wget -qO /tmp/key ${url(RESOURCE)} || { echo "fetch $i failed"; exit 4; }; i=$((i+1)); done; e=$(u); echo "later $s $e"`,
    `s=$(u); i=0; while [ $i -lt ${later} ]; do wget -qO /dev/null ${url(LOCAL_REFUSAL)} 2>/dev/null; i=$((i+1)); done; e=$(u); echo "refused $s $e"`,
    'sha256sum /tmp/key',
  ].join('\n');
  const r = await cri.runtime.ExecSync({ container_id: cid, cmd: ['sh', '-c', script], timeout: 1200 }, { timeoutMs: 1_260_000 });
  const out = Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString();
  if (r.exit_code !== 0) throw new Error(`the container's fetch loop: exit ${r.exit_code}: ${out.trim()}`);
  if (!out.includes(createHash('sha256').update(SECRET).digest('hex'))) throw new Error(`the container did not get the key: ${out.trim()}`);
  const span = (name: string): number => {
    const m = new RegExp(`^${name} ([0-9.]+) ([0-9.]+)$`, 'm').exec(out);
    if (!m) throw new Error(`no '${name}' line in the container's output: ${out.trim()}`);
    return (Number(m[2]) - Number(m[1])) * 1000;
  };
  const lines = await agentFetchLines(agentLog, fetches);
  return {
    agentMs: lines.map((l) => l.ms),
    attested: lines.map((l) => l.attested),
    container: { first_ms: span('first'), later_mean_ms: span('later') / later, localRefusal_mean_ms: span('refused') / later },
  };
}

/** The agent's `CDH: resource released by the KBS` lines, in order, once `n` are there. */
async function agentFetchLines(file: string, n: number): Promise<{ ms: number; attested: boolean }[]> {
  const deadline = Date.now() + LOG_WAIT_MS;
  for (;;) {
    const found = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.includes('"CDH: resource released by the KBS"'))
      .map((l) => JSON.parse(l) as { ms?: number; attested?: boolean });
    if (found.length >= n) {
      if (found.some((f) => typeof f.ms !== 'number')) throw new Error("the agent's fetch lines carry no ms: an older agent?");
      return found.slice(0, n).map((f) => ({ ms: f.ms!, attested: f.attested === true }));
    }
    if (Date.now() > deadline) throw new Error(`the agent logged ${found.length} of ${n} resource fetches within ${LOG_WAIT_MS / 1000} s (${file})`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
