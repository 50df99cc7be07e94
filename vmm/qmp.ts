// A QMP client: JSON lines over a unix socket. One command in flight at a time (QMP answers in
// order); asynchronous events are emitted as 'event'. Every wait has a limit and a code: a QEMU
// that stops answering (stopped, wedged in a device model) costs the caller a TimeoutError, never
// a hang. Commands carry an id, so the late answer to one that timed out is recognised and dropped.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { TimeoutError, withTimeout } from '../sys/timeout.js';

/** A command QEMU did not answer in time. */
export const QMP_TIMEOUT = 'KATATS_QMP_TIMEOUT';
/** The QMP socket did not accept, greet or negotiate in time. */
export const QMP_CONNECT_TIMEOUT = 'KATATS_QMP_CONNECT_TIMEOUT';
/** An awaited QMP event did not come in time. */
export const QMP_EVENT_TIMEOUT = 'KATATS_QMP_EVENT_TIMEOUT';

export const DEFAULT_QMP_COMMAND_TIMEOUT_MS = 15_000;
/** QMP lines longer than this are not JSON we asked for: the connection is dropped. */
const MAX_LINE = 1 << 20;
/** Unanswered commands after which the connection counts as dead. */
const MAX_ABANDONED = 16;

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
  }
}

interface Pending {
  id: string;
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** Timed out: its answer, should one come, is dropped. */
  abandoned: boolean;
}

export interface QmpOptions {
  /** Default limit for each command, from the moment execute() is called. */
  commandTimeoutMs?: number;
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private queue: Pending[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private closedErr: Error | undefined;
  private nextId = 1;
  private readonly commandTimeoutMs: number;
  greeting: Record<string, unknown> | undefined;

  private constructor(
    private readonly sock: net.Socket,
    opts: QmpOptions,
  ) {
    super();
    this.commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_QMP_COMMAND_TIMEOUT_MS;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
    sock.on('error', (e) => this.onClose(e));
  }

  /**
   * Connects (retrying while QEMU has not created the socket yet), reads the greeting and
   * negotiates capabilities. `abort` stops the retries (e.g. QEMU exited).
   */
  static async connect(socketPath: string, opts: QmpOptions & { timeoutMs?: number; abort?: AbortSignal } = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (opts.abort?.aborted) throw new Error(`QMP connect to ${socketPath} aborted: ${String(opts.abort.reason ?? '')}`);
      let sock: net.Socket;
      try {
        sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => {
            s.removeListener('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw e;
        if (Date.now() >= deadline) throw new TimeoutError(QMP_CONNECT_TIMEOUT, `QMP socket ${socketPath} accepting a connection`, timeoutMs);
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      const c = new QmpClient(sock, opts);
      try {
        c.greeting = await c.readGreeting(Math.max(1000, deadline - Date.now()));
        await c.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1000, deadline - Date.now()) });
        return c;
      } catch (e) {
        c.close();
        throw e;
      }
    }
  }

  private greetingWaiter: ((g: Record<string, unknown>) => void) | undefined;

  private readGreeting(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new TimeoutError(QMP_CONNECT_TIMEOUT, 'QMP greeting', timeoutMs)), timeoutMs);
      this.greetingWaiter = (g) => {
        clearTimeout(t);
        resolve(g);
      };
      this.once('closed', (e: Error) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, i).trim();
      this.buf = this.buf.slice(i + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) {
        this.greetingWaiter?.(msg);
        this.greetingWaiter = undefined;
      } else if ('event' in msg) {
        this.emit('event', msg as unknown as QmpEvent);
      } else if ('return' in msg || 'error' in msg) {
        // QEMU echoes our id; a peer that does not is answered in order.
        const at = typeof msg.id === 'string' ? this.queue.findIndex((p) => p.id === msg.id) : 0;
        const p = at >= 0 ? this.queue.splice(at, 1)[0] : undefined;
        if (!p || p.abandoned) continue;
        if ('error' in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError(p.command, err.class ?? 'GenericError', err.desc ?? ''));
        } else p.resolve(msg.return);
      }
    }
    if (this.buf.length > MAX_LINE) this.onClose(new Error(`QMP line longer than ${MAX_LINE} bytes`));
  }

  private onClose(e: Error): void {
    if (this.closedErr) return;
    this.closedErr = e;
    this.buf = '';
    this.sock.destroy();
    for (const p of this.queue.splice(0)) if (!p.abandoned) p.reject(new Error(`QMP ${p.command}: ${e.message}`));
    this.emit('closed', e);
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  /**
   * Runs one command; resolves with its "return" value, rejects with QmpError, or with a
   * TimeoutError (KATATS_QMP_TIMEOUT) when it is not answered within the limit, counted from now.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    let entry: Pending | undefined;
    const run = () =>
      new Promise<T>((resolve, reject) => {
        if (this.closedErr) {
          reject(new Error(`QMP ${command}: ${this.closedErr.message}`));
          return;
        }
        const id = `katats-${this.nextId++}`;
        entry = { id, command, resolve: resolve as (v: unknown) => void, reject, abandoned: false };
        this.queue.push(entry);
        this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
      });
    const p = withTimeout(this.chain.then(run, run), timeoutMs, {
      code: QMP_TIMEOUT,
      what: `QMP ${command}`,
      onTimeout: () => {
        if (!entry) return;
        entry.abandoned = true;
        // A QEMU that leaves this many commands unanswered is not coming back.
        if (this.queue.filter((q) => q.abandoned).length > MAX_ABANDONED) this.onClose(new Error(`${MAX_ABANDONED} QMP commands unanswered`));
      },
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Resolves with the first event named `name` for which `match` holds. */
  waitEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = 30_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && match(e)) {
          cleanup();
          resolve(e);
        }
      };
      const onClosed = (err: Error) => {
        cleanup();
        reject(new Error(`waiting for ${name}: ${err.message}`));
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new TimeoutError(QMP_EVENT_TIMEOUT, `QMP event ${name}`, timeoutMs));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(t);
        this.off('event', onEvent);
        this.off('closed', onClosed);
      };
      this.on('event', onEvent);
      this.once('closed', onClosed);
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

