// A plain VM description, independent of QEMU's argv syntax.

export type Accel = 'kvm' | 'tcg';
export type AccelChoice = Accel | 'auto';
export type MachineType = 'q35' | 'pc' | 'microvm';

export interface DiskConfig {
  /** QEMU device id (also the block node name prefix); [A-Za-z][A-Za-z0-9_-]* */
  id: string;
  path: string;
  readonly?: boolean;
  format?: 'raw' | 'qcow2';
  /** virtio-blk serial, visible in the guest as /sys/block/vdX/serial */
  serial?: string;
}

export interface SharedDirConfig {
  /** host directory exported over 9p (QEMU's own server) */
  path: string;
  /** mount tag the guest uses */
  tag: string;
  readonly?: boolean;
  /**
   * How QEMU stores what the guest sets. 'none' (the default): guest chmod and chown land on the
   * host as such (QEMU runs as root; device nodes are refused: QEMU runs without CAP_MKNOD).
   * 'mapped-xattr': guest owners, modes and device nodes live in user.virtfs.* xattrs and host
   * files stay plain, but QEMU then reads every symlink as a file holding its target, so real
   * symlinks (every image layer has them) fail with ELOOP: usable only for trees without them.
   */
  securityModel?: 'mapped-xattr' | 'none';
}

export interface VirtioFsConfig {
  /** vhost-user socket a virtiofsd (started by the caller) listens on */
  socket: string;
  /** mount tag the guest uses (mount -t virtiofs TAG DIR) */
  tag: string;
}

/**
 * A NIC backed by a TAP descriptor QEMU inherits (`-netdev tap,fd=N`): whoever spawns QEMU opens
 * the TAP at that number (see StartOptions.launchWrapper). No vhost-net: QEMU moves the frames.
 */
export interface NetdevConfig {
  /** QEMU id of the netdev; the NIC is `<id>-nic` */
  id: string;
  /** the inherited descriptor (3 and up) */
  fd: number;
  /** the guest NIC's MAC, aa:bb:cc:dd:ee:ff */
  mac: string;
  /** told to the guest (virtio-net's MTU feature); 0 or absent: not told */
  mtu?: number;
}

/** A guest setting that pays only under TCG: 'auto' = off under TCG, on under KVM; or forced. */
export type TcgCut = 'auto' | 'on' | 'off';
export const TCG_CUTS: readonly TcgCut[] = ['auto', 'on', 'off'];

export interface VmConfig {
  /** sandbox id: names the log lines and files */
  id: string;
  vcpus: number;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  /** the read-only rootfs image, attached as the first virtio-blk disk (serial katats-root) */
  rootfs: string;
  /** the guest image's measured base command line (manifest.cmdline) */
  baseCmdline: string;
  /** extra kernel parameters, e.g. agent.log=debug */
  kernelParams?: string[];
  /** disks present from boot on */
  disks?: DiskConfig[];
  /** host unix socket QEMU listens on for the agent channel (virtio-serial port agent.channel.0) */
  agentSocket: string;
  /**
   * file receiving the agent's log (virtio-serial port agent.log.0, read by the driver from a
   * socket in runDir, capped and rotated); none: the agent logs to the console
   */
  agentLogFile?: string;
  /** the console log (capped and rotated); default RUNDIR/console.log */
  consoleLogFile?: string;
  sharedDir?: SharedDirConfig;
  /** a virtio-fs device backed by a running virtiofsd; guest RAM then becomes a shared memfd */
  virtioFs?: VirtioFsConfig;
  /** NICs, in PCI order */
  netdevs?: NetdevConfig[];
  /**
   * the emulated SEV-SNP firmware's socket for this VM (`katats snp serve`), which QEMU connects to
   * as the guest's virtio-serial port katats.snp.0 (the guest's report device)
   */
  snpReportSocket?: string;
  /** file with the launch data (32-byte policy digest) exposed as fw_cfg opt/katats/host_data */
  launchDataFile?: string;
  /** the bytes launchDataFile holds, when the caller has them (saves the factory a read) */
  launchData?: Buffer;
  /** the pod's initdata document exposed as fw_cfg opt/katats/initdata (the agent checks it against the launch data) */
  initdataFile?: string;
  accel: AccelChoice;
  machine?: MachineType;
  /** directory for this VM's QMP socket, console log and QEMU stderr (created if missing) */
  runDir: string;
  /** CPU model; default 'max' under TCG, KVM_CPU under KVM */
  cpu?: string;
  /**
   * TCG's translated-code buffer in MiB (QEMU's `-accel tcg,tb-size=`); unset: QEMU's default. A
   * clone translates its guest's code afresh into it, so it is most of an idle clone's own memory.
   */
  tcgTbSizeMiB?: number;
  /**
   * Whether the guest's node (the agent) may compile to machine code. Under TCG every JIT-compiled
   * function is emulated compiler work plus fresh guest code for TCG to translate again, which costs
   * more than it saves in an agent's short requests: 'auto' (the default) runs it `--jitless` there
   * and leaves it compiling under KVM. Set through the command line (`katats.node_opts=`); a
   * `katats.node_opts=` in kernelParams wins.
   */
  guestNodeJit?: TcgCut;
  /**
   * ASLR for the guest's crun commands that start no process (start, kill, delete, state...). Under
   * TCG a randomized exec puts crun, its libraries and the loader at new addresses, and TCG
   * translates them all again (a translation is keyed by address); at fixed addresses the next
   * crun reuses the last one's. 'auto' (the default) turns it off under TCG only
   * (`katats.crun_aslr=off` on the command line; one in kernelParams wins). Container processes,
   * execs and hooks keep ASLR whatever this says.
   */
  guestCrunAslr?: TcgCut;
  /** number of empty hotplug slots (q35 PCIe root ports); default 4 */
  hotplugSlots?: number;
  qemuBinary?: string;
  /**
   * Guest RAM in a file (VM templates, vmm/template/): shared, the template writes its RAM there;
   * private, a clone maps it copy-on-write.
   */
  memoryFile?: { path: string; shared: boolean };
  /** Start paused, waiting for a migration stream (QMP migrate-incoming): a template clone. */
  incoming?: boolean;
}

