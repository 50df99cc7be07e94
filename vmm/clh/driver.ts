// The cloud-hypervisor driver behind the Hypervisor interface: spawns the VMM (the real
// cloud-hypervisor, or katats-chv where that cannot run) with --api-socket and --event-monitor on a
// pipe, waits for vmm.ping, then speaks only the REST API (client.ts): vm.create at create(),
// vm.boot, hotplug, pause/resume, vm.shutdown + vmm.shutdown to stop. The agent is reached through
// hybrid vsock. The VMM runs in a process group of its own so kill() takes whatever it started
// (katats-chv's QEMU) with it.
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { sleep, TimeoutError } from '../../sys/timeout.js';
import type { Accel, DiskConfig as QemuDisk } from '../config.js';
import type {
  ConnectOptions,
  FsDevice,
  Hypervisor,
  HypervisorCapabilities,
  HypervisorExit,
  HypervisorInfo,
  NetDevice,
  PluggedDevice,
  VmRunState,
} from '../hypervisor.js';
import type { ExitReason } from '../vm.js';
import { bdfToPciPath, ClhClient, type ClhClientOptions } from './client.js';
import { readEvents } from './events.js';
import { AGENT_VSOCK_PORT, dialHybridVsock } from './hybrid-vsock.js';
import type { PciDeviceInfo, VmConfig } from './types.js';

export const CLH_START_TIMEOUT = 'KATATS_CLH_START_TIMEOUT';
export const CLH_READY_TIMEOUT = 'KATATS_CLH_READY_TIMEOUT';
const TAIL_LINES = 40;
const TAIL_BYTES = 64 << 10;

export type ClhFlavour = 'cloud-hypervisor' | 'katats-chv';

export interface ClhLaunch {
  flavour: ClhFlavour;
  /** argv[0..n] that runs the VMM (the binary, or node + katats-chv's entry) */
  command: string[];
  vmId: string;
  config: VmConfig;
  /** directory for the API socket and the VMM's files */
  runDir: string;
  /** how long the VMM may take to answer vmm.ping after it is spawned (ms) */
  startTimeoutMs: number;
  client?: ClhClientOptions;
  /** katats-chv's own options (run dir, accel, QEMU, agent log, cache) */
  chvArgs?: string[];
  /** the VMM's own log (cloud-hypervisor's --log-file; katats-chv's too) */
  logFile?: string;
  log: Logger;
}

function tailLines(file: string | undefined): string[] {
  if (!file) return [];
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const n = Math.min(size, TAIL_BYTES);
      const buf = Buffer.alloc(n);
      fs.readSync(fd, buf, 0, n, size - n);
      return buf.toString('utf8').split('\n').filter(Boolean).slice(-TAIL_LINES);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return [];
  }
}

export class ClhHypervisor extends EventEmitter implements Hypervisor {
  readonly kind = 'clh' as const;
  readonly capabilities: HypervisorCapabilities;
  readonly exited: Promise<HypervisorExit>;
  readonly client: ClhClient;
  readonly apiSocket: string;
  private child: ChildProcess | undefined;
  private readonly t0 = performance.now();
  private stderrTail: string[] = [];
  private ending: ExitReason | undefined;
  private guestShutdown = false;
  private accelSeen: Accel = 'kvm';
  private settleExit!: (x: HypervisorExit) => void;

  private constructor(readonly launch: ClhLaunch) {
    super();
    this.apiSocket = path.join(launch.runDir, 'api.sock');
    this.client = new ClhClient(this.apiSocket, launch.client);
    this.exited = new Promise((r) => (this.settleExit = r));
    const chv = launch.flavour === 'katats-chv';
    this.accelSeen = chv ? 'tcg' : 'kvm';
    this.capabilities = { diskHotplug: true, netHotplug: !chv, fsHotplug: !chv, pause: true, snapshot: !chv };
  }

  /** Spawns the VMM, waits for its API, and creates the VM (not booted). */
  static async create(launch: ClhLaunch): Promise<ClhHypervisor> {
    const hv = new ClhHypervisor(launch);
    await hv.spawn();
    try {
      await hv.client.create(launch.config);
    } catch (e) {
      await hv.kill();
      throw e;
    }
    return hv;
  }

  get id(): string {
    return this.launch.vmId;
  }
  get accel(): Accel {
    return this.accelSeen;
  }
  get pid(): number | undefined {
    return this.child?.pid;
  }
  get vcpuPid(): number | undefined {
    return this.launch.flavour === 'cloud-hypervisor' ? this.child?.pid : undefined;
  }
  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  private elapsed(): number {
    return Math.round(performance.now() - this.t0);
  }

