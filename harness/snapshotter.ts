// The tardev snapshotter as its own process (`katats snapshotter serve`), for tests and benchmarks
// that register it in a private containerd as a proxy plugin. It can be killed with SIGKILL and
// started again on the same root and socket, as a node's would after a crash. stop() leaves
// nothing behind: no process, no layer mount (and so no loop device), no directory.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mountsUnder, unmountAll } from '../sys/mount.js';
import { sleep } from '../sys/timeout.js';
import { SnapshotsCallError, SnapshotsClient } from './snapshots.js';

export interface SnapshotterProcessOptions {
  /** The `katats` binary (scripts/build.ts puts it in dist/bin). */
  katats: string;
  /** containerd's gRPC socket (its content store). */
  containerd?: string;
  /** Parent of the snapshotter's dir (default os.tmpdir()); keep it short: the socket path is inside. */
  baseDir?: string;
  logLevel?: string;
}

export class SnapshotterProcess {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stopping = false;
  private stderrTail = '';
  /** How the process ended when nobody asked it to (kill9/stop): a crash, with its stderr's tail. */
  unexpectedExit: string | undefined;
  /** The socket's inode once the process answered on it: a probe tells a replaced socket from the same one. */
  private socketIno: number | undefined;

  private constructor(
    readonly dir: string,
    private readonly o: SnapshotterProcessOptions,
  ) {}

  get root(): string {
    return path.join(this.dir, 'root');
  }
  get address(): string {
    return path.join(this.dir, 'sn.sock');
  }
  get logFile(): string {
    return path.join(this.dir, 'snapshotter.log');
  }
  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  /** A dir and socket path, before containerd (which needs the address) is started. */
  static prepare(o: SnapshotterProcessOptions): SnapshotterProcess {
    const dir = fs.mkdtempSync(path.join(o.baseDir ?? os.tmpdir(), 'katats-sn-'));
    return new SnapshotterProcess(dir, o);
  }

  /** Starts the process and waits until it answers on its socket. */
  async start(timeoutMs = 30_000, containerd = this.o.containerd): Promise<void> {
    const args = ['snapshotter', 'serve', '--root', this.root, '--address', this.address, '--log', this.logFile, '--log-level', this.o.logLevel ?? 'debug'];
    args.push('--containerd', containerd ?? '');
    const proc = spawn(this.o.katats, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    this.stopping = false;
    this.unexpectedExit = undefined;
    proc.stderr!.on('data', (b: Buffer) => {
      if (stderr.length < 8192) stderr += b.toString();
      this.stderrTail = (this.stderrTail + b.toString()).slice(-4096);
    });
    this.proc = proc;
    this.exited = new Promise((r) =>
      proc.once('exit', (code, signal) => {
        if (!this.stopping) this.unexpectedExit = `snapshotter pid ${proc.pid} exited unasked (${code ?? signal}); stderr: ${this.stderrTail.trim() || '(empty)'}; log: ${this.logFile}`;
        r();
      }),
    );
    const client = new SnapshotsClient(this.address, 2_000);
    const deadline = Date.now() + timeoutMs;
    try {
      for (;;) {
        if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`snapshotter exited at start (${proc.exitCode ?? proc.signalCode}): ${stderr}`);
        if (fs.existsSync(this.address)) {
          try {
            await client.stat('katats-harness-probe');
          } catch (e) {
            if (e instanceof SnapshotsCallError && e.code === 5) {
              // NotFound: it answers
              this.socketIno = fs.statSync(this.address).ino;
              return;
            }
          }
        }
        if (Date.now() > deadline) throw new Error(`snapshotter did not answer within ${timeoutMs} ms: ${stderr}`);
        await sleep(100);
      }
    } finally {
      client.close();
    }
  }

