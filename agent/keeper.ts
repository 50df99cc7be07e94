// The runner's keeper mode: one helper process started with the agent, kept for its whole life,
// that sets the clock and feeds the kernel's entropy pool on request. A VM restored from a
// template needs both the moment it runs (its clock is the template's, its CRNG state every other
// clone's too), and a fork+exec per request costs ~0.5 s under TCG; the keeper was forked before
// the template was saved, so a clone spawns nothing. It also makes the agent's mounts (one mount(2)
// each instead of a mount(8) process) and the pod's shared namespaces (forked from the keeper, a
// small process, rather than from node), configures the pod's network through rtnetlink (where
// busybox's ip was a process per change), and forks the runner of each container process (run
// mode, reaped by the keeper, which reports each end): what a pod's start needs.
import { type ChildProcess, spawn } from 'node:child_process';
import type { Logger } from './log.js';
import { withTimeout } from '../sys/timeout.js';
import { MOUNT_TIMEOUT_MS } from '../sys/mount.js';

export const KEEPER_TIMEOUT = 'KATATS_KEEPER_TIMEOUT';
const KEEPER_TIMEOUT_MS = 10_000;
/** An answer is one short line; more than this unanswered is a broken keeper. */
const MAX_ANSWER_BYTES = 4096;
/** The longest request line the keeper reads (KEEPER_LINE in katats-runner.c, less its newline and NUL). */
const MAX_REQUEST_BYTES = 16384;
/**
 * A mount request's bound, below the line's: mount(2) takes one page of options, and a longer
 * overlay option list is mount(8)'s to split or refuse, as before the keeper mounted.
 */
const MAX_MOUNT_REQUEST_BYTES = 2198;
/** What the keeper knows of a runner's end: its wait status, or undefined when the keeper died first. */
export interface RunnerEnd {
  waitStatus: number | undefined;
}
/** What RNDADDENTROPY takes from one request (the runner's bound). */
export const MAX_SEED_BYTES = 512;

export class Keeper {
  private queue: Promise<unknown> = Promise.resolve();
  private pending: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  private buf = '';
  private dead: Error | undefined;
  /** runners' ends by pid, made by whichever comes first: the keeper's report or a waiter */
  private readonly ends = new Map<number, { done: Promise<RunnerEnd>; resolve: (e: RunnerEnd) => void }>();

  private constructor(
    private readonly child: ChildProcess,
    private readonly log: Logger,
  ) {
    child.stdout!.setEncoding('latin1');
    child.stdout!.on('data', (d: string) => this.onData(d));
    child.stderr!.on('data', (d: Buffer) => log.warn({ stderr: d.toString('utf8', 0, 1024) }, 'keeper stderr'));
    const gone = (why: string) => {
      this.dead ??= new Error(`keeper ${why}`);
      this.pending?.reject(this.dead);
      this.pending = undefined;
      // Its runners live on (reparented) and still talk to the agent; only their wait status is lost.
      for (const [pid, e] of this.ends) {
        e.resolve({ waitStatus: undefined });
        this.ends.delete(pid);
      }
    };
    child.once('exit', (code, signal) => {
      gone(`exited (${signal ?? code})`);
      log.error({ code, signal }, 'keeper exited');
    });
    child.once('error', (e) => gone(`failed: ${e.message}`));
    child.stdin!.on('error', (e) => gone(`stdin: ${e.message}`));
  }

  static start(runner: string, log: Logger): Keeper {
    return new Keeper(spawn(runner, ['keeper'], { stdio: ['pipe', 'pipe', 'pipe'] }), log);
  }

  get alive(): boolean {
    return !this.dead;
  }

  /** The keeper's pid: its runners' parent. */
  get pid(): number | undefined {
    return this.child.pid;
  }

