// How a container process's monitor (`katats-runner run`) is started: forked by the keeper while
// there is a live one, else spawned from node. A spawn forks node, ~0.5 s under TCG on a pod's
// start path; the keeper is a small process. Either way the agent gets the same channel: status
// lines in, control lines out, the runner's stderr, and its end after its last status line.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { createInterface } from 'node:readline';
import type { Writable } from 'node:stream';
import type { Logger } from './log.js';
import type { Keeper, RunnerEnd } from './keeper.js';
import { withTimeout } from '../sys/timeout.js';

/** A forked runner connects at once; one that neither connects nor ends within this is killed. */
export const RUNNER_CONNECT_TIMEOUT = 'KATATS_RUNNER_CONNECT_TIMEOUT';
const RUNNER_CONNECT_TIMEOUT_MS = 30_000;

/** Bytes of the runner's stderr kept for error messages. */
const MAX_STDERR = 8192;

export interface MonitorEnd {
  code: number | null;
  signal: string | null;
}

export interface MonitorEvents {
  /** one status line ("ready", "pid N", "exit RAW", "error TEXT") */
  line(l: string): void;
  /** the runner could not be started at all */
  error(text: string): void;
  /** the runner ended and every status line it wrote was delivered */
  close(end: MonitorEnd): void;
}

export interface Monitor {
  /** who started it: the keeper, or node itself */
  readonly via: 'keeper' | 'node';
  /** the runner's pid (undefined until known, or when a spawn failed) */
  readonly pid: number | undefined;
  /** a control line ("go", "kill SIG", "resize R C") */
  send(line: string): void;
  /** no more control lines: the runner kills a process still running */
  end(): void;
  kill(): void;
  /** what the runner wrote on stderr (bounded) */
  stderr(): string;
}

export interface MonitorStart {
  runner: string;
  /** the run mode's arguments, after `run` */
  args: string[];
  /** where the agent listens for a keeper-forked runner (a short path: sun_path) */
  socket: string;
  /** the keeper-forked runner's stderr */
  errFile: string;
  keeper: Keeper | undefined;
  log: Logger;
}

export async function startMonitor(o: MonitorStart, ev: MonitorEvents): Promise<Monitor> {
  if (o.keeper?.alive) {
    try {
      return await forkedByKeeper(o, o.keeper, ev);
    } catch (err) {
      o.log.warn({ err }, 'the keeper did not start the runner: spawning it from node');
    }
  } else if (o.keeper) {
    o.log.warn('the keeper is dead: spawning the runner from node');
  }
  return spawnedByNode(o, ev);
}

function spawnedByNode(o: MonitorStart, ev: MonitorEvents): Monitor {
  const helper = spawn(o.runner, ['run', ...o.args], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  const ctl = helper.stdio[4] as Writable;
  ctl.on('error', () => undefined);
  let stderr = '';
  helper.stderr!.on('data', (b: Buffer) => {
    if (stderr.length < MAX_STDERR) stderr += b.toString();
  });
  const lines = createInterface({ input: helper.stdio[3] as NodeJS.ReadableStream });
  // readline emits its input's errors again on itself: unheard, one ends the agent.
  lines.on('error', (err) => o.log.debug({ err }, 'runner status pipe error'));
  lines.on('line', (l) => ev.line(l));
  helper.on('error', (e) => ev.error(`cannot run ${o.runner}: ${e.message}`));
  // 'close' comes after the status pipe is drained, so a final "exit" line is never lost.
  helper.on('close', (code, signal) => {
    lines.close();
    ev.close({ code, signal });
  });
  return {
    via: 'node',
    get pid() {
      return helper.pid;
    },
    send: (l) => ctl.write(`${l}\n`),
    end: () => ctl.end(),
    kill: () => helper.kill('SIGKILL'),
    stderr: () => stderr,
  };
}

/** The keeper forks the runner, which connects to a socket the agent listens on: fds 3 and 4 are that one connection. */
async function forkedByKeeper(o: MonitorStart, keeper: Keeper, ev: MonitorEvents): Promise<Monitor> {
  fs.rmSync(o.socket, { force: true });
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.socket, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const stopListening = () => {
    if (!server.listening) return;
    server.close();
    fs.rmSync(o.socket, { force: true });
  };
  // Listened for before the request: the runner may connect before the keeper's answer is read.
  const connected = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  let started: { pid: number; ended: Promise<RunnerEnd> };
  try {
    started = await keeper.run(o.socket, o.errFile, o.args);
  } catch (e) {
    stopListening();
    throw e;
  }
  const { pid } = started;
  let reaped = false;
  started.ended.then(
    () => (reaped = true),
    () => undefined,
  );
  let sock: net.Socket | undefined;
  let queued: string[] = [];
  let ending = false;
  let stderr: string | undefined;
  const readStderr = (): string => {
    if (stderr === undefined) {
      try {
        const fd = fs.openSync(o.errFile, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          const b = Buffer.alloc(MAX_STDERR);
          stderr = b.subarray(0, fs.readSync(fd, b, 0, MAX_STDERR, 0)).toString();
        } finally {
          fs.closeSync(fd);
        }
      } catch {
        stderr = '';
      }
    }
    return stderr;
  };

  let channelDone: Promise<void> = Promise.resolve();
  let first: net.Socket | undefined;
  try {
    first = await withTimeout(Promise.race([connected, started.ended.then(() => undefined)]), RUNNER_CONNECT_TIMEOUT_MS, {
      code: RUNNER_CONNECT_TIMEOUT,
      what: `runner ${pid} connecting to ${o.socket}`,
      onTimeout: () => {
        if (!reaped) process.kill(pid, 'SIGKILL');
      },
    });
  } finally {
    stopListening();
  }
  if (!first) connected.then((s) => s.destroy()).catch(() => undefined);
  if (first) {
    sock = first;
    sock.on('error', (err) => o.log.debug({ err }, 'runner channel error'));
    const lines = createInterface({ input: sock });
    // readline emits the socket's errors (a runner gone with lines unread: ECONNRESET, EPIPE) again
    // on itself: unheard, one ends the agent, although the socket's own are heard above.
    lines.on('error', (err) => o.log.debug({ err }, 'runner channel error'));
    lines.on('line', (l) => ev.line(l));
    channelDone = new Promise((resolve) => sock!.once('close', () => resolve()));
    for (const l of queued) sock.write(`${l}\n`);
    queued = [];
    if (ending) sock.end();
  }
  // The runner's end as the keeper reaped it, after its last status line was read.
  Promise.all([started.ended, channelDone])
    .then(([end]) => {
      const ws = end.waitStatus;
      const sig = ws === undefined ? 0 : ws & 0x7f;
      const name = sig ? (Object.entries(os.constants.signals).find(([, n]) => n === sig)?.[0] ?? String(sig)) : null;
      ev.close({ code: ws === undefined || sig ? null : (ws >> 8) & 0xff, signal: name });
    })
    .catch((err: unknown) => o.log.error({ err }, 'runner end bookkeeping failed'));
  o.log.debug({ pid, keeper: keeper.pid }, 'runner forked by the keeper');
  return {
    via: 'keeper',
    pid,
    send(l) {
      if (sock) sock.write(`${l}\n`);
      else queued.push(l);
    },
    end() {
      ending = true;
      sock?.end();
    },
    kill() {
      // Until the keeper reaps it the pid is the runner's (a zombie at worst); it reports the reap
      // in the same turn, so the pid could be another process's only in that moment.
      if (reaped) return;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    },
    stderr: readStderr,
  };
}
