// The cloud-hypervisor launcher: [hypervisor.clh] and the launch plan as a cloud-hypervisor
// VmConfig, created through its REST API by the driver (vmm/clh/driver.ts). The VMM is the real
// cloud-hypervisor where it runs, else katats-chv (vmm = auto|cloud-hypervisor|katats-chv). The
// guest is the same image QEMU boots: the rootfs a read-only disk (serial katats-root), the pod's
// share over virtio-fs, the launch data as host_data, the agent over hybrid vsock.
import path from 'node:path';
import type { Hypervisor } from '../vmm/hypervisor.js';
import { ClhHypervisor } from '../vmm/clh/driver.js';
import type { Endpoint } from '../vmm/clh/client.js';
import type { VmConfig } from '../vmm/clh/types.js';
import { chooseClhVmm } from '../vmm/clh/vmm-binary.js';
import { SHARED_FS_TAG, type LaunchRequest } from './guest.js';
import type { LaunchPlan } from './vm.js';

/** Guest CID of the sandbox VM: each VM has its own vsock device, so every VM may use 3. */
const GUEST_CID = 3;
/** The longest unix socket path (sun_path less its NUL). */
const SOCKET_PATH_MAX = 107;
/** The longest socket name in the run dir: the hybrid vsock's (api.sock, api.http and QEMU's agent.sock, qmp.sock, log.sock are shorter). */
const LONGEST_SOCKET_NAME = 'vsock.sock';

export function clhVmConfig(p: LaunchPlan): VmConfig {
  return {
    cpus: { boot_vcpus: p.vcpus, max_vcpus: p.vcpus },
    // shared: virtio-fs (vhost-user) needs guest RAM the daemon can map.
    memory: { size: p.memoryMiB * 1024 * 1024, shared: true },
    payload: { kernel: p.files.kernel, initramfs: p.files.initrd, cmdline: [p.files.cmdline, ...p.kernelParams].join(' ').trim(), host_data: p.launchData.toString('hex') },
    disks: [{ id: 'katats-root', path: p.files.rootfs, readonly: true, serial: 'katats-root' }],
    ...(p.sharedFs === 'virtio-fs' ? { fs: [{ id: 'katats-shared', tag: SHARED_FS_TAG, socket: p.virtiofsSocket, num_queues: 1, queue_size: 1024 }] } : {}),
    serial: { mode: 'File', file: p.consoleLogFile },
    console: { mode: 'Off' },
    vsock: { cid: GUEST_CID, socket: path.join(p.runDir, LONGEST_SOCKET_NAME) },
  };
}

export async function clhHypervisor(req: LaunchRequest, p: LaunchPlan): Promise<Hypervisor> {
  const c = req.config.hypervisor.clh;
  const longest = path.join(p.runDir, LONGEST_SOCKET_NAME);
  if (Buffer.byteLength(longest) > SOCKET_PATH_MAX) {
    throw new Error(`sandbox ${req.sandboxId}: its VMM's sockets (${longest}) would be longer than the ${SOCKET_PATH_MAX} bytes a unix socket path allows; shorten [runtime] state_dir (${req.config.runtime.state_dir})`);
  }
  const vmm = await chooseClhVmm(c.vmm, c.path);
  req.log.info({ vmm: vmm.flavour, why: vmm.why }, 'hypervisor clh');
  const timeoutsMs: Partial<Record<Endpoint, number>> = { 'vm.boot': c.boot_timeout * 1000 };
  return ClhHypervisor.create({
    flavour: vmm.flavour,
    command: vmm.command,
    vmId: p.vmId,
    config: clhVmConfig(p),
    runDir: p.runDir,
    startTimeoutMs: Math.max(c.api_timeout * 1000, 30_000),
    client: { minTimeoutMs: c.api_timeout * 1000, timeoutsMs },
    logFile: path.join(req.config.runtime.log_dir, `${req.sandboxId}-vmm.log`),
    // katats-chv's QEMU keeps its sockets next to the API's, not a level below: a CRI sandbox id is
    // 64 characters, and each level counts against a unix socket path's 107 bytes.
    ...(vmm.flavour === 'katats-chv' ? { chvArgs: ['--run-dir', p.runDir, '--agent-log', p.agentLogFile, '--cache-dir', p.cacheDir, '--qemu', req.config.hypervisor.qemu.path] } : {}),
    log: req.log,
  });
}
