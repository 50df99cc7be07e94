// containerd hands a task's stdio as FIFO paths (or binary:// and file:// URIs for log drivers).
// These helpers open them without blocking the event loop and copy bytes between them and the
// agent's stream calls, with back-pressure in both directions.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';
import { hasExited } from '../sys/proc.js';
import { settleWithin } from '../sys/timeout.js';

const { O_RDONLY, O_WRONLY, O_RDWR, O_NONBLOCK } = fs.constants;

export interface StdioSink {
  stream: Writable;
  /** Resolves once everything written has reached the sink's owner (log binaries flush). */
  close(): Promise<void>;
}

/**
 * Opens the read side of a stdin FIFO once the client (ctr, the CRI) has opened its write side.
 * A non-blocking open would see end-of-file at once while no writer exists yet, closing the
 * container's stdin before the client wrote a byte; so the open blocks, in libuv's thread pool.
 * `releaseStdin` ends that wait when nobody ever attaches.
 */
export function openStdin(path: string): Promise<Readable> {
  return new Promise((resolve, reject) => {
    fs.open(path, O_RDONLY, (err, fd) => {
      if (err) reject(err);
      else resolve(new net.Socket({ fd, readable: true, writable: false }));
    });
  });
}

/** Unblocks a pending openStdin by briefly being the writer it waits for. */
export function releaseStdin(path: string): void {
  try {
    fs.closeSync(fs.openSync(path, O_WRONLY | O_NONBLOCK));
  } catch {
    // No reader waiting (ENXIO) or the FIFO is gone: nothing to release.
  }
}

/**
 * Opens the write side of an output FIFO. Opening a FIFO for writing fails with ENXIO while no
 * reader has it open, so this waits for the reader for up to `timeoutMs`.
 */
