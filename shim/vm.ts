// Boots a sandbox VM on the configured hypervisor (runtime.hypervisor: QEMU, or cloud-hypervisor
// through its REST API) from the guest image and waits until the agent inside answers
// grpc.Health/Check. What differs per hypervisor is only how its VMM is made (vm-qemu.ts,
// vm-clh.ts); the rest (state dirs, launch data, cgroups, virtiofsd, the agent) is shared here.
import fs from 'node:fs';
import path from 'node:path';
import { Client } from '../proto/ttrpc/index.js';
import { healthyAgent } from './agent-ready.js';
import { serviceClient } from '../proto/rpc.js';
import type { Hypervisor } from '../vmm/hypervisor.js';
import type { GuestManifest } from '../guest/manifest.js';
import { type ClhConfig, hypervisorKind, hypervisorSection, type HypervisorKind, type KatatsConfig, type QemuConfig } from './config.js';
import { KATA_GUEST_DIRS, type GuestHandle, type LaunchRequest } from './guest.js';
import { removeTree } from '../sys/mount.js';
import { SandboxCgroups } from './sandbox-cgroups.js';
import { DEFAULT_VIRTIOFSD, startVirtiofsd, type Virtiofsd } from './virtiofsd.js';
import { privateDir } from './layout.js';
import { qemuCmdline, qemuHypervisor } from './vm-qemu.js';
import { PodLayers, type DiskHotplug } from './layer-disks.js';
import { precondition } from './errdefs.js';
import { QemuHypervisor } from '../vmm/qemu-hypervisor.js';
import { takeRestoredAgent } from './factory.js';
import { registerSnpVm, type SnpRegistration } from './snp-launch.js';
import { resolveAccel } from '../vmm/accel.js';

export interface GuestFiles {
  kernel: string;
  initrd: string;
  rootfs: string;
  cmdline: string;
  measurement: string | undefined;
}

