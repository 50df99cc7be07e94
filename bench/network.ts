// Pod network benchmark: a runc pod, a gVisor pod and a katats pod on one CNI bridge of a private
// containerd (CRI, harness/cni.ts), measured in the same run from this machine. `npm run bench`
// runs it (bench/index.ts, its report and charts: bench/report/network.ts); alone:
//   npx tsx bench/network.ts [--quick] [--n 3] [--requests 200] [--mib 32] [--containerd trixie]
// Figures (over all rounds):
//   rr      ms per HTTP GET of a 6-byte file from this machine to the pod's busybox httpd, a new
//           TCP connection each (httpd speaks HTTP/1.0): request/response latency with connection setup
//   down    MiB/s: this machine downloads a MiB-sized file from the pod (served from the pod's
//           /dev/shm, a tmpfs: the network, not the container's rootfs, is measured)
//   up      MiB/s: the pod downloads the same size from a server on this machine to /dev/null
//           (timed inside the container by busybox time, 10 ms resolution: an exec's own cost is
//           larger than the transfer on runc)
// gVisor runs as the macro bench runs it (Debian's runsc as the runc shim's runc binary), twice:
// `runsc` with its own netstack (--network=sandbox, runsc's default) in the pod's namespace, where
// it takes over CNI's veth, and `runsc-hostinet` (--network=host: the sentry's sockets are the
// pod namespace's kernel sockets). Debian's runsc (0.0~20240729) refuses netstack on kernels that
// show /proc/sys/net/core/rmem_default in every namespace (6.x here): its root-namespace check
// reads that file; the report then says so. With hostinet the pause container starts but, through
// the runc shim (Debian ships no containerd-shim-runsc-v1), the pod's app container never does
// (StartContainer's deadline): the report says that too.
import http from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor, type RuntimeRegistration } from '../harness/containerd.js';
import { BUSYBOX_INDEX, busyboxImage } from '../harness/images/busybox.js';
import type { CriClient } from '../harness/cri.js';
import { prepareRunsc, runscRuntime } from '../harness/runsc.js';
import { runtime } from '../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';
import { summarize, type Summary } from './macro/stats.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;

export interface NetworkSettings {
  rounds: number;
  requests: number;
  mib: number;
}
export const NETWORK_FULL: NetworkSettings = { rounds: 3, requests: 200, mib: 32 };
export const NETWORK_QUICK: NetworkSettings = { rounds: 1, requests: 50, mib: 8 };

export type NetworkFigure = 'rr' | 'down' | 'up';
export const NETWORK_FIGURES: { key: NetworkFigure; label: string; unit: string }[] = [
  { key: 'rr', label: 'host -> pod HTTP request/response (new connection)', unit: 'ms' },
  { key: 'down', label: 'pod -> host transfer (host downloads)', unit: 'MiBps' },
  { key: 'up', label: 'host -> pod transfer (pod downloads)', unit: 'MiBps' },
];

export interface NetworkRuntime {
  name: string;
  label: string;
  /** KVM or TCG for katats; n/a for the others. */
  virtualization: string;
  unavailable?: string;
  /** Set when the pod or a measurement failed. */
  error?: string;
}

export interface NetworkReport {
  settings: NetworkSettings;
  environment: { date: string; cores: number; cpuModel: string; containerd: string; loadavgStart: number[]; loadavgEnd: number[] };
  durationS: number;
  runtimes: NetworkRuntime[];
  /** Per runtime: the summary and samples of each figure. */
  results: Record<string, Partial<Record<NetworkFigure, { summary: Summary; samples: number[] }>>>;
}

/** How long a started pod's server may take to answer (a TCG guest under load is slow, not minutes slow). */
const SERVE_WAIT_MS = 120_000;
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const load = () => os.loadavg().map((x) => Math.round(x * 100) / 100);

/** GET url to its end; resolves with the bytes received. */
function get(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: 60_000 }, (res) => {
      let n = 0;
      res.on('data', (d: Buffer) => (n += d.length));
      res.on('end', () => (res.statusCode === 200 ? resolve(n) : reject(new Error(`GET ${url}: ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within 60 s`)));
    req.on('error', reject);
  });
}

