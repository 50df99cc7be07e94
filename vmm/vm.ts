// QemuVm: spawns and supervises one QEMU process: console and stderr into a per-sandbox log,
// QMP for control and events, exit noticed at once, boot deadline with the last console lines.
// Everything the guest writes (console, agent log port) is metered: files capped and rotated,
// bytes per second to disk and lines per second into our log limited, lines cut at a length.
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { rmSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino, { type Logger } from 'pino';
import { resolveAccel, type KvmProbeResult } from './accel.js';
import { type Accel, type DiskConfig, isValidId, type NetdevConfig, validateConfig, type VmConfig } from './config.js';
import { buildQemuArgs, diskNodeName, type QemuLayout } from './qemu-args.js';
import { QmpClient, type QmpEvent } from './qmp.js';
import { sleep, withTimeout } from '../sys/timeout.js';
import { LineSplitter } from './console-lines.js';
import { DEFAULT_LOG_FILE_LIMITS, type LogFileLimits, RotatingLog } from './rotating-log.js';
import { TokenBucket } from './token-bucket.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_VMM_CACHE_DIR = path.resolve(HERE, '..', '.cache', 'vmm');

export type ExitReason = 'shutdown' | 'reset' | 'panic' | 'quit' | 'killed' | 'crashed' | 'boot-timeout';

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  reason: ExitReason;
  /** the QMP SHUTDOWN event's data, when one came */
  shutdown?: Record<string, unknown>;
  accel: Accel;
  lastConsoleLines: string[];
  /** ms since spawn */
  atMs: number;
}

export class VmError extends Error {
  constructor(
    message: string,
    readonly vmId: string,
    readonly accel: Accel,
    readonly lastConsoleLines: string[],
    readonly exit?: VmExit,
  ) {
    const tail = lastConsoleLines.length ? `\n--- last console lines ---\n${lastConsoleLines.join('\n')}` : '';
    super(`${message} [vm ${vmId}, accel ${accel}]${tail}`);
    this.name = 'VmError';
  }
}

/** How much of what the guest writes the host keeps, and how fast. */
export interface GuestOutputLimits {
  /** the console log (and QEMU's stderr, which a guest can provoke too) */
  console: LogFileLimits;
  /** the agent's log port */
  agentLog: LogFileLimits;
  /** console lines longer than this are cut into pieces (each kept, each a line) */
  maxLineChars: number;
  /** console and QEMU stderr lines per second into our log and to 'console' listeners; the rest is counted */
  linesPerSec: number;
  /** bytes per second read from the agent log port at most; beyond it the port is not read (the guest's writes wait) */
  agentLogReadBytesPerSec: number;
}

export const DEFAULT_GUEST_OUTPUT_LIMITS: GuestOutputLimits = {
  console: DEFAULT_LOG_FILE_LIMITS,
  agentLog: DEFAULT_LOG_FILE_LIMITS,
  maxLineChars: 4096,
  linesPerSec: 200,
  agentLogReadBytesPerSec: 16 << 20,
};

export interface StartOptions {
  logger?: Logger;
  /** vmm cache dir (KVM probe answer); default .cache/vmm */
  cacheDir?: string;
  /** how long the KVM probe may take (ms) */
  kvmProbeTimeoutMs?: number;
  /** how long QEMU may take to offer QMP (ms) */
  qmpTimeoutMs?: number;
  /** how long one QMP command may take (ms; KATATS_QMP_TIMEOUT past it) */
  qmpCommandTimeoutMs?: number;
  /** how long QEMU has to exit after QMP quit before it is SIGKILLed (ms) */
  quitGraceMs?: number;
  /** lines of console kept for error reports */
  consoleTail?: number;
  /** extra argv appended verbatim (experiments) */
  extraArgs?: string[];
  /** firmware for pc/q35 (default qboot); null: QEMU's default (SeaBIOS) */
  firmware?: string | null;
  /** caps on what the guest writes (defaults: DEFAULT_GUEST_OUTPUT_LIMITS) */
  outputLimits?: Partial<GuestOutputLimits>;
  /**
   * argv of a program that prepares what QEMU inherits (the TAP descriptors VmConfig.netdevs
   * name) and then execs the command line appended to it in place, so QEMU keeps its pid.
   */
  launchWrapper?: string[];
}

