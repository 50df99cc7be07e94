// containerd hands a task's stdio as FIFO paths (or binary:// and file:// URIs for log drivers).
// These helpers open them without blocking the event loop and copy bytes between them and the
// agent's stream calls, with back-pressure in both directions.
import fs from 'node:fs';
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';

const { O_RDONLY, O_WRONLY, O_NONBLOCK } = fs.constants;

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

/**
 * An output sink for one of containerd's stdio URIs: a FIFO path, `file:///path` (appended), or
 * `binary:///path?k=v` (a logging binary that gets stdout on fd 3, stderr on fd 4 and closes fd 5
 * once it is ready, as containerd's binary log driver protocol says).
 */
export async function openOutput(uri: string, opts: { timeoutMs?: number } = {}): Promise<StdioSink> {
  if (uri.startsWith('file://')) {
    const p = decodeURIComponent(new URL(uri).pathname);
    const stream = fs.createWriteStream(p, { flags: 'a' });
    await once(stream, 'open');
    return { stream, close: () => new Promise((r) => stream.end(r)) };
  }
  if (uri.startsWith('binary://')) {
    throw new Error('binary:// sinks are opened with openBinaryLogger (one process for stdout and stderr)');
  }
  const stream = await openFifoWriter(uri, opts.timeoutMs ?? 10_000);
  return { stream, close: () => new Promise((r) => stream.end(r)) };
}

export interface BinaryLogger {
  stdout: StdioSink;
  stderr: StdioSink;
  child: ChildProcess;
}

export async function openBinaryLogger(uri: string, containerId: string, namespace: string): Promise<BinaryLogger> {
  const u = new URL(uri);
  const args: string[] = [];
  for (const [k, v] of u.searchParams) args.push(v ? `${k}=${v}` : k);
  const child = spawn(decodeURIComponent(u.pathname), args, {
    stdio: ['ignore', 'ignore', 'inherit', 'pipe', 'pipe', 'pipe'],
    env: { ...process.env, CONTAINER_ID: containerId, CONTAINER_NAMESPACE: namespace },
  });
  const fds = child.stdio as unknown as Array<Readable | Writable>;
  const ready = fds[5] as Readable;
  ready.resume();
  await Promise.race([
    once(ready, 'close'),
    once(child, 'exit').then(([code]) => {
      throw new Error(`log binary ${u.pathname} exited with ${code} before it was ready`);
    }),
  ]);
  const sink = (s: Writable): StdioSink => ({ stream: s, close: () => new Promise((r) => s.end(r)) });
  return { stdout: sink(fds[3] as Writable), stderr: sink(fds[4] as Writable), child };
}

/** Pulls chunks from `read` until it returns null (end), writing each to `sink` with back-pressure. */
export async function pump(read: () => Promise<Uint8Array | null>, sink: Writable): Promise<number> {
  let total = 0;
  for (;;) {
    const chunk = await read();
    if (chunk === null) return total;
    if (chunk.length === 0) continue;
    total += chunk.length;
    if (!sink.write(chunk)) {
      await Promise.race([once(sink, 'drain'), once(sink, 'close')]);
      if (sink.destroyed) return total;
    }
  }
}