/** Kernel, initrd and rootfs from explicit keys, else from the guest image manifest. */
export function resolveGuestFiles(q: Pick<QemuConfig | ClhConfig, 'guest_manifest' | 'kernel' | 'initrd' | 'image'>, kind: HypervisorKind = 'qemu'): GuestFiles {
  let manifest: GuestManifest | undefined;
  const dir = path.dirname(q.guest_manifest);
  if (q.guest_manifest && fs.existsSync(q.guest_manifest)) manifest = JSON.parse(fs.readFileSync(q.guest_manifest, 'utf8')) as GuestManifest;
  const pick = (explicit: string, fromManifest: string | undefined, key: string): string => {
    const p = explicit || (fromManifest ? path.join(dir, fromManifest) : '');
    if (!p) throw new Error(`hypervisor.${kind}.${key} is not set and no guest image manifest was found at ${q.guest_manifest} (build one: npx tsx guest/cli.ts build)`);
    if (!fs.existsSync(p)) throw new Error(`hypervisor.${kind}.${key}: ${p} does not exist`);
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

/** What every hypervisor's VM is made of; a launcher turns it into its VMM's configuration. */
export interface LaunchPlan {
  /** A VMM-safe id derived from the sandbox id. */
  vmId: string;
  files: GuestFiles;
  kernelParams: string[];
  vcpus: number;
  memoryMiB: number;
  sharedFs: 'virtio-9p' | 'virtio-fs' | 'none';
  /** Free slots for hot-plugged devices (image layer disks); 0: none. */
  hotplugSlots: number;
  /** Host directory the guest mounts as its shared filesystem. */
  sharedDir: string;
  /** virtiofsd's socket, when sharedFs is virtio-fs. */
  virtiofsSocket: string;
  /** 32 bytes bound to the VM at launch, also in a file for VMMs that take one. */
  launchData: Buffer;
  launchDataFile: string;
  /** The pod's initdata document, for the guest (fw_cfg opt/katats/initdata). */
  initdataFile?: string;
  /** Directory for the VMM's own sockets and files. */
  runDir: string;
  /** Where the agent channel's host end is served. */
  agentSocket: string;
  consoleLogFile: string;
  agentLogFile: string;
  /** The shim's state dir for VMM-wide caches (the KVM probe). */
  cacheDir: string;
  /** The SNP firmware's socket for this VM, when [attestation] snp_socket is set. */
  snpReportSocket?: string;
}

export type HypervisorLauncher = (req: LaunchRequest, plan: LaunchPlan) => Promise<Hypervisor>;

const LAUNCHERS: Record<HypervisorKind, HypervisorLauncher> = {
  qemu: qemuHypervisor,
  // Loaded when a pod asks for it: its API schemas (ajv) are compiled at load, which a QEMU pod's start would pay for.
  clh: async (req, plan) => (await import('./vm-clh.js')).clhHypervisor(req, plan),
};

/** Layer disks a cloud-hypervisor pod may have plugged at once (its PCI segment has 32 device slots, some taken at boot). */
const HOTPLUG_SLOTS_CLH = 16;

/** How long a redial of a running agent may take to be answered (the first dial has the boot's deadline). */
export const AGENT_REDIAL_TIMEOUT_MS = 10_000;

/**
 * One client for the VM's whole life. Its connection starts with the agent channel's session
 * hello (proto/agent-session.ts), sent at once: it waits in the VMM while the guest boots, and the
 * agent's ack marks where this connection's bytes begin, so nothing an earlier host connection
 * left in the port (the tail of an answer) can be taken for ours. Then Health is polled until the
 * agent answers. Random first stream ids stay as a second guard.
 */
function waitForAgent(hv: Hypervisor, signal: AbortSignal, bootTimeoutMs: number): Promise<Client> {
  return healthyAgent((o) => hv.connectAgent(o), signal, bootTimeoutMs, AGENT_REDIAL_TIMEOUT_MS);
}

/**
 * The VM a sandbox gets on this hypervisor: its state and log dirs made, its launch data written,
 * every path and size decided. The factory builds its template from the same plan (shim/factory.ts),
 * so a template can differ from a pod's VM only by what that pod asks for.
 */
export function prepareLaunch(
  config: KatatsConfig,
  kind: HypervisorKind,
  p: { sandboxId: string; stateDir: string; launchData: Buffer; initdata?: string },
): LaunchPlan {
  const h = kind === 'qemu' ? config.hypervisor.qemu : config.hypervisor.clh;
  const files = resolveGuestFiles(h, kind);
  privateDir(p.stateDir);
  privateDir(config.runtime.log_dir);
  const sharedDir = privateDir(path.join(p.stateDir, 'shared'));
  const launchDataFile = path.join(p.stateDir, 'host_data');
  fs.writeFileSync(launchDataFile, p.launchData, { mode: 0o600 });
  let initdataFile: string | undefined;
  if (p.initdata !== undefined) {
    if (kind !== 'qemu') throw precondition(`initdata reaches the guest through QEMU's fw_cfg; sandbox ${p.sandboxId} runs on ${kind}`);
    initdataFile = path.join(p.stateDir, 'initdata.toml');
    fs.writeFileSync(initdataFile, p.initdata, { mode: 0o600 });
  }
  const kernelParams = h.kernel_params.split(/\s+/).filter(Boolean);
  if (config.runtime.enable_debug && !kernelParams.some((k) => k.startsWith('agent.log='))) kernelParams.push('agent.log=debug');
  if (config.agent.katats.debug_console_enabled) kernelParams.push('agent.debug_console');
  return {
    vmId: `k${p.sandboxId.replace(/[^A-Za-z0-9_-]/g, '').slice(0, 30)}`,
    files,
    kernelParams,
    vcpus: h.default_vcpus,
    memoryMiB: h.default_memory,
    sharedFs: h.shared_fs,
    sharedDir,
    virtiofsSocket: path.join(p.stateDir, 'vfs.sock'),
    launchData: p.launchData,
    launchDataFile,
    ...(initdataFile ? { initdataFile } : {}),
    runDir: path.join(p.stateDir, 'vm'),
    agentSocket: path.join(p.stateDir, 'agent.sock'),
    // Kept in the log dir: the agent's and the console's words outlive the sandbox for post-mortems.
    // The drivers cap, rotate and rate-limit both (a guest may write without end).
    agentLogFile: path.join(config.runtime.log_dir, `${p.sandboxId}-agent.log`),
    consoleLogFile: path.join(config.runtime.log_dir, `${p.sandboxId}-console.log`),
    cacheDir: path.join(config.runtime.state_dir, 'vmm'),
    // cloud-hypervisor plugs PCI devices without root ports; QEMU's q35 needs one per device.
    hotplugSlots: kind === 'qemu' ? (config.hypervisor.qemu.machine_type === 'microvm' ? 0 : config.hypervisor.qemu.pcie_root_port) : HOTPLUG_SLOTS_CLH,
  };
}

export async function launchSandbox(req: LaunchRequest): Promise<GuestHandle> {
  const kind = hypervisorKind(req.config);
  const h = hypervisorSection(req.config);
  const plan = prepareLaunch(req.config, kind, req);
  const sharedDir = plan.sharedDir;
  // Before any helper starts: virtiofsd and the VMM are born in the cgroup the shim moves into.
  const cgroups = req.cgroups ? await SandboxCgroups.enter(req.cgroups, req.log) : undefined;
  if (cgroups) req.onHostResources?.({ cgroupDirs: cgroups.made });
  let virtiofsd: Virtiofsd | undefined;
  let hv: Hypervisor | undefined;
  let snp: SnpRegistration | undefined;
  // One undo for every failure before the VM is ours to supervise, in reverse order of making.
  try {
    if (req.config.attestation.snp_socket) {
      if (kind !== 'qemu') throw precondition(`attestation.snp_socket is wired for QEMU only; sandbox ${req.sandboxId} runs on ${kind}`);
      const q = req.config.hypervisor.qemu;
      // The accelerator QEMU will get (the probe's cached answer): the command line depends on it.
      const { accel } = await resolveAccel(q.accel, { cacheDir: plan.cacheDir, kernel: plan.files.kernel, qemuBinary: q.path });
      snp = await registerSnpVm({
        controlSocket: req.config.attestation.snp_socket,
        sandboxId: req.sandboxId,
        files: plan.files,
        // The command line QEMU passes, as the measurement covers it.
        cmdline: qemuCmdline(q, plan.files.cmdline, plan.kernelParams, accel),
        hostData: req.launchData,
        cacheDir: plan.cacheDir,
        log: req.log,
      });
      plan.snpReportSocket = snp.socket;
    }
    if (h.shared_fs === 'virtio-fs') {
      virtiofsd = await startVirtiofsd({
        binary: h.virtio_fs_daemon || DEFAULT_VIRTIOFSD,
        source: sharedDir,
        socket: plan.virtiofsSocket,
        logFile: path.join(req.config.runtime.log_dir, `${req.sandboxId}-virtiofsd.log`),
        log: req.log,
      });
      req.onHostResources?.({ virtiofsdPid: virtiofsd.pid });
    }
    hv = await LAUNCHERS[kind](req, plan);
    await hv.boot();
    if (hv.vcpuPid) cgroups?.placeVcpus(hv.vcpuPid);
  } catch (e) {
    if (hv?.running) await hv.kill();
    await virtiofsd?.stop();
    await snp?.release();
    await cgroups?.leave();
    throw e;
  }
  const vm = hv;
  // Without its virtiofsd the guest's file accesses would hang forever: a dead daemon is a dead VM.
  let stopping = false;
  virtiofsd?.exited.then(async (x) => {
    // When the VMM goes away virtiofsd follows it, possibly before we have seen the VMM's exit.
    if (stopping || !vm.running) return;
    req.log.error({ code: x.code, signal: x.signal }, 'virtiofsd exited under a running VM; killing the VM');
    await vm.kill();
  }).catch((err: unknown) => req.log.error({ err }, 'killing the VM after virtiofsd died failed'));
  let client: Client | undefined;
  // A clone comes with its agent connection open (shim/factory.ts): the pod keeps it.
  const restored = vm instanceof QemuHypervisor ? takeRestoredAgent(vm.qemu) : undefined;
  try {
    await vm.waitReady(async (signal) => {
      client = restored ?? (await waitForAgent(vm, signal, req.config.agent.katats.dial_timeout * 1000));
    }, req.config.agent.katats.dial_timeout * 1000);
  } catch (e) {
    stopping = true;
    await restored?.close().catch(() => {});
    if (vm.running) await vm.kill();
    await cleanup();
    throw e;
  }
  const agentClient = client!;
  async function cleanup(): Promise<void> {
    // The VMM is gone by now; virtiofsd notices the disconnect and exits by itself, stop() makes sure.
    await virtiofsd?.stop();
    await snp?.release();
    await removeTree(req.stateDir).catch((err) => req.log.error({ err }, 'removing the VM state failed'));
    await cgroups?.leave();
  }
  // A clone's NICs were hot-plugged (shim/factory.ts): they hold slots the disks cannot have.
  const nicSlots = vm instanceof QemuHypervisor ? vm.qemu.nicsHotplugged : 0;
  let plugged = nicSlots;
  const disks: DiskHotplug = {
    attachReadonly: async (id, file) => {
      if (plugged >= plan.hotplugSlots) {
        const key = kind === 'qemu' ? `[hypervisor.qemu] pcie_root_port (${plan.hotplugSlots}${nicSlots ? `, ${nicSlots} of them taken by the NICs of a VM cloned from a template` : ''})` : `the ${plan.hotplugSlots} disks a cloud-hypervisor pod may hot-plug`;
        throw precondition(`no free hotplug slot for disk ${id}: the pod's containers use more image layers at once than ${key} allows`);
      }
      plugged++;
      try {
        return (await vm.addDisk({ id, path: file, readonly: true })).pciPath;
      } catch (e) {
        // Plugged but not found in the guest's PCI tree: take it out again, or the slot stays lost.
        await vm.removeDevice(id).catch((err: unknown) => req.log.debug({ err, disk: id }, 'removing a disk whose plug failed'));
        plugged--;
        throw e;
      }
    },
    detach: async (id) => {
      await vm.removeDevice(id);
      plugged--;
    },
  };
  return {
    // Without hot-plug slots (microvm, or none configured) a tardev rootfs goes over the share, unverified.
    ...(plan.hotplugSlots > 0 ? { layers: new PodLayers(disks, req.log) } : {}),
    agent: serviceClient(agentClient, 'grpc.AgentService'),
    health: serviceClient(agentClient, 'grpc.Health'),
    sharedDir,
    sharedFs: h.shared_fs,
    guestDirs: KATA_GUEST_DIRS,
    accel: vm.accel,
    bootPath: vm.restored ? 'template' : 'cold',
    hypervisor: vm,
    vmmPid: vm.pid ?? 0,
    ...(virtiofsd ? { virtiofsdPid: virtiofsd.pid } : {}),
    cgroupDirs: cgroups?.made ?? [],
    exited: vm.exited.then((x) => ({ code: x.code, signal: x.signal, reason: `${x.reason}${x.lastConsoleLines.length && x.reason !== 'shutdown' && x.reason !== 'quit' && x.reason !== 'killed' ? `: ${x.lastConsoleLines.slice(-3).join(' | ')}` : ''}` })),
    stop: async () => {
      stopping = true;
      await agentClient.close();
      // The guest has nothing to save: the VMM's own shutdown, then SIGKILL past its grace.
      if (vm.running) await vm.stop().catch(() => vm.kill());
      await cleanup();
    },
  };
}
