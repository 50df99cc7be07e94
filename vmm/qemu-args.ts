// VmConfig -> qemu-system-x86_64 argv.
import path from 'node:path';
import { KVM_CPU } from './accel.js';
import { type Accel, type DiskConfig, DEFAULT_MACHINE, type TcgCut, type VmConfig } from './config.js';

/** QEMU's key=value option syntax doubles commas inside values. */
export function qemuEscape(v: string): string {
  return v.replace(/,/g, ',,');
}

export interface QemuLayout {
  qmpSocket: string;
  /** the agent log port's socket, which the driver reads (set when the config has agentLogFile) */
  agentLogSocket?: string;
  /** where to put hotplugged disks: a bus (pcie-root-port id or pci.0) per free slot */
  hotplugBuses: string[];
  machine: string;
  accel: Accel;
  cmdline: string;
}

/** CPU model under TCG (see vmm/README.md for the measurement). */
export const TCG_CPU = 'max';

/** Firmware for PVH boot: qboot is much smaller and faster than SeaBIOS under TCG. */
export const QBOOT_ROM = '/usr/share/qemu/qboot.rom';

function blockdev(nodeName: string, file: string, readonly: boolean, format: string): string {
  return JSON.stringify({
    driver: format,
    'node-name': nodeName,
    'read-only': readonly,
    file: { driver: 'file', filename: file, 'read-only': readonly },
  });
}

/** QEMU serves the agent log port here; the driver reads it into VmConfig.agentLogFile. */
export function agentLogSocketPath(c: VmConfig): string {
  return path.join(c.runDir, 'log.sock');
}

export function diskNodeName(id: string): string {
  return `${id}-blk`;
}

/**
 * The agent's node flags in a template (a VM whose RAM file is shared: the factory's): all of its
 * code compiled at start and none of it dropped again. Whatever a clone's first pod would compile
 * lazily is then compiled once, in the template, and every clone has it; under TCG each function a
 * clone compiles is also parser and compiler code QEMU translates afresh in that clone. A
 * template's start is ~1.5 s longer under TCG (its RAM file ~16 MiB larger); cold VMs keep lazy
 * compilation.
 */
export const TEMPLATE_NODE_OPTS = ['--no-lazy', '--no-flush-bytecode'];

/** The parts of a VM's config its kernel command line comes from. */
export type CmdlineInput = Pick<VmConfig, 'baseCmdline' | 'kernelParams' | 'guestNodeJit' | 'guestCrunAslr' | 'memoryFile'>;

export function kernelCmdline(c: CmdlineInput, machine: string, accel: Accel): string {
  const words = [c.baseCmdline, ...(c.kernelParams ?? [])];
  // microvm has no PIT/HPET to calibrate the TSC against under TCG; tell the kernel its rate.
  if (machine === 'microvm' && !words.some((w) => w.includes('tsc_early_khz='))) words.push('tsc_early_khz=2000000');
  // A word of the same key in kernelParams wins over any set here.
  const given = (key: string) => words.some((w) => ` ${w}`.includes(` ${key}=`));
  // Cuts that pay only under TCG ('auto'), forced off or on.
  const tcgCut = (setting: TcgCut | undefined) => setting === 'off' || ((setting ?? 'auto') === 'auto' && accel === 'tcg');
  const nodeOpts = [...(tcgCut(c.guestNodeJit) ? ['--jitless'] : []), ...(c.memoryFile?.shared ? TEMPLATE_NODE_OPTS : [])];
  if (nodeOpts.length && !given('katats.node_opts')) words.push(`katats.node_opts=${nodeOpts.join(',')}`);
  if (tcgCut(c.guestCrunAslr) && !given('katats.crun_aslr')) words.push('katats.crun_aslr=off');
  return words.join(' ').trim();
}