export interface GuestOutputStats {
  console: { written: number; dropped: number; rotations: number };
  agentLog?: { written: number; dropped: number; rotations: number };
  /** console and stderr lines not logged or emitted because of the line rate */
  linesDropped: number;
  /** characters of an unfinished console line held right now */
  consoleLineHeld: number;
}

export interface BootTimeline {
  spawnAt: number;
  /** ms from spawn */
  qmpReadyMs?: number;
  firstConsoleMs?: number;
  readyMs?: number;
}

export interface ConsoleLine {
  line: string;
  /** ms since spawn */
  t: number;
}

export class QemuVm extends EventEmitter {
  readonly id: string;
  readonly accel: Accel;
  readonly layout: QemuLayout;
  readonly argv: string[];
  readonly consoleLogPath: string;
  readonly log: Logger;
  readonly timeline: BootTimeline;
  readonly kvmProbe: KvmProbeResult | undefined;
  /** resolves once QEMU has exited, whatever the cause */
  readonly exited: Promise<VmExit>;

  private child: ChildProcess;
  private qmp: QmpClient | undefined;
  private tail: string[] = [];
  private tailMax: number;
  private readonly limits: GuestOutputLimits;
  private readonly consoleLog: RotatingLog;
  private readonly consoleLines: LineSplitter;
  private readonly lineGate: TokenBucket;
  private linesDropped = 0;
  private linesDroppedReported = 0;
  private lineReportTimer: NodeJS.Timeout | undefined;
  private agentLog: RotatingLog | undefined;
  private agentLogSock: net.Socket | undefined;
  private killedByUs: ExitReason | undefined;
  private shutdownEvent: Record<string, unknown> | undefined;
  private panicked = false;
  private exitInfo: VmExit | undefined;
  private usedBuses = new Map<string, string>();
  /** NICs added at run time (a clone's): each holds a hotplug slot for the VM's life. */
  nicsHotplugged = 0;
  private quitGraceMs = 5000;

