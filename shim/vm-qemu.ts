// The QEMU launcher: [hypervisor.qemu] and the launch plan as a QemuVm configuration.
import type { Accel, VmConfig } from '../vmm/config.js';
import { kernelCmdline } from '../vmm/qemu-args.js';
import type { Hypervisor } from '../vmm/hypervisor.js';
import { QemuHypervisor } from '../vmm/qemu-hypervisor.js';
import { SHARED_FS_TAG, type LaunchRequest } from './guest.js';
import type { GuestNic } from './network/pod-network.js';
import type { QemuConfig } from './config.js';
import { cloneForPod } from './factory.js';
import type { LaunchPlan } from './vm.js';
import { findRunner } from '../sys/runner.js';

/** Where the native helper puts the first TAP for QEMU (tap-exec in agent/native/katats-runner.c). */
const TAP_FIRST_FD = 3;

/** The helper that enters the pod's namespace, opens its TAPs at 3, 4, ... and execs QEMU in place. */
function tapExec(netns: string, taps: string[]): string[] {
  return [findRunner(), 'tap-exec', '--netns', netns, ...taps.flatMap((t) => ['--tap', t]), '--'];
}

/** The [hypervisor.qemu] keys that shape the guest's command line beyond kernel_params. */
function guestCmdlineKeys(q: QemuConfig): Pick<VmConfig, 'guestNodeJit' | 'guestCrunAslr'> {
  return { guestNodeJit: q.node_jit, guestCrunAslr: q.crun_aslr };
}

/** The command line QEMU gets for this configuration: what an SEV-SNP launch measures, from the one place the VM's comes from. */
export function qemuCmdline(q: QemuConfig, baseCmdline: string, kernelParams: string[], accel: Accel): string {
  return kernelCmdline({ baseCmdline, kernelParams, ...guestCmdlineKeys(q) }, q.machine_type, accel);
}

/** A pod's QEMU VM (or the factory's template, which has no NICs) from [hypervisor.qemu] and its launch plan. */
export function qemuVmConfig(q: QemuConfig, p: LaunchPlan, nics: readonly GuestNic[] = []): VmConfig {
  return {
    id: p.vmId,
    vcpus: p.vcpus,
    memoryMiB: p.memoryMiB,
    kernel: p.files.kernel,
    initrd: p.files.initrd,
    rootfs: p.files.rootfs,
    baseCmdline: p.files.cmdline,
    kernelParams: p.kernelParams,
    agentSocket: p.agentSocket,
    agentLogFile: p.agentLogFile,
    consoleLogFile: p.consoleLogFile,
    ...(p.sharedFs === 'virtio-fs' ? { virtioFs: { socket: p.virtiofsSocket, tag: SHARED_FS_TAG } } : {}),
    ...(p.sharedFs === 'virtio-9p' ? { sharedDir: { path: p.sharedDir, tag: SHARED_FS_TAG, securityModel: q.virtio_9p_security_model } } : {}),
    hotplugSlots: p.hotplugSlots,
    launchDataFile: p.launchDataFile,
    launchData: p.launchData,
    ...(p.initdataFile ? { initdataFile: p.initdataFile } : {}),
    ...(p.snpReportSocket ? { snpReportSocket: p.snpReportSocket } : {}),
    ...(nics.length ? { netdevs: nics.map((n, i) => ({ id: `net${i}`, fd: TAP_FIRST_FD + i, mac: n.mac, mtu: n.mtu })) } : {}),
    accel: q.accel,
    ...(q.tcg_tb_size ? { tcgTbSizeMiB: q.tcg_tb_size } : {}),
    ...guestCmdlineKeys(q),
    machine: q.machine_type as VmConfig['machine'],
    runDir: p.runDir,
    qemuBinary: q.path,
  };
}

export function qemuHypervisor(req: LaunchRequest, p: LaunchPlan): Promise<Hypervisor> {
  const cfg = qemuVmConfig(req.config.hypervisor.qemu, p, req.network?.nics);
  // The factory's clone when there is a template for this VM's shape, else a cold boot.
  return Promise.resolve(
    QemuHypervisor.create(
      cfg,
      {
        logger: req.log,
        cacheDir: p.cacheDir,
        // QEMU runs in the pod's network namespace (as Kata's does) holding its TAPs at 3, 4, ...
        ...(req.network?.nics.length ? { launchWrapper: tapExec(req.network.netns, req.network.nics.map((n) => n.tap)) } : {}),
      },
      (c, o) => cloneForPod(req.config, c, o, req.log),
    ),
  );
}