async function openFifoWriter(path: string, timeoutMs: number): Promise<Writable> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
    try {
      const fd = fs.openSync(path, O_WRONLY | O_NONBLOCK);
      return new net.Socket({ fd, readable: false, writable: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENXIO' || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** Wraps a writable stream: an error (the reader went away) ends the copy instead of the shim. */
function sinkOf(stream: Writable, onError: (err: Error) => void): StdioSink {
  stream.on('error', onError);
  return {
    stream,
    close: () =>
      new Promise((resolve) => {
        if (stream.destroyed || stream.writableFinished) return resolve();
        stream.end(resolve);
        stream.once('close', resolve);
      }),
  };
}

/**
 * An output sink for a FIFO path or a `file:///path` URI (appended to, its directory created, as
 * containerd's shims do; containerd passes the same file for stdout and stderr). `binary://`
 * URIs take openBinaryLogger: one process serves both streams.
 */
export async function openOutput(uri: string, opts: { timeoutMs?: number; onError?: (err: Error) => void } = {}): Promise<StdioSink> {
  const onError = opts.onError ?? (() => {});
  if (uri.startsWith('file://')) {
    const p = decodeURIComponent(new URL(uri).pathname);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    const stream = fs.createWriteStream(p, { flags: 'a', mode: 0o644 });
    await once(stream, 'open');
    return sinkOf(stream, onError);
  }
  if (uri.startsWith('binary://')) {
    throw new Error('binary:// sinks are opened with openBinaryLogger (one process for stdout and stderr)');
  }
  return sinkOf(await openFifoWriter(uri, opts.timeoutMs ?? 10_000), onError);
}

/**
 * A real pipe, as containerd's shims hand their log binaries (os.Pipe): node has no pipe(2), so a
 * FIFO is opened at both ends and unlinked. O_NONBLOCK belongs to one open file description, so
 * the end the shim keeps is non-blocking (for libuv) and the end the child gets is blocking, as
 * an ordinary program expects of its descriptors.
 */
function makePipe(dir: string, name: string, nonBlocking: 'read' | 'write'): { r: number; w: number } {
  const p = path.join(dir, name);
  // Synchronous (a pipe is made while a process is being set up); bounded all the same.
  execFileSync('mkfifo', ['-m', '600', p], { timeout: 10_000, killSignal: 'SIGKILL' });
  // Held open read-write while the two ends are opened, so that neither open waits for the other.
  const hold = fs.openSync(p, O_RDWR | O_NONBLOCK);
  try {
    const r = fs.openSync(p, O_RDONLY | (nonBlocking === 'read' ? O_NONBLOCK : 0));
    const w = fs.openSync(p, O_WRONLY | (nonBlocking === 'write' ? O_NONBLOCK : 0));
    return { r, w };
  } finally {
    fs.closeSync(hold);
    fs.rmSync(p, { force: true });
  }
}

/** containerd's terms for a log binary's command line: each query key, then its first value. */
export function binaryLoggerCommand(uri: string, containerId: string, namespace: string): { file: string; args: string[]; env: Record<string, string> } {
  const u = new URL(uri);
  if (u.protocol !== 'binary:') throw new Error(`${uri}: not a binary:// URI`);
  const args: string[] = [];
  // Keys prefixed `env.` are environment variables for the binary, as containerd's current shims
  // read them (1.6's runc shim passed them on as arguments). No other environment is inherited
  // from the shim: containerd's shims give the binary none either.
  const env: Record<string, string> = {};
  const seen = new Set<string>();
  for (const [k, v] of u.searchParams) {
    if (seen.has(k)) continue;
    seen.add(k);
    if (k.startsWith('env.')) env[k.slice(4)] = v;
    else args.push(k, v);
  }
  env.CONTAINER_ID = containerId;
  env.CONTAINER_NAMESPACE = namespace;
  return { file: decodeURIComponent(u.pathname), args, env };
}

/** After the streams end, how long a log binary may take to exit by itself before SIGTERM. */
const LOGGER_EOF_GRACE_MS = 500;
/** After SIGTERM, how long before SIGKILL (containerd's binaryIOProcTermTimeout). */
const LOGGER_TERM_TIMEOUT_MS = 12_000;

interface LiveLogger {
  pid: number;
  /** When SIGTERM was sent (ms since the epoch). */
  termAt?: number;
}

/** Log binaries still running: none may outlive the shim. */
const liveLoggers = new Set<LiveLogger>();
let exitHookInstalled = false;

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

/**
 * The shim may exit (after containerd's Shutdown) while a log binary is still finishing: the
 * binary gets SIGTERM if it has not had one, the exit waits (synchronously, the event loop is
 * over) until every binary is gone or its 12 s since SIGTERM are up, then what is left of each
 * binary's process group is killed.
 */
function onShimExit(): void {
  const now = Date.now();
  for (const l of liveLoggers) {
    if (l.termAt !== undefined) continue;
    l.termAt = now;
    try {
      process.kill(l.pid, 'SIGTERM');
    } catch {
      // Already gone.
    }
  }
  const deadline = Math.max(now, ...[...liveLoggers].map((l) => l.termAt! + LOGGER_TERM_TIMEOUT_MS));
  const tick = new Int32Array(new SharedArrayBuffer(4));
  while (Date.now() < deadline && [...liveLoggers].some((l) => !hasExited(l.pid))) Atomics.wait(tick, 0, 0, 20);
  for (const l of liveLoggers) if (!hasExited(l.pid)) killGroup(l.pid);
}

export interface BinaryLogger {
  stdout: StdioSink;
  stderr: StdioSink;
  child: ChildProcess;
  /**
   * Ends both streams, then waits for the binary to exit: by itself after end of file, else after
   * SIGTERM, else SIGKILL after 12 s. Resolves once it is gone. Idempotent.
   */
  stop(): Promise<void>;
}

/**
 * Starts a `binary:///path?k=v` log binary as containerd's shims do: stdout on fd 3, stderr on
 * fd 4 (pipes), a pipe on fd 5 that the binary writes to or closes once it is ready,
 * CONTAINER_ID and CONTAINER_NAMESPACE in its environment, the query as its arguments.
 * Resolves once the binary is ready.
 */
export async function openBinaryLogger(uri: string, o: { containerId: string; namespace: string; log: Logger }): Promise<BinaryLogger> {
  const cmd = binaryLoggerCommand(uri, o.containerId, o.namespace);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-logger-'));
  const fds: number[] = [];
  let out: { r: number; w: number }, err: { r: number; w: number }, ready: { r: number; w: number };
  try {
    out = makePipe(dir, 'stdout', 'write');
    fds.push(out.r, out.w);
    err = makePipe(dir, 'stderr', 'write');
    fds.push(err.r, err.w);
    ready = makePipe(dir, 'ready', 'read');
    fds.push(ready.r, ready.w);
  } catch (e) {
    for (const fd of fds) fs.closeSync(fd);
    throw e;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Its own process group: a last SIGKILL reaches whatever the binary started, too.
  const child = spawn(cmd.file, cmd.args, { stdio: ['ignore', 'ignore', 'ignore', out.r, err.r, ready.w], env: cmd.env, detached: true });
  // The child holds its ends now; ours must go, or end of file and EPIPE would never be seen.
  for (const fd of [out.r, err.r, ready.w]) fs.closeSync(fd);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  if (child.pid === undefined) {
    for (const fd of [out.w, err.w, ready.r]) fs.closeSync(fd);
    throw new Error(`log binary ${cmd.file}: ${(await spawnError).message}`);
  }
  const live: LiveLogger = { pid: child.pid };
  liveLoggers.add(live);
  exited.then(() => liveLoggers.delete(live), () => liveLoggers.delete(live));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', onShimExit);
  }
  const log = o.log.child({ logBinary: cmd.file, logBinaryPid: child.pid });
  // containerd waits for one byte or end of file, whichever comes first; so do we.
  const readySock = new net.Socket({ fd: ready.r, readable: true, writable: false });
  await new Promise<void>((resolve) => {
    readySock.once('data', () => resolve());
    readySock.once('end', () => resolve());
    readySock.once('close', () => resolve());
    readySock.once('error', () => resolve());
  });
  readySock.destroy();
  log.debug({ args: cmd.args }, 'log binary ready');
  const onError = (e: Error) => log.debug({ err: e }, 'log binary stream ended');
  const stdout = sinkOf(new net.Socket({ fd: out.w, readable: false, writable: true }), onError);
  const stderr = sinkOf(new net.Socket({ fd: err.w, readable: false, writable: true }), onError);
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await Promise.all([stdout.close(), stderr.close()]);
      const gone = (ms: number) => settleWithin(exited, ms);
      if (await gone(LOGGER_EOF_GRACE_MS)) return;
      // As containerd's shims do: SIGTERM to the binary alone, so it can flush and exit.
      live.termAt = Date.now();
      child.kill('SIGTERM');
      if (await gone(LOGGER_TERM_TIMEOUT_MS)) return;
      log.warn('log binary ignored SIGTERM for 12 s; killing its process group');
      killGroup(child.pid!);
      await exited;
    })());
  exited.then(({ code, signal }) => log.debug({ code, signal }, 'log binary exited'), (err: unknown) => log.debug({ err }, 'log binary wait failed'));
  return { stdout, stderr, child, stop };
}

/**
 * Resolves on the sink's next 'drain' or 'close', whichever comes first, and removes both
 * listeners then: a chatty process behind a slow reader hits back-pressure on every chunk, and a
 * listener left behind per episode grew the shim for as long as the process talked.
 */
function drainOrClose(sink: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      sink.off('drain', done);
      sink.off('close', done);
      resolve();
    };
    sink.on('drain', done);
    sink.on('close', done);
  });
}

/** Pulls chunks from `read` until it returns null (end), writing each to `sink` with back-pressure. */
export async function pump(read: () => Promise<Uint8Array | null>, sink: Writable): Promise<number> {
  let total = 0;
  for (;;) {
    const chunk = await read();
    if (chunk === null) return total;
    if (chunk.length === 0) continue;
    // The reader went away (ctr killed, log binary gone): its end was already reported.
    if (sink.destroyed || sink.writableEnded) return total;
    total += chunk.length;
    if (!sink.write(chunk)) {
      await drainOrClose(sink);
      if (sink.destroyed) return total;
    }
  }
}
