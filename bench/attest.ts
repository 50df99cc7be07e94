// Attestation figures, host-only: the whole RCAR exchange (auth, a report from the emulated SNP
// daemon, attest), a resource fetch with the cached token (GET + JWE decrypt), the report alone, and
// the KBS's requests/s for resource fetches and for /auth with many in flight. The KBS, the daemon
// and the client share this process (one event loop): the figures are upper bounds on latency and
// lower bounds on what a separate KBS process serves.
// Then, in the same run, the in-pod figures (bench/attest-pod.ts): a katats pod's container fetching
// its key N times from the agent's CDH endpoint, set beside the host-only ones (their ratio).
// Run: npx tsx bench/attest.ts [--quick] [--no-pod] [--pods P] [--fetches N] [--out DIR]
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { KbsClient } from '../attestation/client.js';
import { SnpDaemon } from '../attestation/daemon.js';
import { EmulatedSnpDevice } from '../attestation/device.js';
import { SnpFirmware } from '../attestation/firmware.js';
import { adminToken } from '../attestation/kbs/cli.js';
import { buildKbs } from '../attestation/kbs/server.js';
import { runPodFetchBench, type PodFetchReport } from './attest-pod.js';

const quick = process.argv.includes('--quick');
const outArg = process.argv.indexOf('--out');
const seconds = quick ? 1 : 5;
const withPod = !process.argv.includes('--no-pod');
const fetchesArg = process.argv.indexOf('--fetches');
const fetches = fetchesArg >= 0 ? Number(process.argv[fetchesArg + 1]) : quick ? 6 : 21;
if (!Number.isInteger(fetches) || fetches < 2) throw new Error('--fetches N: an integer, at least 2');
const podsArg = process.argv.indexOf('--pods');
const pods = podsArg >= 0 ? Number(process.argv[podsArg + 1]) : quick ? 1 : 3;
if (!Number.isInteger(pods) || pods < 1) throw new Error('--pods P: an integer, at least 1');

function stats(ms: number[]): { n: number; mean: number; p50: number; p95: number } {
  const s = [...ms].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { n: s.length, mean: s.reduce((a, b) => a + b, 0) / s.length, p50: at(0.5), p95: at(0.95) };
}

async function timed(f: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const t = performance.now();
    await f();
    out.push(performance.now() - t);
  }
  return out;
}

async function rate(f: () => Promise<unknown>, inFlight: number): Promise<number> {
  let done = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        await f();
        done++;
      }
    }),
  );
  return done / ((performance.now() - t0) / 1000);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-bench-attest-'));
