// One process the shim answers for: a container's init process or an exec. It owns the copy of
// its stdio between containerd and the agent and its exit status, and wakes every Wait.
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import { Code, TtrpcError } from '../proto/ttrpc/index.js';
import { openBinaryLogger, openOutput, openStdin, pump, releaseStdin, type BinaryLogger, type StdioSink } from './stdio.js';

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export type ProcessStatus = 'created' | 'running' | 'stopped' | 'paused';

export interface ExitInfo {
  status: number;
  at: Date;
}

const READ_CHUNK = 64 * 1024;

export class ShimProcess {
  status: ProcessStatus = 'created';
  exit: ExitInfo | undefined;
  /** The pid containerd sees: the shim's own, as Kata reports it (the real one lives in the guest). */
  readonly pid = process.pid;
  private exitWaiters: Array<(e: ExitInfo) => void> = [];
  private outputDone: Promise<void> = Promise.resolve();
  private binaryLogger: BinaryLogger | undefined;
  private stdinClosed = false;
  private stdinOpen: Promise<import('node:stream').Readable> | undefined;
  /** WriteStdin calls in order; closing waits for them. */
  private stdinWrites: Promise<void> = Promise.resolve();

  constructor(
    readonly containerId: string,
    /** '' for the init process, as the agent API spells it. */
    readonly execId: string,
    readonly stdio: StdioPaths,
    private readonly agent: ServiceClient<'grpc.AgentService'>,
    readonly log: Logger,
    private readonly namespace: string,
  ) {}

  get isInit(): boolean {
    return this.execId === '';
  }

  private outSink: StdioSink | undefined;
  private errSink: StdioSink | undefined;
  private outputOpened = false;

  /**
   * Opens where the output goes (FIFOs, a file, a log binary) before the process starts, as
   * containerd's shims do: an output that cannot be opened fails Create or an exec's Start while
   * there is still nothing to kill. Idempotent.
   */
  async openOutput(): Promise<void> {
    if (this.outputOpened) return;
    const { stdout, stderr, terminal } = this.stdio;
    const onError = (err: Error) => this.log.debug({ err }, 'output sink closed by its reader');
    try {
      if (stdout.startsWith('binary://')) {
        // As with containerd's shims, CONTAINER_ID is the exec id for an exec.
        this.binaryLogger = await openBinaryLogger(stdout, { containerId: this.execId || this.containerId, namespace: this.namespace, log: this.log });
        this.outSink = this.binaryLogger.stdout;
        this.errSink = this.binaryLogger.stderr;
      } else {
        if (stdout) this.outSink = await openOutput(stdout, { onError });
        if (stderr && !terminal) this.errSink = await openOutput(stderr, { onError });
      }
    } catch (e) {
      await this.outSink?.close();
      this.outSink = undefined;
      this.errSink = undefined;
      throw new Error(`${this.execId ? `exec ${this.execId}` : `container ${this.containerId}`}: cannot open its output: ${(e as Error).message}`);
    }
    this.outputOpened = true;
  }

  /** Starts copying stdio once the process runs in the guest. */
  async attachStdio(): Promise<void> {
    const { stdin, terminal } = this.stdio;
    const ids = { container_id: this.containerId, exec_id: this.execId };
    const reader = (method: 'ReadStdout' | 'ReadStderr') => async (): Promise<Uint8Array | null> => {
      try {
        const res = await this.agent[method]({ ...ids, len: READ_CHUNK });
        // An empty read is the agent's end of stream.
        return res.data.length ? res.data : null;
      } catch (e) {
        if (!(e instanceof TtrpcError) || e.code !== Code.NotFound) this.log.debug({ err: e, method }, 'output stream ended');
        return null;
      }
    };
    const copies: Promise<unknown>[] = [];
    try {
      await this.openOutput();
    } catch (e) {
      await this.abandon(e as Error);
      throw e;
    }
    const { outSink, errSink } = this;
    if (outSink) {
      copies.push(pump(reader('ReadStdout'), outSink.stream).finally(() => outSink!.close()));
    }
    // A terminal has no stderr: a log binary's fd 4 stays open, empty, until the process ends.
    if (errSink && !terminal) copies.push(pump(reader('ReadStderr'), errSink.stream).finally(() => errSink!.close()));
    this.outputDone = Promise.allSettled(copies).then(() => undefined);
    if (stdin) {
      this.stdinOpen = openStdin(stdin);
      this.stdinOpen
        .then((src) => {
          // Every chunk joins the ordered write chain as it arrives: nothing waits in the stream
          // where a close could drop it.
          src.on('data', (b: Buffer) => void this.writeStdin(b).catch((err) => this.log.debug({ err }, 'WriteStdin failed')));
          src.on('end', () => {
            this.stdinWrites
              .catch(() => undefined)
              .then(() => this.closeStdin())
              .catch((err: unknown) => this.log.debug({ err }, 'closing stdin failed'));
          });
          src.on('error', (err) => this.log.debug({ err }, 'stdin FIFO error'));
        })
        .catch((err) => this.log.debug({ err }, 'stdin FIFO could not be opened'));
    }
  }

