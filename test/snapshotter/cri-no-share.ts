// Pods of the three-layer image through CRI on a katats runtime handler whose pods share no
// filesystem with the host (shared_fs = none) and whose rootfs the tardev snapshotter provides:
// used by cri.test.ts (containerd 1.7) and containerd-versions.test.ts (2.1). Each pod's container
// sees the image's files, modes and deletions, the /etc/hosts, resolv.conf and hostname CRI wrote
// (copied into the guest: nothing else could bring them there), and its QEMU has no 9p or
// virtio-fs device; pods of the image open the same layer files on the host, read-only.
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { CRI_NAMESPACE, type Containerd, type RuntimeRegistration } from '../../harness/containerd.js';
import type { CriClient } from '../../harness/cri.js';
import { LAYERED_EXPECT } from '../../harness/images/layered.js';
import { listProcs } from '../../harness/procs.js';
import { runtime } from '../../proto/gen/types.js';
import type { KatatsEnv } from '../shim/katats-env.js';
import * as helpers from '../shim/shim-helpers.js';

const { NODE, CONTAINER, POD } = runtime.v1.NamespaceMode;
export const NO_SHARE_HANDLER = 'katats-tardev-none';
const DNS = { servers: ['10.96.0.10'], searches: ['tardev.svc.cluster.local'], options: ['ndots:5'] };

/** The handler: the tardev snapshotter, and a katats config that differs from env's by shared_fs = none. */
export function noShareRuntime(env: KatatsEnv): RuntimeRegistration {
  const file = path.join(env.dir, 'shared-fs-none.toml');
  fs.writeFileSync(file, fs.readFileSync(env.configFile, 'utf8').replace('[hypervisor.qemu]', '[hypervisor.qemu]\nshared_fs = "none"'));
  return { ...env.runtime, name: NO_SHARE_HANDLER, snapshotter: 'tardev', options: { ConfigPath: file } };
}

export interface NoSharePods {
  cd: Containerd;
  cri: CriClient;
  env: KatatsEnv;
  image: string;
  /** The image's layer files on the host. */
  layerFiles: string[];
}

/** Where CRI's own file for `dest` lives on the host: the source of the container's bind mount, from containerd's record. */
async function criFile(cd: Containerd, containerId: string, dest: string): Promise<string> {
  const info = JSON.parse((await cd.ctrOk(['containers', 'info', containerId], { namespace: CRI_NAMESPACE })).stdout) as { Spec: { mounts: { destination: string; source: string }[] } };
  const m = info.Spec.mounts.find((x) => x.destination === dest);
  if (!m) throw new Error(`container ${containerId} has no mount at ${dest}`);
  return m.source;
}