async function startPod(cri: CriClient, image: string, key: string, handler: string, mib: number): Promise<{ id: string; ip: string; cid: string }> {
  const config = {
    metadata: { name: `bench-net-${key}`, uid: `bench-${key}-${process.pid}`, namespace: 'default' },
    linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: handler }, { timeoutMs: 300_000 });
  try {
    const ip = (await cri.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status?.network?.ip ?? '';
    const script = `mkdir -p /dev/shm/www && echo small > /dev/shm/www/small && dd if=/dev/urandom of=/dev/shm/www/big bs=1M count=${mib} 2>/dev/null && exec httpd -f -p 8080 -h /dev/shm/www`;
    const { container_id: cid } = await cri.runtime.CreateContainer(
      { pod_sandbox_id: id, sandbox_config: config, config: { metadata: { name: 'web' }, image: { image }, command: ['sh', '-c', script], linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } } } },
      { timeoutMs: 180_000 },
    );
    await cri.runtime.StartContainer({ container_id: cid }, { timeoutMs: 180_000 });
    // The server is up when it serves the whole file; a pod that never gets there fails after SERVE_WAIT_MS.
    const deadline = Date.now() + SERVE_WAIT_MS;
    for (;;) {
      try {
        if ((await get(`http://${ip}:8080/big`)) === mib << 20) break;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`pod ${key} at ${ip}: its server did not answer within ${SERVE_WAIT_MS / 1000} s: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    return { id, ip, cid };
  } catch (e) {
    await removePod(cri, id);
    throw e;
  }
}

async function removePod(cri: CriClient, id: string): Promise<void> {
  await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 }).catch(() => undefined);
  await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 }).catch(() => undefined);
}

async function measure(cri: CriClient, p: { ip: string; cid: string }, hostBig: string, s: NetworkSettings): Promise<Record<NetworkFigure, number[]>> {
  const out: Record<NetworkFigure, number[]> = { rr: [], down: [], up: [] };
  const exec = async (cmd: string[]) => {
    const r = await cri.runtime.ExecSync({ container_id: p.cid, cmd, timeout: 300 }, { timeoutMs: 330_000 });
    if (r.exit_code !== 0) throw new Error(`${cmd.join(' ')}: exit ${r.exit_code}: ${Buffer.from(r.stderr).toString()}`);
    return Buffer.from(r.stderr).toString();
  };
  for (let round = 0; round < s.rounds; round++) {
    for (let i = 0; i < s.requests; i++) {
      const t0 = process.hrtime.bigint();
      await get(`http://${p.ip}:8080/small`);
      out.rr.push(ms(t0));
    }
    const t0 = process.hrtime.bigint();
    await get(`http://${p.ip}:8080/big`);
    out.down.push(s.mib / (ms(t0) / 1000));
    const secs = Number((await exec(['time', '-f', '%e', 'wget', '-q', '-O', '/dev/null', hostBig])).trim().split('\n').at(-1));
    // busybox time's 10 ms resolution: a transfer faster than that reads 0.00 s and is left out.
    if (secs > 0) out.up.push(s.mib / secs);
  }
  return out;
}

export interface NetworkBenchOptions {
  quick?: boolean;
  settings?: NetworkSettings;
  /** containerd with CRI and CNI (default trixie's 1.7, the CRI network suites' line). */
  flavor?: ContainerdFlavor;
  log?: (line: string) => void;
}

