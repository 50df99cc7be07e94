// The QEMU launcher: [hypervisor.qemu] and the launch plan as a QemuVm configuration.
import type { VmConfig } from '../vmm/config.js';
import type { Hypervisor } from '../vmm/hypervisor.js';
import { QemuHypervisor } from '../vmm/qemu-hypervisor.js';
import { SHARED_FS_TAG, type LaunchRequest } from './guest.js';
import type { LaunchPlan } from './vm.js';

export function qemuHypervisor(req: LaunchRequest, p: LaunchPlan): Promise<Hypervisor> {
  const q = req.config.hypervisor.qemu;
  const cfg: VmConfig = {
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
    accel: q.accel,
    machine: q.machine_type as VmConfig['machine'],
    runDir: p.runDir,
    qemuBinary: q.path,
  };
  return Promise.resolve(QemuHypervisor.create(cfg, { logger: req.log, cacheDir: p.cacheDir }));
}
