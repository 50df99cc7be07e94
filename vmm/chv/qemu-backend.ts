// What katats-chv runs a VM on: QEMU, through the same QemuHypervisor the shim uses directly. A
// cloud-hypervisor VmConfig becomes a QEMU VmConfig: payload -> kernel, initrd, command line;
// the disk with serial katats-root (else the first) -> the guest's rootfs; fs[0] -> virtio-fs;
// host_data -> the launch-data file; serial File -> the console log; vsock -> the agent channel,
// reached through hybrid vsock. What QEMU cannot be given here is refused with a reason.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { AccelChoice, DiskConfig as QemuDisk, VmConfig as QemuConfig } from '../config.js';
import type { PluggedDevice } from '../hypervisor.js';
import { QemuHypervisor } from '../qemu-hypervisor.js';
import type { DiskConfig, VmConfig } from '../clh/types.js';

export const ROOTFS_SERIAL = 'katats-root';

/** A request the backend cannot carry out: katats-chv answers it with status 500, as CH does for a VMM error. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
}

export interface QemuBackendOptions {
  /** directory for QEMU's sockets and files */
  runDir: string;
  accel: AccelChoice;
  qemuBinary?: string;
  /** where the agent's log port goes; none: dropped with the console */
  agentLogFile?: string;
  cacheDir?: string;
  log: Logger;
}

const QEMU_ID = /^[A-Za-z][A-Za-z0-9_-]{0,30}$/;

/**
 * QEMU's name for a cloud-hypervisor device id: prefixed, so that no id a client picks can meet
 * QEMU's own (its root ports are hp0..hpN) and CH's "_disk0" style gets the letter QEMU wants first.
 */
export function qemuId(id: string): string {
  const q = `ch-${id}`;
  if (!QEMU_ID.test(q)) throw new BackendError(`device id ${JSON.stringify(id)}: katats-chv's QEMU backend takes [A-Za-z0-9_-]{1,28}`);
  return q;
}

export function qemuDisk(d: DiskConfig, fallbackId: string): QemuDisk {
  if (!d.path) throw new BackendError(`disk ${d.id ?? fallbackId}: only file-backed disks (path) are supported by katats-chv's QEMU backend`);
  if (d.vhost_user) throw new BackendError(`disk ${d.id ?? fallbackId}: vhost-user disks are not supported by katats-chv's QEMU backend`);
  const id = qemuId(d.id ?? fallbackId);
  return { id, path: d.path, readonly: d.readonly ?? false, format: d.image_type === 'Qcow2' ? 'qcow2' : 'raw', ...(d.serial ? { serial: d.serial } : {}) };
}

/** The QEMU configuration for a cloud-hypervisor one; throws BackendError for what it cannot carry. */
export function toQemuConfig(vmId: string, c: VmConfig, o: QemuBackendOptions): QemuConfig {
  const p = c.payload;
  if (!p.kernel) throw new BackendError('payload.kernel is required by katats-chv (firmware and igvm payloads are not supported)');
  if (!p.initramfs) throw new BackendError('payload.initramfs is required by katats-chv (the katats guest boots from its initrd)');
  const disks = (c.disks ?? []).map((d, i) => qemuDisk(d, `_disk${i}`));
  const rootIdx = Math.max(0, disks.findIndex((d) => d.serial === ROOTFS_SERIAL));
  const root = disks[rootIdx];
  if (!root) throw new BackendError('a rootfs disk is required (serial katats-root, else the first disk)');
  if ((c.net ?? []).length) throw new BackendError('network devices are not supported by katats-chv\'s QEMU backend yet');
  if ((c.fs ?? []).length > 1) throw new BackendError('katats-chv\'s QEMU backend takes at most one virtio-fs device');
  if ((c.pmem ?? []).length || (c.devices ?? []).length) throw new BackendError('pmem and VFIO devices are not supported by katats-chv\'s QEMU backend');
  let launchDataFile: string | undefined;
  if (p.host_data) {
    launchDataFile = path.join(o.runDir, 'host_data');
    fs.mkdirSync(o.runDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(launchDataFile, Buffer.from(p.host_data, 'hex'), { mode: 0o600 });
  }
  const fsDev = c.fs?.[0];
  const consoleFile = c.serial?.mode === 'File' ? c.serial.file : undefined;
  return {
    id: vmId,
    vcpus: c.cpus?.boot_vcpus ?? 1,
    memoryMiB: Math.floor((c.memory?.size ?? 512 * 1024 * 1024) / (1024 * 1024)),
    kernel: p.kernel,
    initrd: p.initramfs,
    rootfs: root.path,
    baseCmdline: p.cmdline ?? '',
    disks: disks.filter((_, i) => i !== rootIdx),
    agentSocket: path.join(o.runDir, 'agent.sock'),
    ...(o.agentLogFile ? { agentLogFile: o.agentLogFile } : {}),
    ...(consoleFile ? { consoleLogFile: consoleFile } : {}),
    ...(fsDev ? { virtioFs: { socket: fsDev.socket, tag: fsDev.tag } } : {}),
    ...(launchDataFile ? { launchDataFile } : {}),
    accel: o.accel,
    runDir: o.runDir,
    ...(o.qemuBinary ? { qemuBinary: o.qemuBinary } : {}),
  };
}

/** The running QEMU under a katats-chv VM. */
export async function bootQemu(vmId: string, c: VmConfig, o: QemuBackendOptions): Promise<QemuHypervisor> {
  const cfg = toQemuConfig(vmId, c, o);
  const hv = QemuHypervisor.create(cfg, { logger: o.log, ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}) });
  await hv.boot();
  return hv;
}

/**
 * A hot-plugged disk's place as cloud-hypervisor reports it, plus katats' extension: QEMU's q35
 * puts it behind a PCIe root port, so its bdf on the root bus names the port ("0000:00:05.0")
 * and `pci_path` ("05/00") is the whole path the agent needs, which a bdf cannot say.
 */
export function pciDeviceInfo(id: string, d: PluggedDevice): { id: string; bdf: string; pci_path: string } {
  const first = d.pciPath.split('/')[0] ?? '00';
  return { id, bdf: `0000:00:${first}.0`, pci_path: d.pciPath };
}
