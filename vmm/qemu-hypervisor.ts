// The QEMU driver behind the Hypervisor interface: QemuVm (vm.ts) does the work, this maps the
// interface's verbs onto it and its QMP. QEMU boots as it starts, so create() only validates and
// boot() spawns it.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { validateConfig, type DiskConfig, type VmConfig } from './config.js';
import {
  type ConnectOptions,
  type FsDevice,
  type Hypervisor,
  type HypervisorCapabilities,
  type HypervisorExit,
  type HypervisorInfo,
  type NetDevice,
  type PluggedDevice,
  UnsupportedError,
  type VmRunState,
} from './hypervisor.js';
import type { QmpEvent } from './qmp.js';
import { QemuVm, type StartOptions, VmError } from './vm.js';
import { TimeoutError } from '../sys/timeout.js';

export const AGENT_CONNECT_TIMEOUT = 'KATATS_AGENT_CONNECT_TIMEOUT';

const RUN_STATE: Record<string, VmRunState> = { running: 'Running', paused: 'Paused', prelaunch: 'Created', shutdown: 'Shutdown', 'guest-panicked': 'Shutdown', inmigrate: 'Created', postmigrate: 'Paused', 'finish-migrate': 'Paused', suspended: 'Paused' };

/** Connects a unix socket within `timeoutMs`; the socket comes back connected and flowing. */
export function connectUnix(socketPath: string, o: ConnectOptions, code = AGENT_CONNECT_TIMEOUT): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    const done = (err?: Error) => {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      sock.off('error', done);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve(sock);
    };
    const onAbort = () => done(new Error(`connecting ${socketPath}: aborted`));
    const timer = setTimeout(() => done(new TimeoutError(code, `connecting ${socketPath}`, o.timeoutMs)), o.timeoutMs);
    timer.unref();
    if (o.signal?.aborted) return onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('error', done);
    sock.once('connect', () => done());
  });
}

/**
 * A running QEMU for this config restored from somewhere else (a VM template: shim/factory.ts),
 * or undefined to boot it cold.
 */
export type RestoreHook = (config: VmConfig, opts: StartOptions) => Promise<QemuVm | undefined>;

export class QemuHypervisor extends EventEmitter implements Hypervisor {
  readonly kind = 'qemu' as const;
  readonly capabilities: HypervisorCapabilities = { diskHotplug: true, netHotplug: false, fsHotplug: false, pause: true, snapshot: false };
  readonly exited: Promise<HypervisorExit>;
  private vm: QemuVm | undefined;
  private settleExit!: (x: HypervisorExit) => void;
  private disks = new Set<string>();
  private restoredVm = false;

  private constructor(
    readonly config: VmConfig,
    private readonly opts: StartOptions,
    private readonly restore?: RestoreHook,
  ) {
    super();
    this.exited = new Promise((r) => (this.settleExit = r));
  }

  static create(config: VmConfig, opts: StartOptions = {}, restore?: RestoreHook): QemuHypervisor {
    validateConfig(config);
    return new QemuHypervisor(config, opts, restore);
  }

  get id(): string {
    return this.config.id;
  }

  get accel(): 'kvm' | 'tcg' {
    return this.vm?.accel ?? (this.config.accel === 'kvm' ? 'kvm' : 'tcg');
  }

  get pid(): number | undefined {
    return this.vm?.pid;
  }

  get vcpuPid(): number | undefined {
    return this.vm?.pid;
  }

  get running(): boolean {
    return this.vm?.running ?? false;
  }

  /** The VM came from the restore hook (a template's clone), not a cold boot. */
  get restored(): boolean {
    return this.restoredVm;
  }

  /** The QEMU driver itself, for what only QEMU has (raw QMP, output stats). */
  get qemu(): QemuVm {
    if (!this.vm) throw new VmError('QEMU has not been booted', this.id, this.accel, []);
    return this.vm;
  }