/** Runs a pod per name, checks each, then the layer files they share; removes them. */
export async function layeredPodsWithoutSharedFs(t: NoSharePods, names: string[]): Promise<void> {
  const pods: { name: string; podId: string; containerId: string }[] = [];
  const logs = (podId: string) => helpers.logsOf(t.env.logDir, podId, t.cd.logFile, 30);
  const start = async (name: string) => {
    const podConfig = {
      metadata: { name, uid: `uid-${name}-${process.pid}`, namespace: 'default' },
      hostname: name,
      dns_config: DNS,
      linux: { security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
    };
    const { pod_sandbox_id } = await t.cri.runtime.RunPodSandbox({ config: podConfig, runtime_handler: NO_SHARE_HANDLER }, { timeoutMs: 300_000 });
    const pod = { name, podId: pod_sandbox_id, containerId: '' };
    pods.push(pod);
    // What the kubelet binds besides CRI's own files: a termination log and a config map.
    const kubelet = path.join(t.env.dir, `kubelet-${name}`);
    fs.mkdirSync(path.join(kubelet, 'cm', '..2026_11_30'), { recursive: true });
    fs.writeFileSync(path.join(kubelet, 'cm', '..2026_11_30', 'greeting'), `hello from ${name}\n`);
    fs.symlinkSync('..2026_11_30', path.join(kubelet, 'cm', '..data'));
    fs.symlinkSync('..data/greeting', path.join(kubelet, 'cm', 'greeting'));
    fs.writeFileSync(path.join(kubelet, 'termination-log'), '');
    const config = {
      metadata: { name: 'layered' },
      image: { image: t.image },
      command: ['sleep', '100000'],
      mounts: [
        { container_path: '/dev/termination-log', host_path: path.join(kubelet, 'termination-log') },
        { container_path: '/etc/config', host_path: path.join(kubelet, 'cm'), readonly: true },
      ],
      linux: { security_context: { namespace_options: { network: NODE, pid: CONTAINER, ipc: POD } } },
    };
    const { container_id } = await t.cri.runtime.CreateContainer({ pod_sandbox_id, sandbox_config: podConfig, config }, { timeoutMs: 180_000 });
    pod.containerId = container_id;
    await t.cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
  };
  try {
    // One after the other: two TCG boots at once on a loaded machine can outlast containerd's deadline.
    for (const name of names) {
      await start(name).catch((e: Error) => {
        throw new Error(`pod ${name}: ${e.message}\n${pods.map((p) => logs(p.podId)).join('\n')}`);
      });
    }
    for (const { name, podId, containerId } of pods) {
      const run = async (cmd: string) => {
        const r = await t.cri.runtime.ExecSync({ container_id: containerId, cmd: ['sh', '-c', cmd], timeout: 60 }, { timeoutMs: 90_000 });
        return Buffer.from(r.stdout).toString() + Buffer.from(r.stderr).toString();
      };
      for (const [f, text] of Object.entries(LAYERED_EXPECT.files)) expect(await run(`cat ${f}`), logs(podId)).toBe(text);
      for (const f of LAYERED_EXPECT.absent) expect(await run(`test -e ${f} && echo PRESENT || echo absent`)).toBe('absent\n');
      for (const [f, m] of Object.entries(LAYERED_EXPECT.modes)) expect(await run(`stat -c '%a %u:%g' ${f}`)).toBe(`${m}\n`);
      // CRI's files, as CRI wrote them on the host.
      const resolv = await run('cat /etc/resolv.conf');
      expect(resolv).toMatch(/^search tardev\.svc\.cluster\.local$/m);
      expect(resolv).toMatch(/^nameserver 10\.96\.0\.10$/m);
      for (const f of ['/etc/hosts', '/etc/resolv.conf', '/etc/hostname']) expect(await run(`cat ${f}`), f).toBe(fs.readFileSync(await criFile(t.cd, containerId, f), 'utf8'));
      expect(await run('cat /etc/hostname')).toBe(`${name}\n`);
      // The kubelet's binds: a copy each, the config map read-only, the termination log the container's to write.
      expect(await run('cat /etc/config/greeting; readlink /etc/config/greeting')).toBe(`hello from ${name}\n..data/greeting\n`);
      expect(await run('echo x > /etc/config/new || echo config-ro')).toMatch(/^config-ro\n.*Read-only file system/s);
      expect(await run('echo bye > /dev/termination-log && cat /dev/termination-log')).toBe('bye\n');
      expect(fs.readFileSync(path.join(t.env.dir, `kubelet-${name}`, 'termination-log'), 'utf8')).toBe('');
      // Nothing shared with the host: no 9p or virtio-fs device in the pod's QEMU.
      const qemu = listProcs().filter((p) => helpers.qemuProcs(t.env.stateDir, podId).includes(p.pid));
      expect(qemu, logs(podId)).toHaveLength(1);
      expect(qemu[0]!.cmdline).not.toMatch(/virtio-9p|vhost-user-fs|virtiofs/);
      const agentLog = fs.readFileSync(path.join(t.env.logDir, `${podId}-agent.log`), 'utf8');
      expect(agentLog.match(/rootfs assembled from verified layers/g)?.length, logs(podId)).toBe(2);
    }
    // One file per layer on the host, open read-only in every pod's VM.
    for (const { podId } of pods) {
      const [qemu] = helpers.qemuProcs(t.env.stateDir, podId);
      const open = new Map<string, number>();
      for (const fd of fs.readdirSync(`/proc/${qemu}/fd`)) {
        const target = fs.readlinkSync(`/proc/${qemu}/fd/${fd}`);
        if (t.layerFiles.includes(target)) open.set(target, parseInt(/^flags:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${qemu}/fdinfo/${fd}`, 'utf8'))![1]!, 8));
      }
      expect([...open.keys()].sort(), podId).toEqual([...t.layerFiles].sort());
      for (const flags of open.values()) expect(flags & 3).toBe(fs.constants.O_RDONLY);
    }
  } finally {
    for (const { podId } of pods) {
      await t.cri.runtime.StopPodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 120_000 });
      // A failure above stays the one reported; what is left here, the suite's containerd stop removes and names.
      await t.cri.runtime.RemovePodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 120_000 }).catch((e: Error) => console.error(`removing pod ${podId}: ${e.message}`));
    }
  }
}
