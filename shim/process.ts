// One process the shim answers for: a container's init process or an exec. It owns its lifecycle
// state (process-state.ts), the copy of its stdio between containerd and the agent, and its exit
// status, and wakes every Wait.
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import { Code, TtrpcError } from '../proto/ttrpc/index.js';
import { openBinaryLogger, openOutput, openStdin, pump, releaseStdin, type BinaryLogger, type StdioSink } from './stdio.js';
import { ProcessLifecycle } from './process-state.js';
import { StdinCopy } from './stdin.js';
import { notFound } from './errdefs.js';

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

export interface ExitInfo {
  status: number;
  at: Date;
}

const READ_CHUNK = 64 * 1024;

export class ShimProcess {
  readonly life: ProcessLifecycle;
  exit: ExitInfo | undefined;
  private exitWaiters: Array<{ resolve: (e: ExitInfo) => void; reject: (e: Error) => void }> = [];
  private outputDone: Promise<void> = Promise.resolve();
  private binaryLogger: BinaryLogger | undefined;
  private stdinClosed = false;
  private stdinOpen: Promise<import('node:stream').Readable> | undefined;
  private readonly stdin: StdinCopy;

  constructor(
    readonly containerId: string,
    /** '' for the init process, as containerd's Task API spells it. */
    readonly execId: string,
    readonly stdio: StdioPaths,
    private readonly agent: ServiceClient<'grpc.AgentService'>,
    readonly log: Logger,
    private readonly namespace: string,
    /** The pid containerd sees for this task (see TaskService.taskPid): the guest's pids mean nothing on the host. */
    readonly pid: number,
  ) {
    this.life = new ProcessLifecycle(execId ? `exec ${execId} of container ${containerId}` : `container ${containerId}`);
    this.stdin = new StdinCopy((b) => this.writeStdin(b), log);
  }

  get isInit(): boolean {
    return this.execId === '';
  }

  /**
   * How the agent names this process: an exec by its id, the init by the container's id (as Kata's
   * shim does). An empty exec id means every process of the container to SignalProcess.
   */
  get agentExecId(): string {
    return this.execId || this.containerId;
  }

  private get ids(): { container_id: string; exec_id: string } {
    return { container_id: this.containerId, exec_id: this.agentExecId };
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
    const ids = this.ids;
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
          if (this.exit) src.destroy();
          else this.stdin.attach(src, () => this.closeStdin());
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
    const ids = this.ids;
    await this.agent.SignalProcess({ ...ids, signal: 9 }, { timeoutMs: 10_000 }).catch((err) => this.log.debug({ err }, 'SignalProcess failed'));
    const status = await this.agent
      .WaitProcess(ids, { timeoutMs: 10_000 })
      .then((r) => r.status)
      .catch(() => 128 + 9);
    this.setExited(status);
  }

  private async writeStdin(b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.length) {
      const res = await this.agent.WriteStdin({ ...this.ids, data: b.subarray(off) });
      off += res.len || b.length - off;
    }
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
      if (src) this.stdin.takeBuffered();
      this.stdin.detach();
      for (const b of rest) this.stdin.push(b);
    }
    await this.stdin.drained();
    await this.closeStdin();
  }

  async closeStdin(): Promise<void> {
    if (this.stdinClosed) return;
    this.stdinClosed = true;
    await this.agent.CloseStdin(this.ids).catch((err) => {
      this.log.debug({ err }, 'CloseStdin after exit');
    });
  }

  /**
   * Blocks on the agent's WaitProcess and drains the output: the exit status for whoever records
   * it, or undefined when an exit was recorded meanwhile (the VM died under the process).
   */
  async waitInGuest(): Promise<number | undefined> {
    let status: number;
    try {
      status = (await this.agent.WaitProcess(this.ids)).status;
    } catch (e) {
      if (this.exit) return undefined;
      this.log.error({ err: e }, 'WaitProcess failed; reporting exit 255');
      status = 255;
    }
    // No output may be lost when the process exits fast: finish the copies before reporting.
    await this.outputDone;
    return this.exit ? undefined : status;
  }

  /** Records an exit (also used when the VM died under the process). First exit wins. */
  setExited(status: number, at = new Date()): ExitInfo {
    if (this.exit) return this.exit;
    this.exit = { status, at };
    this.life.abandon();
    if (this.life.allows('exit')) this.life.to('exit');
    for (const w of this.exitWaiters.splice(0)) w.resolve(this.exit);
    this.stdin.stop();
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

  /** Delete: the process is gone from the Task API. Wait()ers of one that never ran are told so. */
  markDeleted(): void {
    this.life.to('delete');
    const never = notFound(`${this.life.label} was deleted before it started`);
    for (const w of this.exitWaiters.splice(0)) w.reject(never);
    this.stdin.stop();
  }

  wait(): Promise<ExitInfo> {
    if (this.exit) return Promise.resolve(this.exit);
    if (this.life.state === 'deleted') return Promise.reject(notFound(`${this.life.label} was deleted before it started`));
    return new Promise((resolve, reject) => this.exitWaiters.push({ resolve, reject }));
  }
}