export function buildQemuArgs(c: VmConfig, accel: Accel, opts: { firmware?: string | null } = {}): { argv: string[]; layout: QemuLayout } {
  const machine = c.machine ?? DEFAULT_MACHINE;
  const qmpSocket = path.join(c.runDir, 'qmp.sock');
  const agentLogSocket = c.agentLogFile ? agentLogSocketPath(c) : undefined;
  const cmdline = kernelCmdline(c, machine, accel);
  const a: string[] = [
    // Named threads ("CPU 0/KVM") let the shim put the vCPUs in a cgroup of their own.
    '-name', `katats-${qemuEscape(c.id)},debug-threads=on`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
  ];
  const machineOpts: Record<string, string> = { q35: 'q35,vmport=off,sata=off,smbus=off', pc: 'pc,vmport=off', microvm: 'microvm,pcie=on,rtc=on' };
  a.push('-machine', `${machineOpts[machine]!}${c.memoryFile ? ',memory-backend=mem' : ''}`);
  a.push('-accel', accel === 'kvm' ? 'kvm' : `tcg${c.vcpus > 1 ? ',thread=multi' : ''}${c.tcgTbSizeMiB ? `,tb-size=${c.tcgTbSizeMiB}` : ''}`);
  a.push('-cpu', c.cpu ?? (accel === 'kvm' ? KVM_CPU : TCG_CPU));
  a.push('-m', `${c.memoryMiB}M`, '-smp', String(c.vcpus));
  if (c.virtioFs) {
    // virtiofsd reads and writes guest buffers directly: guest RAM must be memory it can map too.
    a.push('-object', `memory-backend-memfd,id=mem,size=${c.memoryMiB}M,share=on`, '-numa', 'node,memdev=mem');
  }
  if (c.memoryFile) {
    a.push('-object', `memory-backend-file,id=mem,size=${c.memoryMiB}M,mem-path=${qemuEscape(c.memoryFile.path)},share=${c.memoryFile.shared ? 'on' : 'off'}`);
  }
  if (c.incoming) a.push('-incoming', 'defer');
  const firmware = opts.firmware === undefined ? (machine === 'microvm' ? null : QBOOT_ROM) : opts.firmware;
  if (firmware) a.push('-bios', firmware);
  a.push('-kernel', c.kernel, '-initrd', c.initrd, '-append', cmdline);
  // Console: the guest's ttyS0 on QEMU's stdout (the driver reads and logs it).
  a.push('-serial', 'stdio');
  // A guest panic (pvpanic) makes QEMU report GUEST_PANICKED and exit with a failure status.
  a.push('-action', 'panic=exit-failure');
  a.push('-qmp', `unix:${qemuEscape(qmpSocket)},server=on,wait=off`);

  // PCI layout: rootfs disk first so it probes first; then the channels; then boot disks.
  const rootBus = machine === 'pc' ? 'pci.0' : 'pcie.0';
  let addr = 2;
  const slot = () => `bus=${rootBus},addr=0x${(addr++).toString(16)}`;
  a.push('-blockdev', blockdev('rootfs-blk', c.rootfs, true, 'raw'));
  a.push('-device', `virtio-blk-pci,drive=rootfs-blk,id=rootfs,serial=katats-root,${slot()}`);
  a.push('-device', `virtio-serial-pci,id=vser0,${slot()}`);
  a.push('-chardev', `socket,id=agent,path=${qemuEscape(c.agentSocket)},server=on,wait=off`);
  a.push('-device', 'virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0');
  if (c.agentLogFile) {
    a.push('-chardev', `socket,id=agentlog,path=${qemuEscape(agentLogSocket!)},server=on,wait=off`);
    a.push('-device', 'virtserialport,bus=vser0.0,chardev=agentlog,name=agent.log.0');
  }
  if (c.snpReportSocket) {
    // A client of the SNP daemon's per-VM socket (the daemon listens): whatever the guest writes on
    // this port reaches the firmware as this VM, and nothing else can reach it from the guest.
    // reconnect: a restarted SNP daemon serves the VM again on the same path (attestation/daemon.ts).
    a.push('-chardev', `socket,id=snp,path=${qemuEscape(c.snpReportSocket)},reconnect=1`);
    a.push('-device', 'virtserialport,bus=vser0.0,chardev=snp,name=katats.snp.0');
  }
  if (c.sharedDir) {
    const ro = c.sharedDir.readonly ? ',readonly=on' : '';
    a.push('-fsdev', `local,id=shared,path=${qemuEscape(c.sharedDir.path)},security_model=${c.sharedDir.securityModel ?? 'none'},multidevs=remap${ro}`);
    a.push('-device', `virtio-9p-pci,fsdev=shared,mount_tag=${qemuEscape(c.sharedDir.tag)},${slot()}`);
  }
  if (c.virtioFs) {
    a.push('-chardev', `socket,id=vfs,path=${qemuEscape(c.virtioFs.socket)}`);
    a.push('-device', `vhost-user-fs-pci,chardev=vfs,tag=${qemuEscape(c.virtioFs.tag)},${slot()}`);
  }
  // NICs on the root bus: present from boot, never unplugged (the pod's network lives as long as its VM).
  for (const n of c.netdevs ?? []) {
    a.push('-netdev', `tap,id=${n.id},fd=${n.fd}`);
    a.push('-device', `virtio-net-pci,netdev=${n.id},id=${n.id}-nic,mac=${n.mac}${n.mtu ? `,host_mtu=${n.mtu}` : ''},${slot()}`);
  }
  // Boot-time disks sit where they can be unplugged later: their own PCIe root port on q35
  // (devices on the root complex itself are not hot-removable), a hotplug-capable slot otherwise.
  (c.disks ?? []).forEach((d, i) => {
    if (machine === 'q35') {
      const port = `bd${i}`;
      a.push('-device', `pcie-root-port,id=${port},bus=pcie.0,chassis=${100 + i},slot=${100 + i},${slot().replace(/^bus=pcie\.0,/, '')}`);
      a.push(...diskArgs(d, `bus=${port}`));
    } else a.push(...diskArgs(d, slot()));
  });
  if (machine !== 'microvm') a.push('-device', `pvpanic-pci,${slot()}`);
  if (c.launchDataFile) a.push('-fw_cfg', `name=opt/katats/host_data,file=${qemuEscape(c.launchDataFile)}`);
  if (c.initdataFile) a.push('-fw_cfg', `name=opt/katats/initdata,file=${qemuEscape(c.initdataFile)}`);

  // Hotplug: q35 needs a PCIe root port per hotpluggable device; pc hotplugs into pci.0 (ACPI).
  const hotplugBuses: string[] = [];
  const slots = c.hotplugSlots ?? 4;
  if (machine === 'q35') {
    for (let i = 0; i < slots; i++) {
      const id = `hp${i}`;
      a.push('-device', `pcie-root-port,id=${id},bus=pcie.0,chassis=${i + 1},slot=${i + 1},${slot().replace(/^bus=pcie\.0,/, '')}`);
      hotplugBuses.push(id);
    }
  } else if (machine === 'pc') {
    for (let i = 0; i < slots; i++) hotplugBuses.push('pci.0');
  }
  return { argv: a, layout: { qmpSocket, ...(agentLogSocket ? { agentLogSocket } : {}), hotplugBuses, machine, accel, cmdline } };
}

function diskArgs(d: DiskConfig, where: string): string[] {
  const node = diskNodeName(d.id);
  const serial = d.serial ? `,serial=${qemuEscape(d.serial)}` : '';
  return [
    '-blockdev', blockdev(node, d.path, d.readonly ?? false, d.format ?? 'raw'),
    '-device', `virtio-blk-pci,drive=${node},id=${d.id}${serial},${where}`,
  ];
}