export const DEFAULT_MACHINE: MachineType = 'q35';

const ID_RE = /^[A-Za-z][A-Za-z0-9_-]{0,30}$/;

export function validateConfig(c: VmConfig): void {
  const errs: string[] = [];
  if (!c.id) errs.push('id is empty');
  if (!Number.isInteger(c.vcpus) || c.vcpus < 1 || c.vcpus > 64) errs.push(`vcpus ${c.vcpus} out of range 1..64`);
  if (!Number.isInteger(c.memoryMiB) || c.memoryMiB < 64) errs.push(`memoryMiB ${c.memoryMiB} < 64`);
  for (const k of ['kernel', 'initrd', 'rootfs', 'agentSocket', 'runDir'] as const) if (!c[k]) errs.push(`${k} is empty`);
  for (const d of c.disks ?? []) if (!ID_RE.test(d.id)) errs.push(`disk id ${JSON.stringify(d.id)} is not a valid QEMU id`);
  if (!['auto', 'kvm', 'tcg'].includes(c.accel)) errs.push(`accel ${c.accel} is not auto|kvm|tcg`);
  for (const k of ['guestNodeJit', 'guestCrunAslr'] as const) if (c[k] !== undefined && !TCG_CUTS.includes(c[k])) errs.push(`${k} ${String(c[k])} is not auto, on or off`);
  if (c.tcgTbSizeMiB !== undefined && (!Number.isInteger(c.tcgTbSizeMiB) || c.tcgTbSizeMiB < 1)) errs.push(`tcgTbSizeMiB ${c.tcgTbSizeMiB} is not a positive integer`);
  if (c.machine && !['q35', 'pc', 'microvm'].includes(c.machine)) errs.push(`machine ${c.machine} is not q35|pc|microvm`);
  if (c.agentSocket && Buffer.byteLength(c.agentSocket) > 107) errs.push('agentSocket path longer than a unix socket allows');
  if (c.snpReportSocket !== undefined && (!c.snpReportSocket || Buffer.byteLength(c.snpReportSocket) > 107)) errs.push('snpReportSocket is empty or longer than a unix socket path allows');
  // runDir holds qmp.sock and log.sock (the agent log port): short names, since a CRI sandbox id
  // alone is 64 characters of the path.
  if (c.runDir && Buffer.byteLength(c.runDir) > 107 - 'log.sock'.length - 1) errs.push('runDir path too long for its unix sockets');
  if (c.memoryFile && c.virtioFs) errs.push('memoryFile and virtioFs exclude each other (virtio-fs guests cannot be templated)');
  if (c.virtioFs) {
    if (!c.virtioFs.socket) errs.push('virtioFs.socket is empty');
    else if (Buffer.byteLength(c.virtioFs.socket) > 107) errs.push('virtioFs.socket path longer than a unix socket allows');
    // The virtio-fs device config holds the tag in 36 bytes.
    if (!c.virtioFs.tag || Buffer.byteLength(c.virtioFs.tag) > 36) errs.push(`virtioFs.tag ${JSON.stringify(c.virtioFs.tag)} must be 1..36 bytes`);
  }
  const fds = new Set<number>();
  for (const n of c.netdevs ?? []) {
    if (!ID_RE.test(n.id)) errs.push(`netdev id ${JSON.stringify(n.id)} is not a valid QEMU id`);
    if (!Number.isInteger(n.fd) || n.fd < 3 || fds.has(n.fd)) errs.push(`netdev ${n.id}: fd ${n.fd} must be a distinct descriptor number from 3 up`);
    fds.add(n.fd);
    if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(n.mac) || (parseInt(n.mac.slice(0, 2), 16) & 1) === 1) errs.push(`netdev ${n.id}: ${JSON.stringify(n.mac)} is not a unicast MAC`);
    if (n.mtu !== undefined && (!Number.isInteger(n.mtu) || n.mtu < 0 || n.mtu > 65535)) errs.push(`netdev ${n.id}: mtu ${n.mtu} out of range`);
  }
  for (const p of [c.kernelParams ?? []].flat()) if (/\s/.test(p)) errs.push(`kernel param ${JSON.stringify(p)} contains whitespace`);
  if (errs.length) throw new Error(`invalid VM config: ${errs.join('; ')}`);
}

export function isValidId(id: string): boolean {
  return ID_RE.test(id);
}
