// Boots a sandbox VM with QEMU (vmm/) from the configured guest image and waits until the agent
// inside answers grpc.Health/Check on the agent channel.
import fs from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { Client } from '../proto/ttrpc/index.js';
import { dialAgentChannel } from '../proto/agent-session.js';
import { serviceClient } from '../proto/rpc.js';
import { QemuVm } from '../vmm/vm.js';
import type { VmConfig } from '../vmm/config.js';
import type { GuestManifest } from '../guest/manifest.js';
import type { QemuConfig } from './config.js';
import { KATA_GUEST_DIRS, SHARED_FS_TAG, type GuestHandle, type LaunchRequest } from './guest.js';
import { removeTree } from '../sys/mount.js';
import { SandboxCgroups } from './sandbox-cgroups.js';
import { DEFAULT_VIRTIOFSD, startVirtiofsd, type Virtiofsd } from './virtiofsd.js';
import { privateDir } from './layout.js';

export interface GuestFiles {
  kernel: string;
  initrd: string;
  rootfs: string;
  cmdline: string;
  measurement: string | undefined;
}

/** Kernel, initrd and rootfs from explicit keys, else from the guest image manifest. */
export function resolveGuestFiles(q: QemuConfig): GuestFiles {
  let manifest: GuestManifest | undefined;
  const dir = path.dirname(q.guest_manifest);
  if (q.guest_manifest && fs.existsSync(q.guest_manifest)) manifest = JSON.parse(fs.readFileSync(q.guest_manifest, 'utf8')) as GuestManifest;
  const pick = (explicit: string, fromManifest: string | undefined, key: string): string => {
    const p = explicit || (fromManifest ? path.join(dir, fromManifest) : '');
    if (!p) throw new Error(`hypervisor.qemu.${key} is not set and no guest image manifest was found at ${q.guest_manifest} (build one: npx tsx guest/cli.ts build)`);
    if (!fs.existsSync(p)) throw new Error(`hypervisor.qemu.${key}: ${p} does not exist`);
    return p;
  };
  return {
    kernel: pick(q.kernel, manifest?.kernel.file, 'kernel'),
    initrd: pick(q.initrd, manifest?.initrd.file, 'initrd'),
    rootfs: pick(q.image, manifest?.rootfs.file, 'image'),
    cmdline: manifest?.cmdline ?? '',
    measurement: manifest?.measurement,
  };
}

/** How long a redial of a running agent may take to be answered (the first dial has the boot's deadline). */
const AGENT_REDIAL_TIMEOUT_MS = 10_000;

/**
 * One client for the VM's whole life. Its connection starts with the agent channel's session
 * hello (proto/agent-session.ts), sent at once: it waits in QEMU while the guest boots, and the
 * agent's ack marks where this connection's bytes begin, so nothing an earlier host connection
 * left in the port (the tail of an answer) can be taken for ours. Then Health is polled until the
 * agent answers. Random first stream ids stay as a second guard.
 */
