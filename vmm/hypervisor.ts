// The one interface the shim drives a sandbox VM through, whichever VMM runs it: QEMU (over QMP,
// qemu-hypervisor.ts) or cloud-hypervisor (over its REST API, clh/driver.ts). A driver that cannot
// do something says so in `capabilities` and throws UnsupportedError when asked anyway.
import type { EventEmitter } from 'node:events';
import type net from 'node:net';
import type { Accel, DiskConfig } from './config.js';
import type { ExitReason } from './vm.js';

export type HypervisorKind = 'qemu' | 'clh';
export const HYPERVISOR_KINDS: readonly HypervisorKind[] = ['qemu', 'clh'];

/** cloud-hypervisor's VmState words, which QEMU's run states map onto. */
export type VmRunState = 'Created' | 'Running' | 'Shutdown' | 'Paused';

export interface HypervisorExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  reason: ExitReason;
  accel: Accel;
  lastConsoleLines: string[];
  /** ms since the VMM was spawned */
  atMs: number;
}

/** A network device backed by TAP file descriptors the caller opened (one per queue pair). */
export interface NetDevice {
  id: string;
  tapFds: number[];
  mac?: string;
  mtu?: number;
}

/** A virtio-fs device served by a running virtiofsd on `socket`. */
export interface FsDevice {
  id: string;
  tag: string;
  socket: string;
}

/** Where a hot-plugged device landed. */
export interface PluggedDevice {
  id: string;
  /** PCI path in the guest, slots from the root down ("02/00"): Kata's grpc.Device.id for blk. */
  pciPath: string;
}

export interface HypervisorInfo {
  state: VmRunState;
  vcpus: number;
  memoryMiB: number;
  /** ids of the devices the VMM knows, boot-time and hot-plugged */
  devices: string[];
}

/** Something the VMM reports (QMP events; cloud-hypervisor's event monitor), in its own words. */
export interface HypervisorEvent {
  source: string;
  event: string;
  /** ms since the VMM was spawned */
  atMs: number;
  properties?: Record<string, unknown>;
}

export interface HypervisorCapabilities {
  diskHotplug: boolean;
  netHotplug: boolean;
  fsHotplug: boolean;
  pause: boolean;
  snapshot: boolean;
}

export class UnsupportedError extends Error {
  override readonly name = 'UnsupportedError';
  constructor(kind: HypervisorKind, what: string) {
    super(`${kind}: ${what} is not supported by this driver`);
  }
}

export interface ConnectOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * A sandbox VM. Life: a driver's create() returns it configured but not booted; boot() starts the
 * guest; stop() asks the guest's VMM to end gracefully and kills it past its grace; `exited`
 * settles however the VMM went. Events: 'event' (HypervisorEvent), 'exit' (HypervisorExit).
 */
export interface Hypervisor extends EventEmitter {
  readonly kind: HypervisorKind;
  readonly id: string;
  readonly accel: Accel;
  readonly capabilities: HypervisorCapabilities;
  /** the VMM process (or the process serving its API), for cgroups and `shim delete` */
  readonly pid: number | undefined;
  /** the process whose threads run the vCPUs (QEMU's own under katats-chv), for the sandbox cgroup */
  readonly vcpuPid: number | undefined;
  readonly running: boolean;
  /** The VM was restored from a template (the factory) rather than booted cold; absent: cold. */
  readonly restored?: boolean;
  readonly exited: Promise<HypervisorExit>;

  boot(): Promise<void>;
  /**
   * Waits until `probe` resolves (the agent answered). Past `deadlineMs`, or when the VMM exits
   * first, the VMM is killed and the error carries the last console lines.
   */
  waitReady(probe: (signal: AbortSignal) => Promise<void>, deadlineMs: number): Promise<number>;
  /** A fresh byte stream to the guest agent's port (before any session hello). */
  connectAgent(o: ConnectOptions): Promise<net.Socket>;

  addDisk(d: DiskConfig): Promise<PluggedDevice>;
  addNet(n: NetDevice): Promise<PluggedDevice>;
  addFs(f: FsDevice): Promise<PluggedDevice>;
  /** Unplugs a hot-plugged device; resolves once the guest has let it go. */
  removeDevice(id: string): Promise<void>;

  pause(): Promise<void>;
  resume(): Promise<void>;
  info(): Promise<HypervisorInfo>;
  /** Snapshot of a paused VM into `dir` (a new, empty directory). */
  snapshot(dir: string): Promise<void>;

  /** Graceful end (the VMM's own shutdown), SIGKILL past `graceMs`; resolves with the exit. */
  stop(o?: { graceMs?: number }): Promise<HypervisorExit>;
  kill(): Promise<HypervisorExit>;
  lastConsoleLines(): string[];
}
