// Pod network benchmark: a runc pod and a katats pod on one CNI bridge of a private containerd
// (CRI, harness/cni.ts), measured in the same run from this machine.
//   npx tsx bench/network.ts [--n 3] [--requests 200] [--mib 32] [--containerd trixie]
// Figures (medians of n rounds):
//   rr.median, rr.p90  ms per HTTP GET of a 6-byte file from this machine to the pod's busybox
//                      httpd, a new TCP connection each (httpd speaks HTTP/1.0): request/response
//                      latency with connection setup
//   down.MiBps         this machine downloads a MiB-sized file from the pod (served from the pod's
//                      /dev/shm, a tmpfs: the network, not the container's rootfs, is measured)
//   up.MiBps           the pod downloads the same size from a server on this machine to /dev/null
//                      (timed inside the container by busybox time, 10 ms resolution: an exec's
//                      own cost is larger than the transfer on runc)
import http from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor } from '../harness/containerd.js';
import { BUSYBOX_INDEX, busyboxImage } from '../harness/images/busybox.js';
import type { CriClient } from '../harness/cri.js';
import { runtime } from '../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '3' },
    requests: { type: 'string', default: '200' },
    mib: { type: 'string', default: '32' },
    containerd: { type: 'string', default: 'trixie' },
  },
});
const N = Number(values.n);
const REQUESTS = Number(values.requests);
const MIB = Number(values.mib);
const { POD, CONTAINER } = runtime.v1.NamespaceMode;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))]!;
const say = (s: string) => process.stderr.write(`network: ${s}\n`);
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

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

async function pod(cri: CriClient, image: string, key: string, handler: string): Promise<{ id: string; ip: string; cid: string }> {
  const config = {
    metadata: { name: `bench-net-${key}`, uid: `bench-${key}-${process.pid}`, namespace: 'default' },
    linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
  };
  const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: handler }, { timeoutMs: 300_000 });
  const ip = (await cri.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status?.network?.ip ?? '';
  const script = `mkdir -p /dev/shm/www && echo small > /dev/shm/www/small && dd if=/dev/urandom of=/dev/shm/www/big bs=1M count=${MIB} 2>/dev/null && exec httpd -f -p 8080 -h /dev/shm/www`;
  const { container_id: cid } = await cri.runtime.CreateContainer(
    { pod_sandbox_id: id, sandbox_config: config, config: { metadata: { name: 'web' }, image: { image }, command: ['sh', '-c', script], linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } } } },
    { timeoutMs: 180_000 },
  );
  await cri.runtime.StartContainer({ container_id: cid }, { timeoutMs: 180_000 });
  for (let i = 0; ; i++) {
    try {
      if ((await get(`http://${ip}:8080/big`)) === MIB << 20) break;
    } catch (e) {
      if (i > 120) throw e;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  return { id, ip, cid };
}

async function measure(cri: CriClient, p: { ip: string; cid: string }, hostBig: string): Promise<Record<string, number>> {
  const rr: number[] = [];
  const down: number[] = [];
  const up: number[] = [];
  const exec = async (cmd: string[]) => {
    const r = await cri.runtime.ExecSync({ container_id: p.cid, cmd, timeout: 300 }, { timeoutMs: 330_000 });
    if (r.exit_code !== 0) throw new Error(`${cmd.join(' ')}: exit ${r.exit_code}: ${Buffer.from(r.stderr).toString()}`);
    return Buffer.from(r.stderr).toString();
  };
  for (let round = 0; round < N; round++) {
    for (let i = 0; i < REQUESTS; i++) {
      const t0 = process.hrtime.bigint();
      await get(`http://${p.ip}:8080/small`);
      rr.push(ms(t0));
    }
    const t0 = process.hrtime.bigint();
    await get(`http://${p.ip}:8080/big`);
    down.push(MIB / (ms(t0) / 1000));
    const secs = Number((await exec(['time', '-f', '%e', 'wget', '-q', '-O', '/dev/null', hostBig])).trim().split('\n').at(-1));
    up.push(secs > 0 ? MIB / secs : NaN);
  }
  return { 'rr.median': median(rr), 'rr.p90': pct(rr, 90), 'down.MiBps': median(down), 'up.MiBps': median(up) };
}

let env: KatatsEnv | undefined;
let cd: Containerd | undefined;
let server: http.Server | undefined;
const results: Record<string, Record<string, number | string>> = {};
try {
  env = await katatsEnv({ onProgress: () => {} });
  cd = await startContainerd({ cri: true, cni: true, flavor: values.containerd as ContainerdFlavor, runtimes: [env.runtime] });
  const img = await busyboxImage();
  await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
  const cri = cd.criApi();
  await cri.waitForImage(img.name);
  const big = Buffer.alloc(MIB << 20, 7);
  server = http.createServer((_req, res) => res.end(big));
  await new Promise<void>((resolve, reject) => {
    server!.once('error', reject);
    server!.listen(0, cd!.cniNetwork!.gateway, resolve);
  });
  const hostBig = `http://${cd.cniNetwork!.gateway}:${(server.address() as AddressInfo).port}/`;
  for (const [name, handler] of [
    ['runc', ''],
    ['katats', 'katats'],
  ] as const) {
    say(`${name}: starting a pod`);
    const p = await pod(cri, img.name, name, handler);
    say(`${name}: measuring (pod ${p.ip})`);
    results[name] = { ...(name === 'katats' ? { accel: env.accel.toUpperCase() } : {}), ...(await measure(cri, p, hostBig)) };
    say(`${name}: ${JSON.stringify(results[name])}`);
    await cri.runtime.StopPodSandbox({ pod_sandbox_id: p.id }, { timeoutMs: 180_000 });
    await cri.runtime.RemovePodSandbox({ pod_sandbox_id: p.id }, { timeoutMs: 180_000 });
  }
} finally {
  server?.close();
  await cd?.stop();
  env?.cleanup();
}
const cols = ['rr.median', 'rr.p90', 'down.MiBps', 'up.MiBps'];
const lines = [
  `pod network benchmark: ${os.cpus().length} cores, load ${os.loadavg()[0]!.toFixed(2)}, n=${N}, ${REQUESTS} requests per round, ${MIB} MiB transfers; katats on ${String(results.katats?.accel ?? '?')}`,
  ['runtime', ...cols].join('\t'),
  ...Object.entries(results).map(([name, r]) => [name, ...cols.map((k) => (typeof r[k] === 'number' ? (r[k] as number).toFixed(k.startsWith('rr') ? 2 : 1) : String(r[k])))].join('\t')),
];
console.log(lines.join('\n'));
console.log(JSON.stringify(results, null, 2));