  async boot(): Promise<void> {
    if (this.vm) throw new VmError('QEMU is already booted', this.id, this.accel, []);
    const restored = await this.restore?.(this.config, this.opts);
    const vm = restored ?? (await QemuVm.start(this.config, this.opts));
    this.vm = vm;
    this.restoredVm = restored !== undefined;
    for (const d of this.config.disks ?? []) this.disks.add(d.id);
    vm.on('qmp-event', (ev: QmpEvent) => this.emit('event', { source: 'qmp', event: ev.event, atMs: vm.elapsed(), ...(ev.data ? { properties: ev.data } : {}) }));
    vm.exited
      .then((x) => {
        const exit: HypervisorExit = { code: x.code, signal: x.signal, reason: x.reason, accel: x.accel, lastConsoleLines: x.lastConsoleLines, atMs: x.atMs };
        this.settleExit(exit);
        this.emit('exit', exit);
      })
      .catch((err: unknown) => vm.log.error({ err }, 'announcing the QEMU exit failed'));
  }

  waitReady(probe: (signal: AbortSignal) => Promise<void>, deadlineMs: number): Promise<number> {
    return this.qemu.waitReady(probe, deadlineMs);
  }

  connectAgent(o: ConnectOptions): Promise<net.Socket> {
    return connectUnix(this.config.agentSocket, o);
  }

  async addDisk(d: DiskConfig): Promise<PluggedDevice> {
    await this.qemu.hotplugDisk(d);
    this.disks.add(d.id);
    return { id: d.id, pciPath: await this.qemu.pciPath(d.id) };
  }

  addNet(_n: NetDevice): Promise<PluggedDevice> {
    return Promise.reject(new UnsupportedError('qemu', 'network hotplug'));
  }

  addFs(_f: FsDevice): Promise<PluggedDevice> {
    return Promise.reject(new UnsupportedError('qemu', 'virtio-fs hotplug (give the VM its virtio-fs at boot)'));
  }

  async removeDevice(id: string): Promise<void> {
    if (!this.disks.has(id)) throw new UnsupportedError('qemu', `removing ${id} (only disks can be unplugged)`);
    await this.qemu.unplugDisk(id);
    this.disks.delete(id);
  }

  async pause(): Promise<void> {
    await this.qemu.qmpExecute('stop');
  }

  async resume(): Promise<void> {
    await this.qemu.qmpExecute('cont');
  }

  async info(): Promise<HypervisorInfo> {
    if (!this.vm) return { state: 'Created', vcpus: this.config.vcpus, memoryMiB: this.config.memoryMiB, devices: [] };
    if (!this.vm.running) return { state: 'Shutdown', vcpus: this.config.vcpus, memoryMiB: this.config.memoryMiB, devices: [] };
    const st = await this.vm.queryStatus();
    interface PciDevice { qdev_id?: string; pci_bridge?: { devices?: PciDevice[] } }
    const buses = await this.vm.qmpExecute<{ devices: PciDevice[] }[]>('query-pci');
    const ids: string[] = [];
    const walk = (ds: PciDevice[]) => ds.forEach((d) => (d.qdev_id && ids.push(d.qdev_id), walk(d.pci_bridge?.devices ?? [])));
    buses.forEach((b) => walk(b.devices));
    return { state: RUN_STATE[st.status] ?? 'Running', vcpus: this.config.vcpus, memoryMiB: this.config.memoryMiB, devices: ids };
  }

  snapshot(_dir: string): Promise<void> {
    return Promise.reject(new UnsupportedError('qemu', 'snapshot'));
  }

  async stop(o: { graceMs?: number } = {}): Promise<HypervisorExit> {
    if (!this.vm) return this.neverBooted();
    // The guest has nothing to save: QMP quit, SIGKILL past the grace (armed before QMP is asked).
    await this.vm.quit(o.graceMs).catch(() => this.vm!.kill());
    return this.exited;
  }

  async kill(): Promise<HypervisorExit> {
    if (!this.vm) return this.neverBooted();
    await this.vm.kill();
    return this.exited;
  }

  lastConsoleLines(): string[] {
    return this.vm?.lastConsoleLines() ?? [];
  }

  private neverBooted(): Promise<HypervisorExit> {
    this.settleExit({ code: null, signal: null, reason: 'quit', accel: this.accel, lastConsoleLines: [], atMs: 0 });
    return this.exited;
  }
}