  /**
   * The process already runs in the guest but its output has nowhere to go: containerd's shims
   * fail such a request before the process starts. Kill it and record its exit, so that the
   * failed request leaves a task that can be deleted rather than one that never ends.
   */
  private async abandon(cause: Error): Promise<void> {
    this.log.error({ err: cause }, 'cannot open the output; killing the process');
    const ids = { container_id: this.containerId, exec_id: this.execId };
    await this.agent.SignalProcess({ ...ids, signal: 9 }, { timeoutMs: 10_000 }).catch((err) => this.log.debug({ err }, 'SignalProcess failed'));
    const status = await this.agent
      .WaitProcess(ids, { timeoutMs: 10_000 })
      .then((r) => r.status)
      .catch(() => 128 + 9);
    this.setExited(status);
  }

  private writeStdin(b: Uint8Array): Promise<void> {
    const ids = { container_id: this.containerId, exec_id: this.execId };
    this.stdinWrites = this.stdinWrites.then(async () => {
      let off = 0;
      while (off < b.length) {
        const res = await this.agent.WriteStdin({ ...ids, data: b.subarray(off) });
        off += res.len || b.length - off;
      }
    });
    return this.stdinWrites;
  }

  /**
   * containerd's CloseIO: the client has written all it will. What it wrote may still sit in the
   * FIFO, so drain the pipe (through a second non-blocking descriptor) before closing the
   * process's stdin, or a fast `echo x | ctr run ...` loses its input.
   */
  async closeIO(): Promise<void> {
    const fifo = this.stdio.stdin;
    if (fifo && this.stdinOpen) {
      // If our open still waits for a writer, end the wait: the client is done writing.
      releaseStdin(fifo);
      const src = await this.stdinOpen.catch(() => undefined);
      const rest: Buffer[] = [];
      try {
        const fd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
        try {
          const buf = Buffer.alloc(64 * 1024);
          for (;;) {
            let n = 0;
            try {
              n = fs.readSync(fd, buf, 0, buf.length, null);
            } catch (e) {
              if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
              throw e;
            }
            if (n === 0) break;
            rest.push(Buffer.from(buf.subarray(0, n)));
          }
        } finally {
          fs.closeSync(fd);
        }
      } catch (err) {
        this.log.debug({ err }, 'draining stdin FIFO');
      }
      src?.removeAllListeners('end');
      src?.destroy();
      for (const b of rest) await this.writeStdin(b).catch(() => undefined);
    }
    await this.stdinWrites.catch(() => undefined);
    await this.closeStdin();
  }

  async closeStdin(): Promise<void> {
    if (this.stdinClosed) return;
    this.stdinClosed = true;
    await this.agent.CloseStdin({ container_id: this.containerId, exec_id: this.execId }).catch((err) => {
      this.log.debug({ err }, 'CloseStdin after exit');
    });
  }

  /** Blocks on the agent's WaitProcess, drains output, then records the exit. */
  async watch(): Promise<ExitInfo> {
    let status: number;
    try {
      status = (await this.agent.WaitProcess({ container_id: this.containerId, exec_id: this.execId })).status;
    } catch (e) {
      if (this.exit) return this.exit;
      this.log.error({ err: e }, 'WaitProcess failed; reporting exit 255');
      status = 255;
    }
    // No output may be lost when the process exits fast: finish the copies before reporting.
    await this.outputDone;
    return this.setExited(status);
  }

  /** Records an exit (also used when the VM died under the process). First exit wins. */
  setExited(status: number, at = new Date()): ExitInfo {
    if (this.exit) return this.exit;
    this.exit = { status, at };
    this.status = 'stopped';
    for (const w of this.exitWaiters.splice(0)) w(this.exit);
    // The log binary sees the end of both streams and usually exits by itself; release() makes sure.
    this.outSink?.close().catch((err: unknown) => this.log.debug({ err }, 'closing stdout failed'));
    this.errSink?.close().catch((err: unknown) => this.log.debug({ err }, 'closing stderr failed'));
    if (this.stdio.stdin) releaseStdin(this.stdio.stdin);
    return this.exit;
  }

  /** At Delete: the output is closed and a log binary stopped (containerd keeps it until then too). */
  async release(): Promise<void> {
    await Promise.allSettled([this.outSink?.close(), this.errSink?.close()]);
    const logger = this.binaryLogger;
    this.binaryLogger = undefined;
    await logger?.stop().catch((err) => this.log.warn({ err }, 'stopping the log binary failed'));
  }

  wait(): Promise<ExitInfo> {
    if (this.exit) return Promise.resolve(this.exit);
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }
}