  private constructor(
    readonly config: VmConfig,
    args: {
      accel: Accel;
      layout: QemuLayout;
      argv: string[];
      log: Logger;
      probe?: KvmProbeResult;
      tailMax: number;
      limits: GuestOutputLimits;
      wrapper?: string[];
    },
  ) {
    super();
    this.id = config.id;
    this.accel = args.accel;
    this.layout = args.layout;
    this.argv = args.argv;
    this.log = args.log;
    this.kvmProbe = args.probe;
    this.tailMax = args.tailMax;
    this.limits = args.limits;
    this.consoleLogPath = config.consoleLogFile ?? path.join(config.runDir, 'console.log');
    this.consoleLog = new RotatingLog(this.consoleLogPath, this.limits.console, this.log, 'guest console');
    this.consoleLines = new LineSplitter(this.limits.maxLineChars, (l) => this.emitLine(l));
    this.lineGate = new TokenBucket(this.limits.linesPerSec, this.limits.linesPerSec);
    this.timeline = { spawnAt: Date.now() };
    const bin = config.qemuBinary ?? 'qemu-system-x86_64';
    // QEMU's own files (QMP and agent sockets, the agent log) are born private: the child inherits
    // the umask at spawn. The guest's files are not affected: 9p sets the modes the guest asks for
    // (none) or its own 0600/0700 (mapped-xattr) explicitly. Without CAP_MKNOD in its bounding set
    // (setpriv execs QEMU in place: same pid), a guest cannot make a device node on the host
    // through 9p; nothing else QEMU does needs it.
    const umask = process.umask(0o077);
    try {
      const cmd = [...(args.wrapper ?? []), 'setpriv', '--bounding-set', '-mknod', '--', bin, ...this.argv];
      this.child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    } finally {
      process.umask(umask);
    }
    this.exited = new Promise<VmExit>((resolve) => {
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitInfo) return; // 'error' and 'exit' can both report one failed spawn
        this.flushConsole();
        const reason: ExitReason =
          this.killedByUs ??
          (this.panicked
            ? 'panic'
            : this.shutdownEvent
              ? String(this.shutdownEvent.reason ?? '').includes('reset')
                ? this.tail.some((l) => /Kernel panic/.test(l))
                  ? 'panic'
                  : 'reset'
                : 'shutdown'
              : 'crashed');
        this.exitInfo = {
          code,
          signal,
          reason,
          ...(this.shutdownEvent ? { shutdown: this.shutdownEvent } : {}),
          accel: this.accel,
          lastConsoleLines: [...this.tail],
          atMs: this.elapsed(),
        };
        const lvl = reason === 'shutdown' || reason === 'killed' || reason === 'quit' ? 'info' : 'warn';
        this.log[lvl]({ code, signal, reason, atMs: this.exitInfo.atMs }, 'qemu exited');
        this.qmp?.close();
        this.closeLogs();
        this.cleanupSockets();
        this.emit('exit', this.exitInfo);
        resolve(this.exitInfo);
      };
      this.child.once('exit', onExit);
      this.child.once('error', (e) => {
        this.log.error({ err: e.message }, 'cannot run qemu');
        this.consoleLog.note(`[vmm] cannot run ${bin}: ${e.message}`);
        if (this.child.exitCode === null) onExit(null, null);
      });
    });
    this.child.stdout!.on('data', (d: Buffer) => this.onConsole(d));
    // QEMU's stderr (rare, but a guest can provoke device warnings by the thousand): same budget.
    const stderrLines = new LineSplitter(this.limits.maxLineChars, (l) => {
      if (!l) return;
      this.pushTail(`[qemu] ${l}`);
      if (this.passLine()) this.log.warn({ stderr: l }, 'qemu stderr');
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.consoleLog.write(Buffer.from(d.toString('latin1').replace(/^(?=.)/gm, '[qemu] '), 'latin1'));
      stderrLines.push(d);
    });
  }

  /**
   * Resolves the accelerator (KVM only when the probe proved it), spawns QEMU and connects QMP.
   * Rejects (with the console tail) when QEMU exits or QMP does not come up in time.
   */
  static async start(config: VmConfig, opts: StartOptions = {}): Promise<QemuVm> {
    validateConfig(config);
    const base = opts.logger ?? pino({ level: process.env.KATATS_LOG_LEVEL ?? 'info' }, pino.destination(2));
    const cacheDir = opts.cacheDir ?? DEFAULT_VMM_CACHE_DIR;
    const { accel, probe } = await resolveAccel(config.accel, {
      cacheDir,
      timeoutMs: opts.kvmProbeTimeoutMs,
      kernel: config.kernel,
      qemuBinary: config.qemuBinary,
    }).catch((e: Error) => {
      base.child({ sandbox: config.id, accel: config.accel }).error({ err: e.message }, 'accelerator unavailable');
      throw e;
    });
    await mkdir(config.runDir, { recursive: true, mode: 0o700 });
    const built = buildQemuArgs(config, accel, { firmware: opts.firmware });
    const argv = [...built.argv, ...(opts.extraArgs ?? [])];
    const log = base.child({ sandbox: config.id, accel, machine: built.layout.machine });
    if (probe) log.info({ kvmUsable: probe.usable, reason: probe.reason, cached: (probe as { cached?: boolean }).cached }, 'kvm probe');
    await rm(built.layout.qmpSocket, { force: true });
    await rm(config.agentSocket, { force: true });
    if (built.layout.agentLogSocket) await rm(built.layout.agentLogSocket, { force: true });
    log.info({ vcpus: config.vcpus, memoryMiB: config.memoryMiB, cmdline: built.layout.cmdline }, 'starting qemu');
    log.debug({ argv }, 'qemu argv');
    const limits: GuestOutputLimits = { ...DEFAULT_GUEST_OUTPUT_LIMITS, ...opts.outputLimits };
    const wrapper = opts.launchWrapper ? { wrapper: opts.launchWrapper } : {};
    const vm = new QemuVm(config, { accel, layout: built.layout, argv, log, probe, tailMax: opts.consoleTail ?? 40, limits, ...wrapper });
    if (opts.quitGraceMs) vm.quitGraceMs = opts.quitGraceMs;
    const abort = new AbortController();
    const abortOnExit = () => abort.abort(new Error('qemu exited'));
    vm.exited.then(abortOnExit, abortOnExit);
    try {
      vm.qmp = await QmpClient.connect(built.layout.qmpSocket, {
        timeoutMs: opts.qmpTimeoutMs ?? 10_000,
        abort: abort.signal,
        ...(opts.qmpCommandTimeoutMs ? { commandTimeoutMs: opts.qmpCommandTimeoutMs } : {}),
      });
    } catch (e) {
      if (!vm.exitInfo) await vm.kill('crashed');
      const exit = await vm.exited;
      throw new VmError(`QEMU did not offer QMP: ${(e as Error).message}; exit ${exit.signal ?? exit.code}`, vm.id, accel, exit.lastConsoleLines, exit);
    }
    vm.timeline.qmpReadyMs = vm.elapsed();
    vm.qmp.on('event', (ev: QmpEvent) => vm.onEvent(ev));
    if (built.layout.agentLogSocket && config.agentLogFile) {
      try {
        await vm.attachAgentLog(built.layout.agentLogSocket, config.agentLogFile);
      } catch (e) {
        const exit = await vm.kill('crashed');
        throw new VmError(`cannot read the agent log port: ${(e as Error).message}`, vm.id, accel, exit.lastConsoleLines, exit);
      }
    }
    log.info({ qmpReadyMs: vm.timeline.qmpReadyMs }, 'qmp ready');
    return vm;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** ms since spawn */
  elapsed(): number {
    return Date.now() - this.timeline.spawnAt;
  }

  lastConsoleLines(): string[] {
    return [...this.tail];
  }

  /** What the guest's output cost so far, and what was dropped. */
  outputStats(): GuestOutputStats {
    return {
      console: { ...this.consoleLog.stats },
      ...(this.agentLog ? { agentLog: { ...this.agentLog.stats } } : {}),
      linesDropped: this.linesDropped,
      consoleLineHeld: this.consoleLines.held,
    };
  }

  /** Whether one more line may go to our log and listeners; drops are said once per interval. */
  private passLine(): boolean {
    if (this.lineGate.allow()) return true;
    this.linesDropped++;
    if (!this.lineReportTimer) {
      this.lineReportTimer = setTimeout(() => {
        this.lineReportTimer = undefined;
        const n = this.linesDropped - this.linesDroppedReported;
        this.linesDroppedReported = this.linesDropped;
        this.log.warn({ droppedLines: n, linesPerSec: this.limits.linesPerSec }, 'guest console over its line rate: lines not logged (all are in the console log, within its byte rate)');
      }, this.limits.console.reportIntervalMs);
      this.lineReportTimer.unref();
    }
    return false;
  }

  private closeLogs(): void {
    if (this.lineReportTimer) clearTimeout(this.lineReportTimer);
    this.agentLogSock?.destroy();
    for (const l of [this.consoleLog, this.agentLog]) {
      l?.close().catch((err: unknown) => this.log.error({ err, file: l.file }, 'closing a guest log failed'));
    }
  }

  /**
   * The agent's log port is a socket QEMU serves; reading it here (rather than letting QEMU write
   * a file) is what lets its size and rate be capped. Past agentLogReadBytesPerSec the socket is
   * not read for the rest of the second, which makes the guest's writes wait in the guest.
   */
  private async attachAgentLog(socketPath: string, file: string): Promise<void> {
    const sink = new RotatingLog(file, this.limits.agentLog, this.log, 'agent log');
    this.agentLog = sink;
    let sock: net.Socket | undefined;
    for (let i = 0; !sock; i++) {
      try {
        sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath, () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
      } catch (e) {
        // QEMU made its chardevs before QMP answered; this covers a slow filesystem only.
        if (i >= 50 || !this.running) throw new Error(`agent log socket ${socketPath}: ${(e as Error).message}`);
        await sleep(20);
      }
    }
    this.agentLogSock = sock;
    const ceiling = this.limits.agentLogReadBytesPerSec;
    let windowStart = Date.now();
    let windowBytes = 0;
    sock.on('data', (d: Buffer) => {
      sink.write(d);
      const now = Date.now();
      if (now - windowStart >= 1000) {
        windowStart = now;
        windowBytes = 0;
      }
      windowBytes += d.length;
      if (windowBytes > ceiling) {
        sock.pause();
        setTimeout(() => sock.resume(), windowStart + 1000 - now).unref();
      }
    });
    sock.on('error', (err) => this.log.debug({ err }, 'agent log socket error'));
  }

  private pushTail(l: string): void {
    this.tail.push(l);
    if (this.tail.length > this.tailMax) this.tail.shift();
  }

  private onConsole(d: Buffer): void {
    this.consoleLog.write(d);
    if (this.timeline.firstConsoleMs === undefined) this.timeline.firstConsoleMs = this.elapsed();
    this.consoleLines.push(d);
  }

  private flushConsole(): void {
    this.consoleLines.flush();
  }

  private emitLine(raw: string): void {
    // Strip terminal control sequences firmware likes to print.
    const line = raw.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc|\r/g, '');
    if (!line.trim()) return;
    this.pushTail(line);
    if (!this.passLine()) return;
    this.log.debug({ console: line }, 'guest console');
    const ev: ConsoleLine = { line, t: this.elapsed() };
    this.emit('console', ev);
  }

  private onEvent(ev: QmpEvent): void {
    this.emit('qmp-event', ev);
    switch (ev.event) {
      case 'SHUTDOWN':
        this.shutdownEvent = ev.data ?? {};
        this.log.info({ data: ev.data }, 'guest shutdown');
        break;
      case 'GUEST_PANICKED':
        this.panicked = true;
        this.log.error({ data: ev.data, lastConsoleLines: this.tail.slice(-10) }, 'guest panicked');
        break;
      case 'DEVICE_DELETED':
        this.log.debug({ data: ev.data }, 'device deleted');
        break;
      default:
        this.log.debug({ event: ev.event, data: ev.data }, 'qmp event');
    }
  }

  /** QEMU leaves its listening sockets behind; they go before anyone hears of the exit. */
  private cleanupSockets(): void {
    for (const p of [this.layout.qmpSocket, this.config.agentSocket, this.layout.agentLogSocket]) {
      if (!p) continue;
      try {
        rmSync(p, { force: true });
      } catch {
        /* already gone */
      }
    }
  }

  private requireQmp(): QmpClient {
    if (!this.qmp || this.qmp.closed || !this.running) {
      throw new VmError('QEMU is not running', this.id, this.accel, this.tail, this.exitInfo);
    }
    return this.qmp;
  }

  /** Raw QMP access for callers that need a command this class does not wrap. */
  qmpExecute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.requireQmp().execute<T>(command, args);
  }

  async queryStatus(): Promise<{ status: string; running: boolean }> {
    return this.requireQmp().execute('query-status');
  }

  /**
   * Waits until `probe` resolves (e.g. the agent answered on its channel). If QEMU exits first
   * the VmError carries the exit; past the deadline QEMU is killed and the error says so, with
   * the last console lines either way.
   */
  async waitReady(probe: (signal: AbortSignal) => Promise<void>, deadlineMs: number): Promise<number> {
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    try {
      const probing = probe(ac.signal).then(
        () => 'ready' as const,
        (e: unknown) => ({ failed: e instanceof Error ? e : new Error(String(e)) }),
      );
      const outcome = await Promise.race([
        probing,
        this.exited.then(() => 'exited' as const),
        new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), deadlineMs))),
      ]);
      if (outcome === 'ready') {
        this.timeline.readyMs = this.elapsed();
        this.log.info({ readyMs: this.timeline.readyMs, timeline: this.timeline }, 'guest ready');
        return this.timeline.readyMs;
      }
      if (typeof outcome === 'object') {
        if (!this.running) {
          const exit = await this.exited;
          throw new VmError(`QEMU exited before the guest was ready (${exit.reason}, ${exit.signal ?? `code ${exit.code}`})`, this.id, this.accel, exit.lastConsoleLines, exit);
        }
        throw new VmError(`readiness probe failed: ${outcome.failed.message}`, this.id, this.accel, this.lastConsoleLines());
      }
      if (outcome === 'exited') {
        const exit = await this.exited;
        throw new VmError(`QEMU exited before the guest was ready (${exit.reason}, ${exit.signal ?? `code ${exit.code}`})`, this.id, this.accel, exit.lastConsoleLines, exit);
      }
      this.log.error({ deadlineMs, lastConsoleLines: this.tail.slice(-10) }, 'boot deadline passed; killing qemu');
      const exit = await this.kill('boot-timeout');
      throw new VmError(`guest not ready within ${deadlineMs} ms; QEMU killed`, this.id, this.accel, exit.lastConsoleLines, exit);
    } finally {
      ac.abort();
      if (timer) clearTimeout(timer);
    }
  }

  private freeHotplugBus(): string | undefined {
    return this.layout.hotplugBuses.find((b) => b === 'pci.0' || ![...this.usedBuses.values()].includes(b));
  }

  /** Adds a disk at run time: blockdev-add + device_add on a free hotplug slot. */
  async hotplugDisk(d: DiskConfig): Promise<void> {
    if (!isValidId(d.id)) throw new Error(`disk id ${JSON.stringify(d.id)} is not a valid QEMU id`);
    const qmp = this.requireQmp();
    const bus = this.freeHotplugBus();
    if (!bus) throw new VmError(`no free hotplug slot for disk ${d.id} (machine ${this.layout.machine})`, this.id, this.accel, []);
    const node = diskNodeName(d.id);
    const ro = d.readonly ?? false;
    await qmp.execute('blockdev-add', {
      driver: d.format ?? 'raw',
      'node-name': node,
      'read-only': ro,
      file: { driver: 'file', filename: d.path, 'read-only': ro },
    });
    try {
      await qmp.execute('device_add', {
        driver: 'virtio-blk-pci',
        id: d.id,
        drive: node,
        bus,
        ...(d.serial ? { serial: d.serial } : {}),
      });
    } catch (e) {
      await qmp.execute('blockdev-del', { 'node-name': node }).catch(() => {});
      throw e;
    }
    this.usedBuses.set(d.id, bus);
    this.log.info({ disk: d.id, path: d.path, bus, readonly: ro }, 'disk hotplugged');
  }

  /**
   * Adds a NIC at run time on the TAP descriptor QEMU inherited (`fd` is a number, which QEMU takes
   * as an inherited descriptor rather than a getfd name): netdev_add + device_add on a free hotplug
   * slot. A template's clone gets its pod's NICs this way, as Kata's factory VMs do.
   */
  async hotplugNic(n: NetdevConfig): Promise<void> {
    if (!isValidId(n.id)) throw new Error(`netdev id ${JSON.stringify(n.id)} is not a valid QEMU id`);
    if (!Number.isInteger(n.fd) || n.fd < 3) throw new Error(`netdev ${n.id}: fd ${n.fd} is not an inherited descriptor`);
    const qmp = this.requireQmp();
    const bus = this.freeHotplugBus();
    if (!bus) throw new VmError(`no free hotplug slot for NIC ${n.id} (machine ${this.layout.machine})`, this.id, this.accel, []);
    await qmp.execute('netdev_add', { type: 'tap', id: n.id, fd: String(n.fd) });
    const nic = `${n.id}-nic`;
    try {
      await qmp.execute('device_add', { driver: 'virtio-net-pci', netdev: n.id, id: nic, mac: n.mac, ...(n.mtu ? { host_mtu: n.mtu } : {}), bus });
    } catch (e) {
      await qmp.execute('netdev_del', { id: n.id }).catch(() => {});
      throw e;
    }
    this.usedBuses.set(nic, bus);
    this.nicsHotplugged++;
    this.log.info({ nic, mac: n.mac, bus }, 'NIC hotplugged');
  }

  /**
   * The PCI path of a device ("02/00": the slot on each bus from the root down), which is how the
   * agent finds a hot-plugged disk in the guest (Kata's grpc.Device.id for blk devices).
   */
  async pciPath(deviceId: string): Promise<string> {
    interface PciDevice { slot: number; qdev_id?: string; pci_bridge?: { devices?: PciDevice[] } }
    const buses = await this.requireQmp().execute<{ bus: number; devices: PciDevice[] }[]>('query-pci');
    const find = (devices: PciDevice[], above: number[]): number[] | undefined => {
      for (const d of devices) {
        if (d.qdev_id === deviceId) return [...above, d.slot];
        const below = d.pci_bridge?.devices ? find(d.pci_bridge.devices, [...above, d.slot]) : undefined;
        if (below) return below;
      }
      return undefined;
    };
    const slots = find(buses.find((b) => b.bus === 0)?.devices ?? [], []);
    if (!slots) throw new VmError(`no PCI device with id ${deviceId}`, this.id, this.accel, []);
    return slots.map((n) => n.toString(16).padStart(2, '0')).join('/');
  }

  /** Removes a hotplugged disk: device_del, wait for DEVICE_DELETED (guest released it), blockdev-del. */
  async unplugDisk(id: string, timeoutMs = 30_000): Promise<void> {
    const qmp = this.requireQmp();
    const deleted = qmp.waitEvent('DEVICE_DELETED', (e) => e.data?.device === id, timeoutMs);
    deleted.catch(() => {});
    await qmp.execute('device_del', { id });
    await deleted;
    await qmp.execute('blockdev-del', { 'node-name': diskNodeName(id) });
    this.usedBuses.delete(id);
    this.log.info({ disk: id }, 'disk unplugged');
  }

  /** ACPI power button; resolves when QEMU has exited (or rejects after timeoutMs, QEMU left running). */
  async powerdown(timeoutMs = 30_000): Promise<VmExit> {
    await this.requireQmp().execute('system_powerdown');
    return withTimeout(this.exited, timeoutMs, { code: 'KATATS_VM_POWERDOWN_TIMEOUT', what: `guest ${this.id} powering off` });
  }

  /**
   * QMP quit: QEMU exits at once. The SIGKILL fallback is armed before QMP is asked, so a QEMU
   * that no longer answers QMP (stopped, wedged) is killed after `graceMs` all the same.
   */
  async quit(graceMs = this.quitGraceMs): Promise<VmExit> {
    if (!this.running) return this.exited;
    this.killedByUs ??= 'quit';
    const t = setTimeout(() => {
      this.log.warn({ graceMs }, 'qemu did not exit after quit; killing it');
      this.child.kill('SIGKILL');
    }, graceMs);
    try {
      if (this.qmp && !this.qmp.closed) {
        this.qmp
          .execute('quit', undefined, { timeoutMs: graceMs })
          // QEMU may close the socket before it answers; its exit is what counts.
          .catch((err: unknown) => this.log.debug({ err }, 'qmp quit unanswered'));
      } else {
        this.child.kill('SIGKILL');
      }
      return await this.exited;
    } finally {
      clearTimeout(t);
    }
  }

  /** SIGKILL; resolves with the exit. */
  async kill(reason: ExitReason = 'killed'): Promise<VmExit> {
    if (this.running) {
      this.killedByUs ??= reason;
      this.child.kill('SIGKILL');
    }
    return this.exited;
  }
}
