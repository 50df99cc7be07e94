// One container process (a container's init or an exec) under its katats-runner monitor: the
// monitor runs crun, reports the pid and the wait status, relays the terminal and takes signals
// and window sizes; stdio flows through FIFOs the agent reads and writes directly.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from './log.js';
import type { Keeper } from './keeper.js';
import { startMonitor, type Monitor } from './monitor.js';
import { internal, TtrpcError } from './errors.js';
import { lastLogError } from './runtime/crun.js';
import { OutputBuffer, StdinWriter, openOutputFifo } from './stdio.js';

export interface LaunchOptions {
  runner: string;
  /** runner options before the crun argv, e.g. --hide-unified */
  runnerFlags: string[];
  crunArgv: string[];
  ioDir: string;
  pidFile: string;
  consoleSocket: string | undefined;
  /** where a keeper-forked runner connects (a short path, as the console socket's) */
  monitorSocket: string;
  /** forks the runner when alive; else node spawns it */
  keeper: Keeper | undefined;
  crunLog: string;
  /** initial window size for a terminal */
  consoleSize?: { rows: number; cols: number };
}

/** Exit status as Kata reports it: the exit code, or 128 + signal for a process killed by one. */
export function exitCodeFromWaitStatus(raw: number): number {
  const sig = raw & 0x7f;
  if (sig === 0) return (raw >> 8) & 0xff;
  return 128 + sig;
}

/** Stdio FIFO capacity asked of the kernel (capped by /proc/sys/fs/pipe-max-size). */
const PIPE_SIZE = 1 << 20;

type StatusEvent = { kind: 'ready' } | { kind: 'pid'; pid: number } | { kind: 'exit'; raw: number } | { kind: 'error'; text: string } | { kind: 'gone' };

export class ContainerProcess {
  pid = 0;
  exitCode: number | undefined;
  exitedAt: Date | undefined;
  /** WaitProcess has answered for this process at least once */
  waited = false;
  readonly stdout: OutputBuffer;
  readonly stderr: OutputBuffer;
  readonly stdin: StdinWriter;
  readonly exited: Promise<number>;
  private resolveExit!: (code: number) => void;
  private monitor: Monitor | undefined;
  private events: StatusEvent[] = [];
  private eventWaiters: Array<() => void> = [];
  private ioDir: string | undefined;

  constructor(
    readonly containerId: string,
    readonly execId: string,
    readonly tty: boolean,
    readonly log: Logger,
    outputLimit: number,
  ) {
    const label = execId ? `container ${containerId} exec ${execId}` : `container ${containerId}`;
    this.stdout = new OutputBuffer(`${label} stdout`, outputLimit);
    this.stderr = new OutputBuffer(`${label} stderr`, outputLimit);
    this.stdin = new StdinWriter(label);
    this.exited = new Promise((r) => (this.resolveExit = r));
  }

  get label(): string {
    return this.execId ? `exec ${this.execId} of container ${this.containerId}` : `container ${this.containerId}`;
  }

  get running(): boolean {
    return this.pid > 0 && this.exitCode === undefined;
  }

  private push(e: StatusEvent): void {
    if (e.kind === 'exit' && this.exitCode === undefined) {
      this.exitCode = exitCodeFromWaitStatus(e.raw);
      this.exitedAt = new Date();
      this.log.info({ exit_code: this.exitCode, wait_status: e.raw }, 'process exited');
      // Nobody reads its stdin any more: a write waiting on the full FIFO would wait forever.
      this.stdin.abort();
      this.resolveExit(this.exitCode);
    }
    this.events.push(e);
    const w = this.eventWaiters;
    this.eventWaiters = [];
    for (const f of w) f();
  }

  private async next(kinds: StatusEvent['kind'][]): Promise<StatusEvent> {
    for (;;) {
      const i = this.events.findIndex((e) => kinds.includes(e.kind) || e.kind === 'error' || e.kind === 'gone');
      if (i >= 0) return this.events.splice(i, 1)[0]!;
      await new Promise<void>((r) => this.eventWaiters.push(r));
    }
  }