const log = pino({ level: 'silent' });
try {
  const fw = await SnpFirmware.open(path.join(dir, 'fw'));
  const daemon = new SnpDaemon(fw, path.join(dir, 'vms'), log);
  await daemon.listen(path.join(dir, 'snp.sock'));
  const port = await daemon.launch('bench', Buffer.alloc(48, 1), Buffer.alloc(32, 2));
  const admin = generateKeyPairSync('ed25519');
  const kbs = await buildKbs({
    trustedArks: [Buffer.from(fw.chain.ark.rawData)],
    adminPublicKey: admin.publicKey,
    resourcesDir: path.join(dir, 'resources'),
    logger: log,
    policy: `package kbs\nallow if input.snp.host_data == "${'02'.repeat(32)}"\n`,
  });
  const url = await kbs.app.listen({ host: '127.0.0.1', port: 0 });
  const tok = await adminToken(admin.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
  await fetch(`${url}/kbs/v0/resource/default/key/disk`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/octet-stream' }, body: Buffer.alloc(32, 7) });
  const device = new EmulatedSnpDevice(port);
  const client = new KbsClient({ url, device });
  await client.getResource('default', 'key', 'disk'); // warm-up

  const report = stats(await timed(() => device.getReport(Buffer.alloc(64))));
  const rcar = stats(await timed(() => client.attest()));
  const fetchCached = stats(await timed(() => client.getResource('default', 'key', 'disk')));
  const token = await client.attest();
  const get = (): Promise<unknown> => fetch(`${url}/kbs/v0/resource/default/key/disk`, { headers: { authorization: `Bearer ${token}` } }).then((r) => r.arrayBuffer());
  const resourceRate = await rate(get, 16);
  const auth = (): Promise<unknown> =>
    fetch(`${url}/kbs/v0/auth`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"version":"0.4.0","tee":"snp"}' }).then((r) => r.arrayBuffer());
  const authRate = await rate(auth, 16);
  const rcarRate = await rate(() => new KbsClient({ url, device }).attest(), 8);
  await kbs.app.close();
  await daemon.close();

  let pod: PodFetchReport | { error: string } | undefined;
  if (withPod) {
    try {
      pod = await runPodFetchBench({ pods, fetches, say: (l) => process.stderr.write(`attest-pod: ${l}\n`) });
    } catch (e) {
      pod = { error: (e as Error).message };
      process.stderr.write(`attest-pod: failed: ${pod.error}\n`);
    }
  }

  const result = {
    date: new Date().toISOString(),
    quick,
    seconds,
    cpus: os.cpus().length,
    loadavg: os.loadavg(),
    report,
    rcar,
    fetchCached,
    resourceRate,
    authRate,
    rcarRate,
    ...(pod ? { pod } : {}),
  };
  const f = (s: ReturnType<typeof stats>): string => `${s.mean.toFixed(2)} ms mean, ${s.p50.toFixed(2)} p50, ${s.p95.toFixed(2)} p95 (n=${s.n})`;
  const table = [
    `| what | figure |`,
    `|---|---|`,
    `| report from the SNP daemon (sign + chain) | ${f(report)} |`,
    `| whole RCAR exchange (auth, report, attest, token) | ${f(rcar)} |`,
    `| resource fetch with cached token (GET, JWE decrypt) | ${f(fetchCached)} |`,
    `| KBS resource GETs/s, 16 in flight | ${resourceRate.toFixed(0)} |`,
    `| KBS /auth requests/s, 16 in flight | ${authRate.toFixed(0)} |`,
    `| full RCAR exchanges/s, 8 clients | ${rcarRate.toFixed(1)} |`,
  ].join('\n');
  const podTable = pod === undefined ? '' : 'error' in pod ? `\nIn-pod fetch: failed: ${pod.error}\n` : `\n${podFetchTable(pod, rcar, fetchCached)}\n`;
  process.stdout.write(`${table}\n${podTable}(load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}, ${os.cpus().length} CPUs, one process)\n`);
  if (outArg >= 0 && process.argv[outArg + 1]) {
    const out = process.argv[outArg + 1]!;
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'results.json'), `${JSON.stringify(result, null, 2)}\n`);
    fs.writeFileSync(
      path.join(out, 'README.md'),
      `# Attestation\n\n\`${['npx tsx bench/attest.ts', ...process.argv.slice(2).filter((a, i, all) => a !== '--out' && all[i - 1] !== '--out')].join(' ')}\`, ${result.date}.\n\n## Host-only (no VM)\n\n${table}\n\nKBS, SNP daemon and client in one process; load average at the end ${result.loadavg.map((x) => x.toFixed(2)).join(' ')} on ${result.cpus} CPUs shared with other work.\n${pod ? `\n## In a pod\n${podTable}` : ''}`,
    );
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** The in-pod figures beside the host-only ones of the same run. */
function podFetchTable(p: PodFetchReport, rcar: ReturnType<typeof stats>, cached: ReturnType<typeof stats>): string {
  const hostFirst = rcar.p50 + cached.p50;
  const { first, later } = p.agent;
  const firstAttested = p.agent.attested.filter((a) => a[0]).length;
  const laterAttested = p.agent.attested.reduce((n, a) => n + a.slice(1).filter(Boolean).length, 0);
  const ms = (x: number): string => x.toFixed(x < 100 ? 1 : 0);
  const kbs = p.kbs.map((k) => `${k.auth}/${k.attest}/${k.resource}`).join(', ');
  return [
    `In a pod (${p.accel}, katats QEMU guest): ${p.pods} pod(s) one after the other, each container fetching http://127.0.0.1:8006/cdh/resource/default/key/disk ${p.fetches} times.`,
    '',
    `| what | in the pod: p50, p95 (n) | host-only peer, p50 | ratio of p50s |`,
    `|---|---|---|---|`,
    `| first fetch of a pod, agent's time: RCAR exchange + GET + decrypt (${firstAttested} of ${p.pods} attested) | ${ms(first.median)} ms, ${ms(first.p95)} (${first.n}) | ${hostFirst.toFixed(1)} ms (RCAR + cached-token fetch) | ${(first.median / hostFirst).toFixed(0)}x |`,
    `| later fetches, agent's time: token cached, resource not (GET + decrypt; ${laterAttested} attested again) | ${ms(later.median)} ms, ${ms(later.p95)} (${later.n}) | ${cached.p50.toFixed(1)} ms | ${(later.median / cached.p50).toFixed(0)}x |`,
    `| first fetch, the container's wget (/proc/uptime, 10 ms ticks) | ${ms(p.container.first.median)} ms, ${ms(p.container.first.p95)} (${p.container.first.n}) | | |`,
    `| later fetches, the container's wget loop, mean | ${ms(p.container.later_mean_ms)} ms | | |`,
    `| the same loop on a path the endpoint refuses itself (400, no KBS), mean | ${ms(p.container.localRefusal_mean_ms)} ms | | |`,
    '',
    `KBS requests during each pod's fetches (auth/attest/resource GETs): ${kbs}.`,
    '',
    "The agent's time runs from the endpoint's request to the plaintext (its log line); the container's include starting wget and the endpoint's HTTP. " +
      'A fetch after the first reuses the token (the guest caches it, not the resource). See bench/attest-pod.ts.',
  ].join('\n');
}
