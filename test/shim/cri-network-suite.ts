// Pod networking end to end: containerd with CRI and CNI (Debian's bridge +
// host-local + loopback plugins, a private bridge and /24 on this machine, harness/cni.ts). A
// katats pod gets its CNI address inside the guest on a virtio-net NIC wired to its veth by tc;
// this machine reaches a server in it at the pod IP, and it reaches a server on this machine; a
// runc pod on the same bridge and the katats pod reach each other; the pod's DNS settings and
// hostname are the container's. Removing the pods leaves no TAP, veth or namespace behind.
// The suite runs against a containerd flavor: cri-network.test.ts (trixie's 1.7), cri2-network.test.ts (sid's 2.x).
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd, type ContainerdFlavor } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { until } from './shim-helpers.js';

const { POD, CONTAINER } = runtime.v1.NamespaceMode;
const { SANDBOX_READY } = runtime.v1.PodSandboxState;

/** Our TAPs in the network namespace process `pid` is in. */
function kataTaps(pid: number): string[] {
  return fs
    .readFileSync(`/proc/${pid}/net/dev`, 'utf8')
    .split('\n')
    .flatMap((l) => /^\s*(tap\d+_kata):/.exec(l)?.[1] ?? []);
}

export function criNetworkSuite(FLAVOR: ContainerdFlavor): void {
  describe(`pod network on katats (CRI + CNI bridge, containerd ${FLAVOR})`, () => {
    let env: KatatsEnv;
    let cd: Containerd;
    let cri: CriClient;
    let image: string;
    let server: http.Server;
    let hostUrl = '';
    /** A process holding the katats pod's network namespace, so it can be read after CRI unmounts it. */
    let holder: ChildProcess | undefined;
    const pods: Record<string, { id: string; ip: string; config: Init<runtime.v1.PodSandboxConfig> }> = {};
    const containers: Record<string, string> = {};
    const logs = () => helpers.logsOf(env.logDir, pods.k?.id ?? '', cd.logFile, 30);

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
      pods[key] = { id, ip, config };
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
      env = await katatsEnv();
      cd = await startContainerd({ cri: true, cni: true, flavor: FLAVOR, runtimes: [env.runtime] });
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
      const bridge = cd?.cniNetwork?.bridge;
      await helpers.endKatatsSuite(cd, env);
      if (bridge) expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(bridge);
    }, 300_000);

    it('a katats pod has its CNI address in the guest, serves this machine and reaches it; DNS and hostname are the pod\'s', async () => {
      await runPod('k', 'katats', 'knet-pod');
      const { ip } = pods.k!;
      // QEMU runs in the pod's namespace (CNI's), which holds one TAP of ours next to the veth.
      const [vm] = helpers.qemuProcs(env.stateDir, pods.k!.id);
      expect(vm, logs()).toBeDefined();
      expect(kataTaps(vm!), logs()).toEqual(['tap0_kata']);
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

    it('a runc pod on the same bridge and the katats pod reach each other', async () => {
      await runPod('r', '', 'rnet-pod');
      const k = pods.k!.ip;
      const r = pods.r!.ip;
      const fromRunc = await until(() => exec('r', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${k}:8080/`]), (x) => x.code === 0, 60_000);
      expect(fromRunc).toMatchObject({ code: 0, out: 'hello-from-k\n' });
      const fromKatats = await until(() => exec('k', ['timeout', '30', 'wget', '-q', '-O', '-', `http://${r}:8080/`]), (x) => x.code === 0, 60_000);
      expect(fromKatats, logs()).toMatchObject({ code: 0, out: 'hello-from-r\n' });
    }, 600_000);

    it('removing the pods leaves no TAP, no pod veth on the bridge and no namespace', async () => {
      const shimLog = () => fs.readdirSync(env.logDir).filter((f) => f.endsWith('.log')).map((f) => fs.readFileSync(`${env.logDir}/${f}`, 'utf8')).join('');
      for (const key of ['k', 'r']) {
        const id = pods[key]!.id;
        await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
        await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: 180_000 });
      }
      // Read through the holder: CRI has unmounted the namespace, but what the shim left would still be in it.
      expect(kataTaps(holder!.pid!)).toEqual([]);
      // The shim said it unwired, and nothing failed.
      expect(shimLog()).toMatch(/pod network unwired/);
      expect(shimLog()).not.toMatch(/unwiring the pod network failed/);
      expect(execFileSync('ip', ['-o', 'link', 'show', 'master', cd.cniNetwork!.bridge], { encoding: 'utf8' }).trim()).toBe('');
      expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
      const netnsDir = `${cd.dir}/state`;
      const left = execFileSync('sh', ['-c', `grep -h ' nsfs ' /proc/self/mountinfo | grep -F '${netnsDir}' || true`], { encoding: 'utf8' });
      expect(left).toBe('');
    }, 300_000);
  });
}
