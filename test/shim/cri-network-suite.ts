// Pod networking end to end: containerd with CRI and CNI (Debian's bridge +
// host-local + loopback plugins, two private bridges and /24s on this machine, harness/cni.ts;
// every pod is on both networks, eth0 with the default route, eth1 with one extra route). A
// katats pod gets both CNI addresses inside the guest on virtio-net NICs wired to its veths by tc,
// with their routes and no "file exists" from the guest; this machine reaches a server in it at
// both pod IPs, and it reaches a server on this machine; a runc pod and the katats pod reach each
// other, and so do two katats pods; the pod's DNS settings and hostname are the container's.
// Removing the pods leaves no TAP, veth or namespace behind, and neither do `cycles` networked
// create/delete rounds (KATATS_NET_CYCLES; a few in CI, 20 on demand).
// The suite runs against a containerd flavor: cri-network.test.ts (trixie's 1.7), cri2-network.test.ts (sid's 2.x).
import fs from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';
import { listProcs } from '../../harness/procs.js';
import type { KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { until } from './shim-helpers.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;
const { SANDBOX_READY } = runtime.v1.PodSandboxState;

/** Networked create/delete rounds the suite runs (KATATS_NET_CYCLES overrides `fallback`). */
export const netCycles = (fallback: number): number => helpers.countFromEnv('KATATS_NET_CYCLES', fallback);

/** Our TAPs in the network namespace process `pid` is in. */
function kataTaps(pid: number): string[] {
  return fs
    .readFileSync(`/proc/${pid}/net/dev`, 'utf8')
    .split('\n')
    .flatMap((l) => /^\s*(tap\d+_kata):/.exec(l)?.[1] ?? []);
}

/** `factory`: the pods' VMs are clones of a template, their NICs hot-plugged after the restore. */
export function criNetworkSuite(FLAVOR: ContainerdFlavor, opts: { cycles: number; factory?: boolean }): void {
  describe(`pod network on katats (CRI + CNI bridge, containerd ${FLAVOR})`, () => {
    let env: KatatsEnv;
    let endFactory: (() => Promise<void>) | undefined;
    let cd: Containerd;
    let cri: CriClient;
    let image: string;
    let server: http.Server;
    let hostUrl = '';
    /** A process holding the katats pod's network namespace, so it can be read after CRI unmounts it. */
    let holder: ChildProcess | undefined;
    const pods: Record<string, { id: string; ip: string; ip2: string; config: Init<runtime.v1.PodSandboxConfig> }> = {};
    const containers: Record<string, string> = {};
    const logs = () => helpers.logsOf(env.logDir, pods.k?.id ?? '', cd.logFile, 30);

    /** The address host-local leased to pod `id` on network `name` (a file named after the address, holding the id). */
    function leaseOf(name: string, id: string): string {
      const dir = `${cd.dir}/root/cni/ipam/${name}`;
      return fs.readdirSync(dir).find((f) => net.isIPv4(f) && fs.readFileSync(`${dir}/${f}`, 'utf8').startsWith(id)) ?? '';
    }

    async function exec(name: string, cmd: string[]): Promise<{ code: number; out: string; err: string }> {
      const r = await cri.runtime.ExecSync({ container_id: containers[name], cmd, timeout: 60 }, { timeoutMs: 90_000 });
      return { code: r.exit_code, out: Buffer.from(r.stdout).toString(), err: Buffer.from(r.stderr).toString() };
    }

    async function runPod(key: string, handler: string, hostname: string): Promise<void> {
      const config: Init<runtime.v1.PodSandboxConfig> = {
        metadata: { name: `net-${key}`, uid: `uid-${key}-${process.pid}`, namespace: 'default' },
        hostname,
        dns_config: { servers: ['10.222.0.53'], searches: ['katats.test'], options: ['ndots:3'] },
        linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
      };
      const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: handler }, { timeoutMs: 300_000 });
      const st = await cri.runtime.PodSandboxStatus({ pod_sandbox_id: id });
      expect(st.status?.state).toBe(SANDBOX_READY);
      const ip = st.status?.network?.ip ?? '';
      expect(ip).toMatch(/^10\.222\.\d+\.\d+$/);
      // containerd reports eth0's addresses only: the second network's is host-local's lease for the pod.
      const ip2 = leaseOf(cd.cniNetworks[1]!.name, id);
      expect(ip2).toMatch(/^10\.222\.\d+\.\d+$/);
      pods[key] = { id, ip, ip2, config };
      if (opts.factory && handler === 'katats') helpers.expectCloned(env, id, cd.logFile);
      // A web server answering with the pod's name.
      const { container_id } = await cri.runtime.CreateContainer(
        {
          pod_sandbox_id: id,
          sandbox_config: config,
          config: {
            metadata: { name: 'web' },
            image: { image },
            command: ['sh', '-c', `mkdir -p /www && echo hello-from-${key} > /www/index.html && exec httpd -f -p 8080 -h /www`],
            linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
          },
        },
        { timeoutMs: 180_000 },
      );
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
      containers[key] = container_id;
    }

    const fetchText = (url: string) =>
      new Promise<string>((resolve, reject) => {
        const req = http.get(url, { timeout: 10_000 }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve(body));
        });
        req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within 10 s`)));
        req.on('error', reject);
      });

    beforeAll(async () => {
      ({ env, end: endFactory } = await helpers.factoryKatatsEnv(!!opts.factory));
      cd = await startContainerd({ cri: true, cni: true, cniNetworks: 2, flavor: FLAVOR, runtimes: [env.runtime] });
      const img = await busyboxImage();
      await cd.importImage(img.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
      image = img.name;
      cri = cd.criApi();
      await cri.waitForImage(image);
      // A server on this machine, on the bridge's address (the pods' gateway).
      server = http.createServer((_req, res) => res.end('hello-from-host\n'));
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, cd.cniNetwork!.gateway, resolve);
      });
      hostUrl = `http://${cd.cniNetwork!.gateway}:${(server.address() as AddressInfo).port}/`;
    }, 600_000);

    afterAll(async () => {
      holder?.kill('SIGKILL');
      server?.close();
      const bridges = cd?.cniNetworks.map((n) => n.bridge) ?? [];
      await endFactory?.();
      await helpers.endKatatsSuite(cd, env);
      for (const b of bridges) expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(b);
    }, 300_000);

    it('a katats pod has its CNI address in the guest, serves this machine and reaches it; DNS and hostname are the pod\'s', async () => {
      await runPod('k', 'katats', 'knet-pod');
      const { ip } = pods.k!;
      // QEMU runs in the pod's namespace (CNI's), which holds one TAP of ours next to the veth.
      const [vm] = helpers.qemuProcs(env.stateDir, pods.k!.id);
      expect(vm, logs()).toBeDefined();
      expect(kataTaps(vm!), logs()).toEqual(['tap0_kata', 'tap1_kata']);
      holder = spawn('nsenter', [`--net=/proc/${vm!}/ns/net`, '--', 'sleep', '600'], { stdio: 'ignore' });
      // The address is on the guest's NIC (the container runs on the guest's kernel, in its network).
      const addr = await exec('k', ['ip', '-o', 'addr', 'show', 'eth0']);
      expect(addr.out, logs()).toContain(`inet ${ip}/24`);
      expect((await exec('k', ['ip', 'route'])).out).toMatch(new RegExp(`default via ${cd.cniNetwork!.gateway.replace(/\./g, '\\.')} dev eth0`));
      expect((await exec('k', ['hostname'])).out.trim()).toBe('knet-pod');
      const resolv = (await exec('k', ['cat', '/etc/resolv.conf'])).out;
      expect(resolv).toMatch(/^nameserver 10\.222\.0\.53$/m);
      expect(resolv).toMatch(/^search katats\.test$/m);
      expect(resolv).toMatch(/^options ndots:3$/m);
      // This machine -> the pod's server; the pod -> this machine's server.
      expect(await until(() => fetchText(`http://${ip}:8080/`).catch((e: Error) => e.message), (b) => b === 'hello-from-k\n', 60_000)).toBe('hello-from-k\n');
      const out = await exec('k', ['timeout', '30', 'wget', '-q', '-O', '-', hostUrl]);
      expect(out, logs()).toMatchObject({ code: 0, out: 'hello-from-host\n' });
    }, 600_000);

    it('the katats pod has both CNI interfaces in the guest, with their routes, each reachable from this machine', async () => {
      const { ip2, id } = pods.k!;
      const [first, second] = cd.cniNetworks;
      const addr = await exec('k', ['ip', '-o', 'addr', 'show', 'eth1']);
      expect(addr.out, logs()).toContain(`inet ${ip2}/24`);
      const routes = (await exec('k', ['ip', '-4', 'route'])).out;
      const re = (s: string) => s.replace(/\./g, '\\.');
      // The route CNI gave the second network, through its gateway; each connected route once (the
      // guest's kernel made them: sent as well, they would have failed with "file exists").
      expect(routes, logs()).toMatch(new RegExp(`^198\\.51\\.100\\.0/24 via ${re(second!.gateway)} dev eth1`, 'm'));
      expect(routes.match(new RegExp(`^${re(first!.subnet)} dev eth0`, 'gm')), routes).toHaveLength(1);
      expect(routes.match(new RegExp(`^${re(second!.subnet)} dev eth1`, 'gm')), routes).toHaveLength(1);
      expect(routes.match(/^default /gm), routes).toHaveLength(1);
      // Through the second bridge, as through the first.
      expect(await until(() => fetchText(`http://${ip2}:8080/`).catch((e: Error) => e.message), (b) => b === 'hello-from-k\n', 60_000)).toBe('hello-from-k\n');
      expect(helpers.logsOf(env.logDir, id, undefined, 1000)).not.toMatch(/file exists/i);
    }, 300_000);

    it('a runc pod on the same bridge and the katats pod reach each other', async () => {
      await runPod('r', '', 'rnet-pod');
      const k = pods.k!.ip;
      const r = pods.r!.ip;
      const fromRunc = await until(() => exec('r', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${k}:8080/`]), (x) => x.code === 0, 60_000);
      expect(fromRunc).toMatchObject({ code: 0, out: 'hello-from-k\n' });
      const fromKatats = await until(() => exec('k', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${r}:8080/`]), (x) => x.code === 0, 60_000);
      expect(fromKatats, logs()).toMatchObject({ code: 0, out: 'hello-from-r\n' });
    }, 600_000);

    it('two katats pods reach each other by pod IP', async () => {
      await runPod('k2', 'katats', 'knet-pod2');
      const k = pods.k!.ip;
      const k2 = pods.k2!.ip;
      const toFirst = await until(() => exec('k2', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${k}:8080/`]), (x) => x.code === 0, 60_000);
      expect(toFirst, logs()).toMatchObject({ code: 0, out: 'hello-from-k\n' });
      const toSecond = await until(() => exec('k', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${k2}:8080/`]), (x) => x.code === 0, 60_000);
      expect(toSecond, logs()).toMatchObject({ code: 0, out: 'hello-from-k2\n' });
    }, 600_000);

    it('removing the pods leaves no TAP, no pod veth on the bridge and no namespace', async () => {
      const shimLog = () => fs.readdirSync(env.logDir).filter((f) => f.endsWith('.log')).map((f) => fs.readFileSync(`${env.logDir}/${f}`, 'utf8')).join('');
      for (const key of ['k', 'k2', 'r']) {
        const id = pods[key]!.id;
        await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
        await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
      }
      // Read through the holder: CRI has unmounted the namespace, but what the shim left would still be in it.
      expect(kataTaps(holder!.pid!)).toEqual([]);
      // The shim said it unwired, and nothing failed.
      expect(shimLog()).toMatch(/pod network unwired/);
      expect(shimLog()).not.toMatch(/unwiring the pod network failed/);
      for (const n of cd.cniNetworks) expect(execFileSync('ip', ['-o', 'link', 'show', 'master', n.bridge], { encoding: 'utf8' }).trim()).toBe('');
      expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
      const netnsDir = `${cd.dir}/state`;
      const left = execFileSync('sh', ['-c', `grep -h ' nsfs ' /proc/self/mountinfo | grep -F '${netnsDir}' || true`], { encoding: 'utf8' });
      expect(left).toBe('');
    }, 300_000);

    it.runIf(opts.cycles > 0)(`${opts.cycles} networked pod create/delete cycles leave no TAP, qdisc, filter, netns, process or cgroup behind`, async () => {
      const t0 = Date.now();
      for (let i = 0; i < opts.cycles; i++) {
        const config: Init<runtime.v1.PodSandboxConfig> = {
          metadata: { name: `net-cycle-${i}`, uid: `uid-cycle-${i}-${process.pid}`, namespace: 'default' },
          linux: { security_context: { namespace_options: { network: POD, pid: CONTAINER, ipc: POD } } },
        };
        const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: 'katats' }, { timeoutMs: 300_000 });
        const [vm] = helpers.qemuProcs(env.stateDir, id);
        expect(vm, helpers.logsOf(env.logDir, id, cd.logFile, 30)).toBeDefined();
        if (opts.factory) helpers.expectCloned(env, id, cd.logFile);
        // Hold the pod's namespace past CRI's removal: whatever the shim fails to remove stays readable in it.
        const hold = spawn('nsenter', [`--net=/proc/${vm!}/ns/net`, '--', 'sleep', '600'], { stdio: 'ignore' });
        try {
          await until(() => fs.existsSync(`/proc/${hold.pid!}/ns/net`) && fs.readlinkSync(`/proc/${hold.pid!}/ns/net`) === fs.readlinkSync(`/proc/${vm!}/ns/net`), Boolean, 10_000);
          expect(kataTaps(hold.pid!)).toEqual(['tap0_kata', 'tap1_kata']);
          await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
          await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
          const nsenter = (tool: string, ...args: string[]) => execFileSync('nsenter', [`--net=/proc/${hold.pid!}/ns/net`, '--', tool, ...args], { encoding: 'utf8' });
          // CNI took its veths; the TAPs, their qdiscs and filters are the shim's to remove.
          expect(kataTaps(hold.pid!), `cycle ${i}`).toEqual([]);
          expect(nsenter('ip', '-o', 'link', 'show').trim().split('\n').map((l) => l.split(': ')[1])).toEqual(['lo']);
          expect(nsenter('tc', 'qdisc', 'show')).not.toMatch(/ingress/);
        } finally {
          hold.kill('SIGKILL');
        }
        expect(helpers.qemuProcs(env.stateDir, id), `cycle ${i}`).toEqual([]);
        expect(helpers.shimProcs(cd.address, id), `cycle ${i}`).toEqual([]);
        expect(listProcs().filter((p) => p.cmdline.includes(id)).map((p) => p.cmdline), `cycle ${i}`).toEqual([]);
        expect(helpers.cgroupsNamed(id), `cycle ${i}`).toEqual([]);
        expect(fs.existsSync(`${env.stateDir}/sandboxes/${id}`), `cycle ${i}: the sandbox's state dir`).toBe(false);
        console.log(`networked pod cycle ${i + 1}/${opts.cycles}: clean at ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      }
      for (const n of cd.cniNetworks) expect(execFileSync('ip', ['-o', 'link', 'show', 'master', n.bridge], { encoding: 'utf8' }).trim()).toBe('');
      const netnsDir = `${cd.dir}/state`;
      expect(execFileSync('sh', ['-c', `grep -h ' nsfs ' /proc/self/mountinfo | grep -F '${netnsDir}' || true`], { encoding: 'utf8' })).toBe('');
      console.log(`${opts.cycles} networked pod cycles (containerd ${FLAVOR}): ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }, 120_000 + opts.cycles * 300_000);
  });
}