  /**
   * One line on how the snapshotter looks from here right now, for a failure between containerd
   * and it: alive or not, its socket (the same inode it answered on at start, or another, or none),
   * a plain connect, and a gRPC call of our own, each with its time.
   */
  async probe(): Promise<string> {
    const parts = [this.unexpectedExit ?? `pid ${this.pid} ${this.proc && this.proc.exitCode === null && this.proc.signalCode === null ? 'running' : 'gone'}`];
    let ino: number | undefined;
    try {
      ino = fs.statSync(this.address).ino;
      parts.push(`socket inode ${ino}${ino === this.socketIno ? ' (the one it answered on at start)' : ` (at start: ${this.socketIno ?? '?'})`}`);
    } catch (e) {
      parts.push(`no socket (${(e as NodeJS.ErrnoException).code})`);
    }
    const t0 = Date.now();
    const connected = await new Promise<string>((resolve) => {
      const s = net.connect(this.address);
      const timer = setTimeout(() => {
        s.destroy();
        resolve('connect: no answer within 5 s');
      }, 5_000);
      s.once('connect', () => {
        clearTimeout(timer);
        s.destroy();
        resolve(`connect ok in ${Date.now() - t0} ms`);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve(`connect: ${e.code ?? e.message}`);
      });
    });
    parts.push(connected);
    const client = new SnapshotsClient(this.address, 5_000);
    const t1 = Date.now();
    try {
      await client.stat('katats-harness-probe');
      parts.push('gRPC stat answered');
    } catch (e) {
      parts.push(e instanceof SnapshotsCallError && e.code === 5 ? `gRPC stat answered in ${Date.now() - t1} ms` : `gRPC stat failed: ${(e as Error).message}`);
    } finally {
      client.close();
    }
    return parts.join('; ');
  }

  /** SIGKILL, as a crash: the socket file and the layer mounts stay. */
  async kill9(): Promise<void> {
    this.stopping = true;
    this.proc?.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after 10 s. */
  async stopProcess(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.stopping = true;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }

  /** Mounts the snapshotter left under its root (layer mounts). */
  leftoverMounts(): string[] {
    return mountsUnder(this.dir);
  }

  /** Stops the process, unmounts what it left mounted, removes its dir (logs copied to keepLogsIn). */
  async stop(o: { keepLogsIn?: string } = {}): Promise<string[]> {
    await this.stopProcess();
    const unmounted = await unmountAll(this.dir);
    if (o.keepLogsIn && fs.existsSync(this.logFile)) fs.copyFileSync(this.logFile, path.join(o.keepLogsIn, 'snapshotter.log'));
    fs.rmSync(this.dir, { recursive: true, force: true });
    return unmounted;
  }
}

/**
 * Waits until containerd reaches the proxy snapshotter `name`. containerd dials its proxy plugins
 * when it starts, before the snapshotter (which needs containerd's address) runs; the failed dial
 * leaves gRPC in reconnect back-off, and until the next attempt a request fails at once with the
 * old "connection refused".
 */
export async function untilContainerdReaches(
  cd: { ctr(args: string[]): Promise<{ code: number | null; stderr: string }> },
  name: string,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await cd.ctr(['snapshots', '--snapshotter', name, 'ls']);
    if (r.code === 0) return;
    if (Date.now() > deadline) throw new Error(`containerd did not reach the snapshotter ${name} within ${timeoutMs} ms: ${r.stderr.trim()}`);
    await sleep(500);
  }
}

/**
 * `ctr images import` into a proxy snapshotter, for a suite's setup. gRPC's UNAVAILABLE is the
 * transient class a client may retry: on a loaded host containerd's connection to a live
 * snapshotter has failed once ("connection refused", "timed out waiting for server handshake")
 * while direct clients were served (cause not found yet). Retried once, said on stderr; with
 * `snapshotter`, a failure says whether that process still runs (a crash is not retried) and how
 * it looks from here at that moment (probe): the evidence the next occurrence should bring.
 */
export async function importIntoSnapshotter(
  cd: { ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<{ code: number | null; stdout: string; stderr: string }> },
  args: string[],
  opts: { namespace?: string; timeoutMs?: number; snapshotter?: SnapshotterProcess } = {},
): Promise<void> {
  const { snapshotter, ...ctrOpts } = opts;
  for (let attempt = 1; ; attempt++) {
    const r = await cd.ctr(['images', 'import', ...args], ctrOpts);
    if (r.code === 0) return;
    const crashed = snapshotter?.unexpectedExit;
    // Looked at at once, while whatever made containerd fail may still hold.
    const seen = snapshotter && !crashed ? await snapshotter.probe() : undefined;
    const msg = `ctr images import ${args.join(' ')}: exit ${r.code}: ${r.stderr.trim().slice(-1000)}${crashed ? `\n${crashed}` : ''}${seen ? `\nthe snapshotter from here: ${seen}` : ''}`;
    if (crashed || attempt >= 2 || !/: unavailable\s*$/.test(r.stderr.trim())) throw new Error(msg);
    console.error(`retrying after gRPC UNAVAILABLE between containerd and the snapshotter: ${msg}`);
    await sleep(2000);
  }
}
