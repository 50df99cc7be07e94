// A QMP client: JSON lines over a unix socket. One command in flight at a time (QMP answers in
// order); asynchronous events are emitted as 'event'.
import { EventEmitter } from 'node:events';
import net from 'node:net';

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
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private queue: Pending[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private closedErr: Error | undefined;
  greeting: Record<string, unknown> | undefined;

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
    sock.on('error', (e) => this.onClose(e));
  }

  /**
   * Connects (retrying while QEMU has not created the socket yet), reads the greeting and
   * negotiates capabilities. `abort` stops the retries (e.g. QEMU exited).
   */
  static async connect(socketPath: string, opts: { timeoutMs?: number; abort?: AbortSignal } = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    for (;;) {
      if (opts.abort?.aborted) throw new Error(`QMP connect to ${socketPath} aborted: ${String(opts.abort.reason ?? '')}`);
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => {
            s.removeListener('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const c = new QmpClient(sock);
        c.greeting = await c.readGreeting(Math.max(1000, deadline - Date.now()));
        await c.execute('qmp_capabilities');
        return c;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if ((code === 'ENOENT' || code === 'ECONNREFUSED') && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        throw e;
      }
    }
  }

  private greetingWaiter: ((g: Record<string, unknown>) => void) | undefined;

  private readGreeting(timeoutMs: number): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('QMP greeting timed out')), timeoutMs);
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
        const p = this.queue.shift();
        if (!p) continue;
        if ('error' in msg) {
          const err = msg.error as { class?: string; desc?: string };
          p.reject(new QmpError(p.command, err.class ?? 'GenericError', err.desc ?? ''));
        } else p.resolve(msg.return);
      }
    }
  }

  private onClose(e: Error): void {
    if (this.closedErr) return;
    this.closedErr = e;
    for (const p of this.queue.splice(0)) p.reject(new Error(`QMP ${p.command}: ${e.message}`));
    this.emit('closed', e);
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  /** Runs one command; resolves with its "return" value, rejects with QmpError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const run = () =>
      new Promise<T>((resolve, reject) => {
        if (this.closedErr) {
          reject(new Error(`QMP ${command}: ${this.closedErr.message}`));
          return;
        }
        this.queue.push({ command, resolve: resolve as (v: unknown) => void, reject });
        this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
      });
    const p = this.chain.then(run, run);
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
        reject(new Error(`timed out after ${timeoutMs} ms waiting for QMP event ${name}`));
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