async function waitForAgent(socket: string, signal: AbortSignal, bootTimeoutMs: number): Promise<Client> {
  let first: Duplex | undefined = await dialAgentChannel(socket, { timeoutMs: bootTimeoutMs, signal });
  const client = new Client(
    () => {
      const s = first;
      first = undefined;
      return s ?? dialAgentChannel(socket, { timeoutMs: AGENT_REDIAL_TIMEOUT_MS });
    },
    { randomStreamIds: true },
  );
  const health = serviceClient(client, 'grpc.Health');
  for (;;) {
    if (signal.aborted) {
      await client.close();
      throw signal.reason;
    }
    try {
      await health.Check({ service: '' }, { timeoutMs: 1000 });
      return client;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export async function launchQemuSandbox(req: LaunchRequest): Promise<GuestHandle> {
  const q = req.config.hypervisor.qemu;
  // The Task service refuses containers before booting under shared_fs = none; this is the backstop.
  if (q.shared_fs === 'none') throw new Error('shared_fs = none: katats has no way yet to give the guest container rootfs without a shared filesystem');
  const files = resolveGuestFiles(q);
  privateDir(req.stateDir);
  privateDir(req.config.runtime.log_dir);
  const sharedDir = privateDir(path.join(req.stateDir, 'shared'));
  const launchDataFile = path.join(req.stateDir, 'host_data');
  fs.writeFileSync(launchDataFile, req.launchData, { mode: 0o600 });
  const agentSocket = path.join(req.stateDir, 'agent.sock');
  const kernelParams = q.kernel_params.split(/\s+/).filter(Boolean);
  if (req.config.runtime.enable_debug && !kernelParams.some((p) => p.startsWith('agent.log='))) kernelParams.push('agent.log=debug');
  if (req.config.agent.katats.debug_console_enabled) kernelParams.push('agent.debug_console');
  const vmId = `k${req.sandboxId.replace(/[^A-Za-z0-9_-]/g, '').slice(0, 30)}`;
  // Before any helper starts: virtiofsd and QEMU are born in the cgroup the shim moves into.
  const cgroups = req.cgroups ? await SandboxCgroups.enter(req.cgroups, req.log) : undefined;
  if (cgroups) req.onHostResources?.({ cgroupDirs: cgroups.made });
  const cfg: VmConfig = {
    id: vmId,
    vcpus: q.default_vcpus,
    memoryMiB: q.default_memory,
    kernel: files.kernel,
    initrd: files.initrd,
    rootfs: files.rootfs,
    baseCmdline: files.cmdline,
    kernelParams,
    agentSocket,
    // Kept in the log dir: the agent's and the console's words outlive the sandbox for post-mortems.
    // The driver caps, rotates and rate-limits both (a guest may write without end).
    agentLogFile: path.join(req.config.runtime.log_dir, `${req.sandboxId}-agent.log`),
    consoleLogFile: path.join(req.config.runtime.log_dir, `${req.sandboxId}-console.log`),
    ...(q.shared_fs === 'virtio-fs' ? { virtioFs: { socket: path.join(req.stateDir, 'vfs.sock'), tag: SHARED_FS_TAG } } : { sharedDir: { path: sharedDir, tag: SHARED_FS_TAG, securityModel: q.virtio_9p_security_model } }),
    launchDataFile,
    accel: q.accel,
    machine: q.machine_type as VmConfig['machine'],
    runDir: path.join(req.stateDir, 'vm'),
    qemuBinary: q.path,
  };
  let virtiofsd: Virtiofsd | undefined;
  let started: QemuVm | undefined;
  // One undo for every failure before the VM is ours to supervise, in reverse order of making.
  try {
    if (q.shared_fs === 'virtio-fs') {
      virtiofsd = await startVirtiofsd({
        binary: q.virtio_fs_daemon || DEFAULT_VIRTIOFSD,
        source: sharedDir,
        socket: path.join(req.stateDir, 'vfs.sock'),
        logFile: path.join(req.config.runtime.log_dir, `${req.sandboxId}-virtiofsd.log`),
        log: req.log,
      });
      req.onHostResources?.({ virtiofsdPid: virtiofsd.pid });
    }
    started = await QemuVm.start(cfg, { logger: req.log, cacheDir: path.join(req.config.runtime.state_dir, 'vmm') });
    if (started.pid) cgroups?.placeVcpus(started.pid);
  } catch (e) {
    if (started?.running) await started.kill();
    await virtiofsd?.stop();
    await cgroups?.leave();
    throw e;
  }
  const vm = started;
  // Without its virtiofsd the guest's file accesses would hang forever: a dead daemon is a dead VM.
  let stopping = false;
  virtiofsd?.exited.then(async (x) => {
    // When QEMU goes away virtiofsd follows it, possibly before we have seen QEMU's exit.
    if (stopping || !vm.running) return;
    req.log.error({ code: x.code, signal: x.signal }, 'virtiofsd exited under a running VM; killing the VM');
    await vm.kill('crashed');
  }).catch((err: unknown) => req.log.error({ err }, 'killing the VM after virtiofsd died failed'));
  let client: Client | undefined;
  try {
    await vm.waitReady(async (signal) => {
      client = await waitForAgent(agentSocket, signal, req.config.agent.katats.dial_timeout * 1000);
    }, req.config.agent.katats.dial_timeout * 1000);
  } catch (e) {
    stopping = true;
    await cleanup();
    throw e;
  }
  const agentClient = client!;
  async function cleanup(): Promise<void> {
    // QEMU is gone by now; virtiofsd notices the disconnect and exits by itself, stop() makes sure.
    await virtiofsd?.stop();
    await removeTree(req.stateDir).catch((err) => req.log.error({ err }, 'removing the VM state failed'));
    await cgroups?.leave();
  }
  return {
    agent: serviceClient(agentClient, 'grpc.AgentService'),
    health: serviceClient(agentClient, 'grpc.Health'),
    sharedDir,
    sharedFs: q.shared_fs,
    guestDirs: KATA_GUEST_DIRS,
    accel: vm.accel,
    vmmPid: vm.pid ?? 0,
    ...(virtiofsd ? { virtiofsdPid: virtiofsd.pid } : {}),
    cgroupDirs: cgroups?.made ?? [],
    exited: vm.exited.then((x) => ({ code: x.code, signal: x.signal, reason: `${x.reason}${x.lastConsoleLines.length && x.reason !== 'shutdown' && x.reason !== 'quit' && x.reason !== 'killed' ? `: ${x.lastConsoleLines.slice(-3).join(' | ')}` : ''}` })),
    stop: async () => {
      stopping = true;
      await agentClient.close();
      if (vm.running) {
        // The guest has nothing to save: powering off gracefully only costs boot-scale time on TCG.
        await vm.quit().catch(() => vm.kill());
      }
      await cleanup();
    },
  };
}