  /** Starts the monitor and crun; resolves once the process exists (crun create/exec succeeded). */
  async launch(o: LaunchOptions): Promise<void> {
    this.ioDir = o.ioDir;
    fs.mkdirSync(o.ioDir, { recursive: true, mode: 0o700 });
    const t0 = performance.now();
    const args = [...o.runnerFlags, '--pipe-size', String(PIPE_SIZE), '--io', o.ioDir, '--pid-file', o.pidFile];
    if (this.tty) args.push('--tty', '--console-socket', o.consoleSocket!);
    args.push('--', ...o.crunArgv);
    const helper = await startMonitor(
      { runner: o.runner, args, socket: o.monitorSocket, errFile: path.join(o.ioDir, 'runner.err'), keeper: o.keeper, log: this.log },
      {
        line: (l) => this.onStatus(l),
        error: (text) => this.push({ kind: 'error', text }),
        // After the last status line, so a final "exit" line is never lost.
        close: ({ code, signal }) => {
          if (this.pid > 0 && this.exitCode === undefined) {
            this.log.warn({ code, sig: signal, stderr: helper.stderr() }, 'runner ended without reporting the exit status');
            this.push({ kind: 'exit', raw: 255 << 8 });
          }
          this.push({ kind: 'gone' });
        },
      },
    );
    this.monitor = helper;
    const tForked = performance.now();
    let tReady = tForked;

    let outFd = -1;
    let errFd = -1;
    let inFd = -1;
    try {
      const ready = await this.next(['ready']);
      if (ready.kind !== 'ready') throw this.launchError(ready, o);
      tReady = performance.now();
      outFd = openOutputFifo(path.join(o.ioDir, 'stdout'));
      errFd = openOutputFifo(path.join(o.ioDir, 'stderr'));
      inFd = StdinWriter.openFifo(path.join(o.ioDir, 'stdin'));
      helper.send('go');
      const started = await this.next(['pid']);
      if (started.kind !== 'pid') throw this.launchError(started, o);
      this.pid = started.pid;
    } catch (e) {
      for (const fd of [outFd, errFd, inFd]) if (fd >= 0) fs.closeSync(fd);
      this.stdout.endNow();
      this.stderr.endNow();
      helper.kill();
      this.cleanupIo();
      throw e;
    }
    this.stdout.attachFifo(outFd);
    if (this.tty) {
      fs.closeSync(errFd);
      this.stderr.endNow();
      if (o.consoleSize && o.consoleSize.rows && o.consoleSize.cols) this.resize(o.consoleSize.rows, o.consoleSize.cols);
    } else {
      this.stderr.attachFifo(errFd);
    }
    this.stdin.attachFd(inFd);
    // Where a start's time goes: starting the runner, the runner until its FIFOs are made, crun.
    const ms = (a: number, b: number) => Math.round(b - a);
    const timing = { runner_start_ms: ms(t0, tForked), runner_ready_ms: ms(tForked, tReady), crun_ms: ms(tReady, performance.now()) };
    this.log.info({ pid: this.pid, tty: this.tty, runner_pid: helper.pid, runner_by: helper.via, ...timing }, 'process started');
  }

  /** The runner's pid and who started it (tests, logs). */
  get runner(): { pid: number | undefined; via: 'keeper' | 'node' } | undefined {
    return this.monitor && { pid: this.monitor.pid, via: this.monitor.via };
  }

  private launchError(e: StatusEvent, o: LaunchOptions): TtrpcError {
    let logged: string | undefined;
    try {
      logged = lastLogError(fs.readFileSync(o.crunLog, 'utf8'));
    } catch {
      /* no log written */
    }
    const detail =
      logged ?? (e.kind === 'error' ? e.text : `runner ended early${this.monitor?.stderr() ? `: ${this.monitor.stderr().trim()}` : ''}`);
    return internal(`${this.label}: ${detail}`);
  }

  private onStatus(line: string): void {
    const [kind, ...rest] = line.split(' ');
    const arg = rest.join(' ');
    switch (kind) {
      case 'ready':
        this.push({ kind: 'ready' });
        break;
      case 'pid':
        this.push({ kind: 'pid', pid: Number(arg) });
        break;
      case 'exit':
        this.push({ kind: 'exit', raw: Number(arg) });
        break;
      case 'error':
        if (this.pid > 0) this.log.warn({ runner: arg }, 'runner reported an error');
        else this.push({ kind: 'error', text: arg });
        break;
      default:
        this.log.debug({ line }, 'unknown runner status line');
    }
  }

  /** Signals this process (race-free: the monitor knows whether it was already reaped). */
  signal(sig: number): void {
    if (this.exitCode !== undefined) return;
    this.monitor?.send(`kill ${sig}`);
  }

  resize(rows: number, cols: number): void {
    this.monitor?.send(`resize ${rows} ${cols}`);
  }

  closeStdin(): Promise<void> {
    return this.stdin.close();
  }

  /** Stops stdio and the monitor (which kills the process if it still runs) and removes the FIFOs. */
  dispose(): void {
    this.stdin.abort();
    this.stdout.close();
    this.stderr.close();
    this.monitor?.end();
    this.cleanupIo();
  }

  private cleanupIo(): void {
    if (this.ioDir) fs.rmSync(this.ioDir, { recursive: true, force: true });
  }
}
