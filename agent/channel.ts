// The guest's agent channel: a virtio-serial port (a character device such as /dev/vport0p1).
//
// The port is opened once and never closed. Closing it makes the guest kernel discard whatever
// the host has already sent into the port, so a reopen after the host went away could swallow
// the first request of the host's next connection. A read that returns 0 bytes means "no host
// connected right now" (the host disconnected, or has not connected yet); the port then is
// polled on the same fd, and the next bytes begin a new session: a fresh Duplex for a fresh ttrpc
// connection, because the host's next client starts its stream ids anew.
//
// The port is still one byte stream across host connections: the guest does not always see a
// quick reconnect, and bytes written for one connection (up to a kernel write, 32 KiB) reach the
// next. A host that says hello (proto/agent-session.ts) gets a clean start: at a hello on a frame
// boundary the session ends and a new one begins, the old one's answers are dropped, and the ack
// goes out after everything written before it (one writer for the port), so the host skips all
// that precedes the ack. A host that sends no hello gets plain ttrpc, split on reads of 0 only.
//
// Node cannot put a character device in its event loop, so reads and writes go through libuv's
// thread pool (one read in flight at a time); main.ts enlarges the pool accordingly.
import fs from 'node:fs';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { SessionSplitter, ackFrame } from '../proto/agent-session.js';

const READ_SIZE = 256 * 1024;
/** Polling while no host is connected: quick at first (a reconnect is usually immediate), then calm. */
const IDLE_POLL_MIN_MS = 2;
const IDLE_POLL_MAX_MS = 50;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function read(fd: number, buf: Buffer): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Writes all of buf unless `gone` is or turns true between the kernel's partial writes. */
function writeAll(fd: number, buf: Buffer, gone: () => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number) => {
      if (gone()) return resolve();
      fs.write(fd, buf, off, buf.length - off, null, (err, n) => {
        if (err) return reject(err);
        if (off + n < buf.length) step(off + n);
        else resolve();
      });
    };
    step(0);
  });
}

/** One writer for the port, whatever the session: what one wrote is out before the next writes. */
class PortWriter {
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly fd: number,
    private readonly log: Logger,
  ) {}

  write(buf: Buffer, gone: () => boolean): Promise<void> {
    const done = this.tail.then(() => writeAll(this.fd, buf, gone));
    this.tail = done.catch((err: NodeJS.ErrnoException) => this.log.debug({ err: err.code ?? err.message }, 'agent channel write failed'));
    return this.tail;
  }
}

/** One host connection's worth of the port. */
class PortSession {
  readonly stream: Duplex;
  private gone = false;
  private wantMore: (() => void) | undefined;

  /** `onDestroyed`: the ttrpc connection gave up on this session (e.g. a bad frame). */
  constructor(writer: PortWriter, onDestroyed: () => void) {
    this.stream = new Duplex({
      read: () => {
        const w = this.wantMore;
        this.wantMore = undefined;
        w?.();
      },
      writev: (chunks, cb) => {
        // Answers to a host that has gone must not reach the next host's connection.
        if (this.gone) return cb();
        const buf = chunks.length === 1 ? (chunks[0]!.chunk as Buffer) : Buffer.concat(chunks.map((c) => c.chunk as Buffer));
        // A write already inside the kernel when the host leaves may still land in the next
        // connection; stopping at the next partial write keeps that to one kernel write, and a
        // host that said hello skips it.
        writer.write(buf, () => this.gone).then(() => cb(), () => cb());
      },
      destroy: (err, cb) => {
        this.gone = true;
        this.wantMore?.();
        onDestroyed();
        cb(err);
      },
    });
  }

  /** Resolves once the consumer wants more (back-pressure), or at once. */
  push(data: Buffer): Promise<void> {
    if (this.gone || this.stream.push(data)) return Promise.resolve();
    return new Promise((resolve) => (this.wantMore = resolve));
  }

  hostGone(): void {
    if (this.gone) return;
    this.gone = true;
    this.stream.push(null);
    // A consumer that stopped reading must not hold the port's reader.
    this.wantMore?.();
  }
}

/** Consecutive read errors after which the port counts as gone (e.g. the device was unplugged). */
const MAX_READ_ERRORS = 10;

export class AgentPort {
  private readonly fd: number;
  private readonly writer: PortWriter;
  private readonly splitter = new SessionSplitter();
  private session: PortSession | undefined;
  private sessions = 0;

  constructor(
    readonly file: string,
    private readonly onSession: (stream: Duplex) => void,
    private readonly log: Logger,
  ) {
    this.fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    this.writer = new PortWriter(this.fd, log);
  }

  /** Reads the port for the agent's life; rejects only when the port keeps failing. */
  async run(): Promise<never> {
    let idleMs = IDLE_POLL_MIN_MS;
    let errors = 0;
    let buf = Buffer.allocUnsafe(READ_SIZE);
    for (;;) {
      let n: number;
      try {
        n = await read(this.fd, buf);
        errors = 0;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EINTR' && code !== 'EAGAIN') {
          if (++errors >= MAX_READ_ERRORS) throw new Error(`agent channel ${this.file}: ${errors} reads failed in a row, last: ${code ?? (e as Error).message}`);
          this.log.warn({ err: code ?? (e as Error).message }, 'agent channel read failed');
        }
        n = 0;
      }
      if (n === 0) {
        if (this.session) {
          this.log.debug({ session: this.sessions }, 'host left the agent channel');
          this.endSession();
        }
        this.splitter.reset();
        await sleep(idleMs);
        idleMs = Math.min(idleMs * 2, IDLE_POLL_MAX_MS);
        continue;
      }
      idleMs = IDLE_POLL_MIN_MS;
      // Small reads are copied (a 256 KiB buffer should not stay pinned by a 40-byte request);
      // a large one is handed over and the next read gets a fresh buffer.
      let chunk: Buffer;
      if (n < READ_SIZE / 4) chunk = Buffer.from(buf.subarray(0, n));
      else {
        chunk = buf.subarray(0, n);
        buf = Buffer.allocUnsafe(READ_SIZE);
      }
      for (const piece of this.splitter.split(chunk)) {
        if ('hello' in piece) {
          // The host starts afresh: whatever the old session still had to say is dropped, and the
          // ack marks where the new one begins.
          if (this.session) this.endSession();
          this.startSession();
          this.log.debug({ session: this.sessions }, 'host said hello on the agent channel');
          await this.writer.write(ackFrame(piece.hello), () => false);
          continue;
        }
        await (this.session ?? this.startSession()).push(piece.data);
      }
    }
  }

  private startSession(): PortSession {
    const session: PortSession = new PortSession(this.writer, () => {
      // Until the host reconnects its bytes go nowhere: say so rather than drop them silently.
      if (this.session === session) this.log.warn({ session: this.sessions }, 'the ttrpc connection on the agent channel ended; dropping input until the host reconnects');
    });
    this.session = session;
    this.sessions++;
    this.log.debug({ session: this.sessions }, 'host connected to the agent channel');
    this.onSession(session.stream);
    return session;
  }

  private endSession(): void {
    this.session?.hostGone();
    this.session = undefined;
  }
}