  private async spawn(): Promise<void> {
    const l = this.launch;
    fs.mkdirSync(l.runDir, { recursive: true, mode: 0o700 });
    fs.rmSync(this.apiSocket, { force: true });
    const [bin, ...pre] = l.command;
    if (!bin) throw new Error('cloud-hypervisor: no command to run');
    const args = [...pre, '--api-socket', `path=${this.apiSocket}`, '--event-monitor', 'fd=3', ...(l.logFile ? ['--log-file', l.logFile] : []), ...(l.chvArgs ?? [])];
    const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], detached: true });
    this.child = child;
    const log = l.log.child({ vmm: l.flavour, pid: child.pid });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => (this.stderrTail = [...this.stderrTail, ...d.split('\n').filter(Boolean)].slice(-TAIL_LINES)));
    const events = child.stdio[3] as NodeJS.ReadableStream & import('node:stream').Readable;
    readEvents(
      events,
      (e) => {
        if (e.source === 'vm' && e.event === 'shutdown') this.guestShutdown = true;
        this.emit('event', { source: e.source, event: e.event, atMs: this.elapsed(), ...(e.properties ? { properties: e.properties } : {}) });
      },
      (why) => log.warn({ why }, 'event monitor: dropped what is not an event'),
    );
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    child.once('exit', (code, signal) => {
      const reason: ExitReason = this.ending ?? (this.guestShutdown ? 'shutdown' : 'crashed');
      const exit: HypervisorExit = { code, signal, reason, accel: this.accelSeen, lastConsoleLines: this.lastConsoleLines(), atMs: this.elapsed() };
      fs.rmSync(this.apiSocket, { force: true });
      if (l.config.vsock) fs.rmSync(l.config.vsock.socket, { force: true });
      log.info({ code, signal, reason }, 'VMM exited');
      this.settleExit(exit);
      this.emit('exit', exit);
    });
    // Up when vmm.ping answers; the process dying or failing to start ends the wait at once.
    const deadline = Date.now() + l.startTimeoutMs;
    let last: unknown;
    for (;;) {
      if (!this.running) {
        const err = await Promise.race([spawnError, sleep(50).then(() => undefined)]);
        throw new Error(`${l.flavour} (${bin}) ${err ? `could not start: ${err.message}` : 'exited before serving its API'}${this.stderrTail.length ? `: ${this.stderrTail.slice(-5).join(' | ')}` : ''}`);
      }
      try {
        await this.client.call('vmm.ping', undefined, { timeoutMs: Math.max(200, Math.min(2000, deadline - Date.now())) });
        return;
      } catch (e) {
        last = e;
      }
      if (Date.now() >= deadline) {
        await this.kill();
        throw new TimeoutError(CLH_START_TIMEOUT, `${l.flavour} API on ${this.apiSocket} (last: ${(last as Error)?.message})`, l.startTimeoutMs);
      }
      await sleep(50);
    }
  }

  async boot(): Promise<void> {
    await this.client.boot();
    // katats-chv says which accelerator its QEMU ended up with; the real one always has KVM (or MSHV).
    const ping = await this.client.ping();
    const a = ping.features?.find((f) => f.startsWith('accel='))?.slice('accel='.length);
    if (a === 'kvm' || a === 'tcg') this.accelSeen = a;
  }

  async waitReady(probe: (signal: AbortSignal) => Promise<void>, deadlineMs: number): Promise<number> {
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const t = performance.now();
    try {
      await Promise.race([
        probe(ac.signal),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new TimeoutError(CLH_READY_TIMEOUT, `guest agent of ${this.id} on ${this.launch.flavour}`, deadlineMs)), deadlineMs);
        }),
        this.exited.then((x) => Promise.reject(new Error(`${this.launch.flavour} exited (${x.reason}) before the guest was ready${x.lastConsoleLines.length ? `: ${x.lastConsoleLines.slice(-3).join(' | ')}` : ''}`))),
      ]);
      return Math.round(performance.now() - t);
    } catch (e) {
      ac.abort(e);
      if (this.running) {
        this.ending = 'boot-timeout';
        await this.kill();
      }
      throw e;
    } finally {
      ac.abort();
      if (timer) clearTimeout(timer);
    }
  }

  connectAgent(o: ConnectOptions): Promise<net.Socket> {
    const vs = this.launch.config.vsock;
    if (!vs) return Promise.reject(new Error(`${this.id}: the VM has no vsock device to reach the agent through`));
    return dialHybridVsock(vs.socket, AGENT_VSOCK_PORT, { timeoutMs: o.timeoutMs, ...(o.signal ? { signal: o.signal } : {}) });
  }

  private static pciPath(d: PciDeviceInfo & { pci_path?: string }): string {
    return typeof d.pci_path === 'string' && /^[0-9a-f]{2}(\/[0-9a-f]{2})*$/.test(d.pci_path) ? d.pci_path : bdfToPciPath(d.bdf);
  }

  async addDisk(d: QemuDisk): Promise<PluggedDevice> {
    const r = await this.client.addDisk({ id: d.id, path: d.path, readonly: d.readonly ?? false, ...(d.serial ? { serial: d.serial } : {}), image_type: d.format === 'qcow2' ? 'Qcow2' : 'Raw' });
    if (!r) throw new Error(`vm.add-disk ${d.id}: no device info for a running VM`);
    return { id: r.id, pciPath: ClhHypervisor.pciPath(r) };
  }

  async addNet(n: NetDevice): Promise<PluggedDevice> {
    const cfg = { id: n.id, num_queues: n.tapFds.length * 2, ...(n.mac ? { mac: n.mac } : {}), ...(n.mtu ? { mtu: n.mtu } : {}) };
    const r = await this.client.addNet(cfg, n.tapFds.map((fd) => ({ fd })));
    if (!r) throw new Error(`vm.add-net ${n.id}: no device info for a running VM`);
    return { id: r.id, pciPath: ClhHypervisor.pciPath(r) };
  }

  async addFs(f: FsDevice): Promise<PluggedDevice> {
    const r = await this.client.addFs({ id: f.id, tag: f.tag, socket: f.socket, num_queues: 1, queue_size: 1024 });
    if (!r) throw new Error(`vm.add-fs ${f.id}: no device info for a running VM`);
    return { id: r.id, pciPath: ClhHypervisor.pciPath(r) };
  }

  removeDevice(id: string): Promise<void> {
    return this.client.removeDevice(id);
  }
  pause(): Promise<void> {
    return this.client.pause();
  }
  resume(): Promise<void> {
    return this.client.resume();
  }

  async info(): Promise<HypervisorInfo> {
    const i = await this.client.info();
    const c = i.config;
    const devices = [...(c.disks ?? []), ...(c.fs ?? []), ...(c.net ?? []), ...(c.vsock ? [c.vsock] : [])].map((d) => d.id).filter((x): x is string => !!x);
    const state: VmRunState = i.state === 'BreakPoint' ? 'Paused' : i.state;
    return { state, vcpus: c.cpus?.boot_vcpus ?? 1, memoryMiB: Math.floor((c.memory?.size ?? 0) / (1 << 20)), devices };
  }

  snapshot(dir: string): Promise<void> {
    return this.client.snapshot(`file://${dir}`);
  }

  /** vm.shutdown then vmm.shutdown; the process group is killed past `graceMs` whatever answered. */
  async stop(o: { graceMs?: number } = {}): Promise<HypervisorExit> {
    if (!this.running) return this.exited;
    this.ending ??= 'quit';
    const grace = o.graceMs ?? 10_000;
    const timer = setTimeout(() => this.signalGroup('SIGKILL'), grace);
    timer.unref();
    try {
      await this.client.call('vm.shutdown', undefined, { timeoutMs: grace }).catch(() => {});
      await this.client.call('vmm.shutdown', undefined, { timeoutMs: grace }).catch(() => {});
      return await this.exited;
    } finally {
      clearTimeout(timer);
      // katats-chv's QEMU is its child: nothing of the group may outlive the VMM.
      this.signalGroup('SIGKILL');
    }
  }

  async kill(): Promise<HypervisorExit> {
    if (!this.child) return this.exited;
    this.ending ??= 'killed';
    this.signalGroup('SIGKILL');
    return this.exited;
  }

  private signalGroup(sig: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (!pid) return;
    try {
      process.kill(-pid, sig);
    } catch {
      // the group is gone
    }
  }

  lastConsoleLines(): string[] {
    const c = this.launch.config.serial;
    const lines = tailLines(c?.mode === 'File' ? c.file : undefined);
    return lines.length ? lines : this.stderrTail;
  }
}