export async function runNetworkBench(o: NetworkBenchOptions = {}): Promise<NetworkReport> {
  const settings = o.settings ?? (o.quick ? NETWORK_QUICK : NETWORK_FULL);
  const say = (s: string) => (o.log ?? ((l: string) => process.stderr.write(`${l}\n`)))(`network: ${s}`);
  const t0 = performance.now();
  const loadavgStart = load();
  const runtimes: NetworkRuntime[] = [{ name: 'runc', label: 'runc (io.containerd.runc.v2)', virtualization: 'n/a (no VM)' }];
  const registrations: RuntimeRegistration[] = [];
  for (const [name, flags, how] of [
    ['runsc', ['--ignore-cgroups'], "netstack in the pod's namespace"],
    ['runsc-hostinet', ['--ignore-cgroups', '--network=host'], "hostinet: the pod namespace's kernel sockets"],
  ] as const) {
    try {
      const runsc = await prepareRunsc({ flags: [...flags], onProgress: say });
      registrations.push(runscRuntime(runsc, name));
      runtimes.push({ name, label: `gVisor ${runsc.version} (Debian ${runsc.debVersion}) via the runc shim, ${how}`, virtualization: 'n/a (no VM)' });
    } catch (e) {
      runtimes.push({ name, label: 'gVisor runsc', virtualization: 'n/a (no VM)', unavailable: `runsc could not be had: ${(e as Error).message}` });
    }
  }
  let env: KatatsEnv | undefined;
  let cd: Containerd | undefined;
  let server: http.Server | undefined;
  const results: NetworkReport['results'] = {};
  try {
    env = await katatsEnv({ onProgress: () => {} });
    registrations.push(env.runtime);
    runtimes.push({ name: 'katats', label: 'katats (our shim, QEMU, tcfilter)', virtualization: env.accel.toUpperCase() });
    cd = await startContainerd({ cri: true, cni: true, flavor: o.flavor ?? 'trixie', runtimes: registrations });
    const img = await busyboxImage();
    await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
    const cri = cd.criApi();
    await cri.waitForImage(img.name);
    const big = Buffer.alloc(settings.mib << 20, 7);
    server = http.createServer((_req, res) => res.end(big));
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(0, cd!.cniNetwork!.gateway, resolve);
    });
    const hostBig = `http://${cd.cniNetwork!.gateway}:${(server.address() as AddressInfo).port}/`;
    for (const r of runtimes) {
      if (r.unavailable) continue;
      let id: string | undefined;
      try {
        say(`${r.name}: starting a pod`);
        const p = await startPod(cri, img.name, r.name, r.name === 'runc' ? '' : r.name, settings.mib);
        id = p.id;
        say(`${r.name}: measuring (pod ${p.ip})`);
        const m = await measure(cri, p, hostBig, settings);
        results[r.name] = Object.fromEntries(Object.entries(m).filter(([, v]) => v.length).map(([k, v]) => [k, { summary: summarize(v), samples: v }]));
        say(`${r.name}: ${NETWORK_FIGURES.map((f) => `${f.key} ${results[r.name]?.[f.key]?.summary.median.toFixed(2) ?? '-'} ${f.unit}`).join(', ')}`);
      } catch (e) {
        r.error = (e as Error).message;
        if (r.name === 'runsc' && /root network namespace/.test(r.error)) {
          r.error = `netstack refused (${r.error.replace(/^.*(setting up network)/, '$1')}): this runsc's root-namespace check reads /proc/sys/net/core/rmem_default, which kernel ${os.release()} shows in every namespace`;
        }
        say(`${r.name}: failed: ${r.error}`);
      } finally {
        if (id) await removePod(cri, id);
      }
    }
  } finally {
    server?.close();
    await cd?.stop();
    env?.cleanup();
  }
  return {
    settings,
    environment: { date: new Date().toISOString(), cores: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '?', containerd: cd ? `${cd.binaries.version} (${cd.binaries.flavor})` : '?', loadavgStart, loadavgEnd: load() },
    durationS: Math.round((performance.now() - t0) / 100) / 10,
    runtimes,
    results,
  };
}

/** One line per runtime: medians (p95 for latency). */
export function networkTable(r: NetworkReport): string {
  const cell = (name: string, k: NetworkFigure) => {
    const s = r.results[name]?.[k]?.summary;
    return s ? (k === 'rr' ? `${s.median.toFixed(2)} (p95 ${s.p95.toFixed(2)})` : s.median.toFixed(1)) : '-';
  };
  return [
    ['runtime', 'virtualization', 'rr ms median (p95)', 'down MiB/s', 'up MiB/s', 'note'].join('\t'),
    ...r.runtimes.map((x) => [x.name, x.virtualization, cell(x.name, 'rr'), cell(x.name, 'down'), cell(x.name, 'up'), x.unavailable ?? x.error ?? ''].join('\t')),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      n: { type: 'string' },
      requests: { type: 'string' },
      mib: { type: 'string' },
      containerd: { type: 'string', default: 'trixie' },
    },
  });
  const base = values.quick ? NETWORK_QUICK : NETWORK_FULL;
  const settings: NetworkSettings = {
    rounds: values.n ? Number(values.n) : base.rounds,
    requests: values.requests ? Number(values.requests) : base.requests,
    mib: values.mib ? Number(values.mib) : base.mib,
  };
  const r = await runNetworkBench({ settings, flavor: values.containerd as ContainerdFlavor });
  console.log(`pod network benchmark: ${r.environment.cores} cores, load ${r.environment.loadavgStart[0]} -> ${r.environment.loadavgEnd[0]}, ${settings.rounds} rounds of ${settings.requests} requests and ${settings.mib} MiB transfers, ${r.durationS} s`);
  console.log(networkTable(r));
  console.log(JSON.stringify(r.results, (k, v: unknown) => (k === 'samples' ? undefined : v), 2));
}
