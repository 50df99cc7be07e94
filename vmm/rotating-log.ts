// A log file fed by the guest (its console, its agent's log port), which is hostile: whatever it
// writes is capped in rate (a token bucket: bytes per second with a burst; beyond it bytes are
// dropped and counted), in memory (what waits for the disk is bounded the same way) and on disk
// (the file rotates at maxFileBytes, keeping `rotatedFiles` older ones as FILE.1, FILE.2, ...).
// Drops are said once per interval, in the file itself and in the driver's log.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { TokenBucket } from './token-bucket.js';

export interface LogFileLimits {
  /** Size at which the file is rotated. */
  maxFileBytes: number;
  /** Older files kept (FILE.1 is the newest of them); 0: the file is truncated instead. */
  rotatedFiles: number;
  /** Sustained bytes per second written; more is dropped and counted. */
  bytesPerSec: number;
  /** Bytes that may come at once (boot chatter) before the rate applies. */
  burstBytes: number;
  /** How often drops are reported, at most. */
  reportIntervalMs: number;
}

export const DEFAULT_LOG_FILE_LIMITS: LogFileLimits = {
  maxFileBytes: 8 << 20,
  rotatedFiles: 2,
  bytesPerSec: 256 << 10,
  burstBytes: 2 << 20,
  reportIntervalMs: 10_000,
};

export interface LogFileStats {
  written: number;
  dropped: number;
  rotations: number;
}

export class RotatingLog {
  private fd: number | undefined;
  private size = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private writing: Promise<void> | undefined;
  private closed = false;
  private readonly bucket: TokenBucket;
  private droppedSinceReport = 0;
  private lastReport = Date.now();
  private reportTimer: NodeJS.Timeout | undefined;
  private failed = false;
  private atLineStart = true;
  readonly stats: LogFileStats = { written: 0, dropped: 0, rotations: 0 };

  constructor(
    readonly file: string,
    readonly limits: LogFileLimits,
    private readonly log: Logger,
    /** What the file holds, for the drop notes ("guest console", "agent log"). */
    private readonly what: string,
  ) {
    this.bucket = new TokenBucket(limits.bytesPerSec, limits.burstBytes);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.fd = fs.openSync(file, 'a', 0o600);
    this.size = fs.fstatSync(this.fd).size;
  }

  /** Takes what the rate allows of `chunk`; the rest is dropped and counted. */
  write(chunk: Buffer): void {
    if (this.closed || chunk.length === 0) return;
    let n = this.bucket.take(chunk.length);
    // A disk slower than the rate must not make us hold more than one burst either.
    n = Math.min(n, Math.max(0, this.limits.burstBytes - this.pendingBytes));
    if (n < chunk.length) this.drop(chunk.length - n);
    if (n > 0) this.enqueue(n === chunk.length ? chunk : chunk.subarray(0, n));
  }

  /** A line of our own (e.g. a drop note): not charged to the guest's rate. */
  note(text: string): void {
    if (this.closed) return;
    // On a line of its own, even in the middle of a guest's line.
    this.enqueue(Buffer.from(`${this.atLineStart ? '' : '\n'}${text}${text.endsWith('\n') ? '' : '\n'}`));
  }

  /** Writes what is pending, says what was dropped, closes the file. */
  async close(): Promise<void> {
    if (this.closed) return this.writing;
    this.report();
    this.closed = true;
    if (this.reportTimer) clearTimeout(this.reportTimer);
    await this.writing;
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }

  private drop(n: number): void {
    this.stats.dropped += n;
    this.droppedSinceReport += n;
    if (this.reportTimer) return;
    const wait = Math.max(0, this.lastReport + this.limits.reportIntervalMs - Date.now());
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined;
      this.report();
    }, wait);
    this.reportTimer.unref();
  }

  private report(): void {
    if (this.droppedSinceReport === 0) return;
    const secs = Math.max(1, Math.round((Date.now() - this.lastReport) / 1000));
    const n = this.droppedSinceReport;
    this.droppedSinceReport = 0;
    this.lastReport = Date.now();
    this.log.warn({ file: this.file, droppedBytes: n, seconds: secs, bytesPerSec: this.limits.bytesPerSec }, `${this.what} over its rate: output dropped`);
    this.note(`[katats] ${this.what}: ${n} bytes dropped in the last ${secs} s (over ${this.limits.bytesPerSec} bytes/s)`);
  }

  private enqueue(b: Buffer): void {
    if (this.failed) return;
    this.atLineStart = b[b.length - 1] === 0x0a;
    this.pending.push(b);
    this.pendingBytes += b.length;
    this.writing ??= this.pump().finally(() => (this.writing = undefined));
  }

  private async pump(): Promise<void> {
    while (this.pending.length > 0) {
      const buf = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
      this.pending = [];
      this.pendingBytes = 0;
      try {
        await this.append(buf);
      } catch (err) {
        // A full or broken disk: keep the VM going, stop writing this file.
        this.failed = true;
        this.pending = [];
        this.pendingBytes = 0;
        this.log.error({ err, file: this.file }, `cannot write the ${this.what} file; no more of it is kept`);
        return;
      }
    }
  }

  private async append(buf: Buffer): Promise<void> {
    let off = 0;
    while (off < buf.length) {
      const room = this.limits.maxFileBytes - this.size;
      let n = Math.min(room, buf.length - off);
      if (n < buf.length - off) {
        // Rotate at the last line end that fits, unless the file would stay empty.
        const nl = buf.lastIndexOf(0x0a, off + n - 1);
        if (nl >= off) n = nl + 1 - off;
        else if (this.size > 0) n = 0;
      }
      if (n > 0) {
        await writeAll(this.fd!, buf.subarray(off, off + n));
        off += n;
        this.size += n;
        this.stats.written += n;
      }
      if (off < buf.length) this.rotate();
    }
  }

  private rotate(): void {
    fs.closeSync(this.fd!);
    this.fd = undefined;
    if (this.limits.rotatedFiles > 0) {
      for (let i = this.limits.rotatedFiles - 1; i >= 1; i--) renameIfThere(`${this.file}.${i}`, `${this.file}.${i + 1}`);
      fs.renameSync(this.file, `${this.file}.1`);
    }
    this.fd = fs.openSync(this.file, 'w', 0o600);
    this.size = 0;
    this.stats.rotations++;
  }
}

function renameIfThere(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

function writeAll(fd: number, buf: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (off: number) =>
      fs.write(fd, buf, off, buf.length - off, null, (err, n) => {
        if (err) reject(err);
        else if (off + n < buf.length) step(off + n);
        else resolve();
      });
    step(0);
  });
}
