// `start`: containerd expects the shim's ttrpc address on stdout and this process gone. Containers
// of one pod share a daemon: if the pod's socket answers, its address is the answer.
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { ShimArgs } from './args.js';
import { loadConfig } from './config.js';
import { groupingId, privateDir, socketPath } from './layout.js';
// Not the ttrpc index: `start` speaks no ttrpc, and the codecs behind it take long to load.
import { removeStaleSocket, socketIsLive } from '../proto/ttrpc/socket-probe.js';
import { withStartLock } from './start-lock.js';
import { SHIM_STARTED_AT_ENV } from './pod-steps.js';

/** The newest Task API the daemon serves (containerd.task.v3.Task; v2 is served too). */
export const MAX_TASK_API = 3;

/**
 * What `start` prints for `address`. containerd 1.6 reads a bare address and passes no
 * MAX_SHIM_VERSION. 1.7 and 2.x pass MAX_SHIM_VERSION and read JSON bootstrap params (a bare
 * address still counts as version 2 over ttrpc); the version picks the Task API containerd calls,
 * 2 -> containerd.task.v2.Task, 3 -> containerd.task.v3.Task. 1.7 refuses 3 ("unsupported shim
 * version") and 2.1.9 still announces 2, although it would take 3: the env is the only signal both
 * send, so the answer never exceeds it.
 */
export function bootstrapOutput(address: string, maxShimVersion: string | undefined): string {
  const max = Number(maxShimVersion);
  if (!maxShimVersion || !Number.isInteger(max) || max < 2) return address;
  return JSON.stringify({ version: Math.min(max, MAX_TASK_API), address, protocol: 'ttrpc' });
}

export async function startShim(args: ShimArgs): Promise<string> {
  const cfg = loadConfig();
  const grouping = groupingId(args.bundle, args.id);
  const sock = socketPath(cfg.runtime.state_dir, args.address, args.namespace, grouping);
  const address = `unix://${sock}`;
  const output = bootstrapOutput(address, process.env.MAX_SHIM_VERSION);
  const reuse = () => {
    fs.writeFileSync(path.join(args.bundle, 'address'), address);
    return output;
  };
  // The pod's daemon runs: its address is the answer, and its socket is never touched.
  if (await socketIsLive(sock)) return reuse();
  privateDir(cfg.runtime.state_dir);
  privateDir(path.dirname(sock));
  return withStartLock(path.join(cfg.runtime.state_dir, 'start.lock'), async () => {
    // Another start of this pod may have won the lock first.
    if (await socketIsLive(sock)) return reuse();
    // Nothing listens and no other start runs: a socket left by a killed daemon may go.
    await removeStaleSocket(sock);
    await spawnDaemon(args, grouping, sock, cfg.runtime.log_dir);
    fs.writeFileSync(path.join(args.bundle, 'address'), address);
    return output;
  });
}

/**
 * Node flags for the daemon, which idles beside its pod for the pod's whole life: one V8 worker
 * thread instead of four (each keeps its own stack and malloc arena). An idle daemon's anonymous
 * memory is ~3 MiB smaller per pod; its requests are short and few. The flags node was started
 * with come after these, so an operator's own win.
 */
export const DAEMON_V8_FLAGS = ['--v8-pool-size=1'];

export function daemonNodeArgs(execArgv: readonly string[]): string[] {
  return [...DAEMON_V8_FLAGS, ...execArgv];
}

async function spawnDaemon(args: ShimArgs, grouping: string, sock: string, logDir: string): Promise<void> {
  const daemonArgs = [
    ...daemonNodeArgs(process.execArgv),
    process.argv[1]!,
    '-namespace', args.namespace,
    '-id', grouping,
    '-address', args.address,
    '-publish-binary', args.publishBinary,
    '-bundle', args.bundle,
    '-socket', sock,
    ...(args.debug ? ['-debug'] : []),
  ];
  // The daemon's stderr goes to its log file (appended, like its pino lines): a crash before or
  // beyond its logger still leaves its words where the operator looks.
  privateDir(logDir);
  const logFile = path.join(logDir, `${grouping}.log`);
  const errFd = fs.openSync(logFile, 'a', 0o600);
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(process.execPath, daemonArgs, {
      cwd: args.bundle,
      detached: true,
      stdio: ['ignore', 'pipe', errFd],
      // When containerd ran `start`: the daemon's shim_serving step counts from there.
      env: { ...process.env, [SHIM_STARTED_AT_ENV]: String(Math.round(performance.timeOrigin)) },
    });
  } finally {
    fs.closeSync(errFd);
  }
  // The daemon says "ready" once its socket listens, before it loads the rest of its code (containerd's
  // dial and first call queue on the socket meanwhile); anything else means it failed to start. A
  // daemon that fails later closes the socket, which fails the queued call.
  const ready = await new Promise<boolean>((resolve) => {
    let out = '';
    const t = setTimeout(() => resolve(false), 30_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('ready\n')) {
        clearTimeout(t);
        resolve(true);
      }
    });
    child.once('exit', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
  if (!ready) {
    child.kill('SIGKILL');
    const tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ');
    throw new Error(`shim daemon for ${grouping} did not come up (${logFile}: ${tail || 'empty'})`);
  }
  child.stdout!.destroy();
  child.unref();
}