  private onData(d: string): void {
    this.buf += d;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      const ended = /^exited (\d+) (-?\d+)$/.exec(line);
      if (ended) {
        this.endOf(Number(ended[1])).resolve({ waitStatus: Number(ended[2]) });
        continue;
      }
      const p = this.pending;
      this.pending = undefined;
      p?.resolve(line);
    }
    if (this.buf.length > MAX_ANSWER_BYTES) {
      this.dead = new Error('keeper answered more than a line');
      this.child.kill('SIGKILL');
    }
  }

  private endOf(pid: number): { done: Promise<RunnerEnd>; resolve: (e: RunnerEnd) => void } {
    let e = this.ends.get(pid);
    if (!e) {
      let resolve!: (x: RunnerEnd) => void;
      const done = new Promise<RunnerEnd>((r) => (resolve = r));
      e = { done, resolve };
      // A keeper that died has reported every end it will: this one is not known.
      if (this.dead) resolve({ waitStatus: undefined });
      else this.ends.set(pid, e);
    }
    return e;
  }

  /** One request, answered in order; resolves with what follows "ok", rejects with the keeper's error text. */
  private request(line: string, timeoutMs = KEEPER_TIMEOUT_MS, code = KEEPER_TIMEOUT, what = line.split(' ')[0]!): Promise<string> {
    const run = async (): Promise<string> => {
      if (this.dead) throw this.dead;
      const answer = new Promise<string>((resolve, reject) => (this.pending = { resolve, reject }));
      this.child.stdin!.write(`${line}\n`);
      const a = await withTimeout(answer, timeoutMs, {
        code,
        what: `keeper answering ${what}`,
        onTimeout: () => {
          this.dead = new Error('keeper did not answer in time');
          this.child.kill('SIGKILL');
        },
      });
      if (a !== 'ok' && !a.startsWith('ok ')) throw new Error(a.replace(/^error /, ''));
      return a.slice(3);
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /**
   * Operations on a network through rtnetlink (agent/network.ts's KeeperNet), made in order until
   * the first that fails: each a list of plain words (names, addresses, numbers), in the namespace
   * at `netns` (the keeper's own when undefined). As few requests as the line's bound allows.
   * Resolves with what the listings found; rejects with the failed operation and the kernel's
   * message (the operations before it stay done).
   */
  async net(netns: string | undefined, ops: string[][], timeoutMs: number, code: string): Promise<string> {
    const bad = ops.find((op) => !op.length || op.some((w) => !/^[\w.:/-]{1,64}$/.test(w)));
    if (bad) throw new Error(`net: ${JSON.stringify(bad.join(' '))}: an operation the keeper cannot carry`);
    const head = `net ${netns ? Buffer.from(netns).toString('hex') : '-'}`;
    const lines: string[] = [];
    for (const op of ops.map((o) => o.join(' '))) {
      const last = lines.length ? lines[lines.length - 1]! : undefined;
      if (last !== undefined && last.length + 3 + op.length <= MAX_REQUEST_BYTES) lines[lines.length - 1] = `${last} ; ${op}`;
      else if (head.length + 1 + op.length <= MAX_REQUEST_BYTES) lines.push(`${head} ${op}`);
      else throw new Error(`net: ${op.split(' ')[0]}: request of more than ${MAX_REQUEST_BYTES} bytes, more than the keeper reads`);
    }
    let found = '';
    for (const line of lines) found += ` ${(await this.request(line, timeoutMs, code, `net ${[...new Set(ops.map((o) => o[0]))].join(',')}`)).trim()}`;
    return found.trim();
  }

  async setTime(sec: number, usec: number): Promise<void> {
    await this.request(`time ${sec} ${usec}`);
  }

  async seed(data: Uint8Array): Promise<void> {
    if (!data.length || data.length > MAX_SEED_BYTES) throw new Error(`seed wants 1..${MAX_SEED_BYTES} bytes, got ${data.length}`);
    await this.request(`seed ${Buffer.from(data).toString('hex')}`);
  }

  /**
   * One mount(2) (sys/mount.ts MountSyscall); false, for mount(8) to do it, when the keeper is gone
   * or the request does not fit its line (a long overlay option list).
   */
  async mount(source: string, target: string, fstype: string | undefined, flags: number, data: string): Promise<boolean> {
    const hex = (s: string | undefined) => (s ? Buffer.from(s).toString('hex') : '-');
    const line = `mount ${hex(source)} ${hex(target)} ${hex(fstype)} ${flags} ${hex(data)}`;
    if (this.dead || line.length > MAX_MOUNT_REQUEST_BYTES) return false;
    // As long as mount(8) would have had: a layer's first read through dm-verity can be slow.
    await this.request(line, MOUNT_TIMEOUT_MS);
    return true;
  }

  /** The runner's ns mode (the pod's ipc/uts namespaces bound in `dir`) forked by the keeper; false when the keeper is gone. */
  async sharedNamespaces(dir: string, hostname: string, timeoutMs: number): Promise<boolean> {
    const line = `ns ${Buffer.from(dir).toString('hex')} ${hostname ? Buffer.from(hostname).toString('hex') : '-'}`;
    if (this.dead || line.length > MAX_REQUEST_BYTES) return false;
    await this.request(line, timeoutMs);
    return true;
  }

  /**
   * The runner's run mode forked by the keeper (runner.ts): `args` after `run`, its fds 3 and 4 one
   * connection to `socket`, its stderr into `errFile`. Resolves with its pid and its end as the
   * keeper reports it; rejects when the keeper cannot take the request (dead, an argument it cannot
   * carry, too long a line) or refuses it.
   */
  run(socket: string, errFile: string, args: string[]): Promise<{ pid: number; ended: Promise<RunnerEnd> }> {
    return this.fork('run', [socket, errFile, ...args]);
  }

  /**
   * The runner's exec mode (a one-shot command, crun's) forked by the keeper, its stdout and stderr
   * into the files; as run() otherwise. The end's wait status is the command's own.
   */
  exec(outFile: string, errFile: string, args: string[]): Promise<{ pid: number; ended: Promise<RunnerEnd> }> {
    return this.fork('exec', [outFile, errFile, ...args]);
  }

  private async fork(verb: 'run' | 'exec', words: string[]): Promise<{ pid: number; ended: Promise<RunnerEnd> }> {
    if (words.some((w) => !w || w.includes('\0'))) throw new Error(`${verb}: an empty argument or one with a NUL`);
    const line = `${verb} ${words.map((w) => Buffer.from(w).toString('hex')).join(' ')}`;
    if (line.length > MAX_REQUEST_BYTES) throw new Error(`${verb}: request of ${line.length} bytes, more than the keeper reads`);
    const pid = Number(await this.request(line));
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`${verb}: keeper answered no pid`);
    // The keeper forked it and answers first, so its end, when reported, comes after: the entry
    // made here (or by an end already parsed in the same chunk) is the one the end resolves.
    return { pid, ended: this.endOf(pid).done.finally(() => this.ends.delete(pid)) };
  }

  /**
   * A sealed memfd copy of crun (`name` as the crun commands name it) that the commands the keeper
   * forks run from: crun then skips copying itself and re-executing from its copy on every command.
   */
  async loadCrun(name: string): Promise<void> {
    await this.request(`crun ${Buffer.from(name).toString('hex')}`);
  }

  stop(): void {
    this.child.stdin!.end();
    this.child.kill('SIGTERM');
  }
}
