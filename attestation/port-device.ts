// The guest's report device on the VM's dedicated virtio-serial port (/dev/virtio-ports/katats.snp.0,
// which QEMU connects to the SNP daemon's socket made for this VM). Written for node 18 in the guest.
//
// The port is one byte stream for the VM's life, opened once and never closed (closing it makes the
// guest kernel drop what the host already sent; see agent/channel.ts). Node cannot poll a character
// device, so one read at a time runs in libuv's thread pool for as long as the device is in use.
// Requests go one at a time. A request that timed out may be answered later: every answer is matched
// to its request by REPORT_DATA, which the firmware copies into the report, and an answer to an
// earlier request is dropped (with its certificate table).
import fs from 'node:fs';
import { decodeCertTable, decodeReportRsp, encodeReportReq, frame, FrameReader, STATUS_SUCCESS } from './guest-msg.js';
import { OFF, REPORT_DATA_SIZE } from './report.js';
import type { ExtReport, ReportDevice } from './device.js';
import { REPORT_TIMEOUT_MS } from './device.js';
import { withTimeout } from '../sys/timeout.js';

export const SNP_PORT_NAME = 'katats.snp.0';
export const SNP_PORT = `/dev/virtio-ports/${SNP_PORT_NAME}`;

/**
 * The port's device: udev's link when there is one, else found by name in sysfs as the guest's init
 * finds the agent channel (the guest has no udev): /sys/class/virtio-ports/vportNpM/name.
 */
export function findSnpPort(sysfs = '/sys/class/virtio-ports', dev = '/dev'): string | undefined {
  if (fs.existsSync(SNP_PORT)) return SNP_PORT;
  let ports: string[];
  try {
    ports = fs.readdirSync(sysfs);
  } catch {
    return undefined;
  }
  for (const p of ports) {
    try {
      if (fs.readFileSync(`${sysfs}/${p}/name`, 'utf8').trim() === SNP_PORT_NAME && /^vport\d+p\d+$/.test(p)) return `${dev}/${p}`;
    } catch {
      // a port without a name
    }
  }
  return undefined;
}
const READ_SIZE = 64 * 1024;
/** While no host end is connected a read returns 0 at once: poll calmly. */
const IDLE_POLL_MS = 20;
const MAX_QUEUED_FRAMES = 8;

export class SnpPortError extends Error {
  readonly code = 'KATATS_SNP_PORT';
}

/** Request/answer matching over any byte stream carrying the framed guest messages. */
export class SnpStreamSession {
  private readonly reader = new FrameReader();
  /** Frames not yet consumed: an answer is two (MSG_REPORT_RSP, the certificate table). */
  private readonly frames: Buffer[] = [];
  private waiter?: () => void;
  private tail: Promise<unknown> = Promise.resolve();
  private broken?: Error;
  /** The request allowed to take frames: one that timed out must not take the next one's. */
  private current = 0;

  constructor(
    private readonly write: (b: Buffer) => Promise<void>,
    private readonly timeoutMs = REPORT_TIMEOUT_MS,
  ) {}

  /** Bytes from the stream. A frame larger than any answer means the stream cannot be trusted: it fails for good. */
  push(chunk: Buffer): void {
    try {
      this.frames.push(...this.reader.push(chunk));
      // Answers nobody waits for (the host's, unasked) are dropped a pair at a time beyond a few.
      while (this.frames.length > MAX_QUEUED_FRAMES) this.frames.splice(0, 2);
    } catch (e) {
      this.broken = new SnpPortError(`the SNP port sent a bad frame: ${(e as Error).message}`);
    }
    this.waiter?.();
  }

  fail(e: Error): void {
    this.broken = e;
    this.waiter?.();
  }

  private next(me: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (me !== this.current) return reject(new SnpPortError('report request superseded'));
        if (this.broken) return reject(this.broken);
        const f = this.frames.shift();
        if (!f) return;
        this.waiter = undefined;
        resolve(f);
      };
      this.waiter = check;
      check();
    });
  }

  getReport(reportData: Buffer): Promise<ExtReport> {
    if (reportData.length !== REPORT_DATA_SIZE) return Promise.reject(new Error(`REPORT_DATA must be ${REPORT_DATA_SIZE} bytes`));
    const run = this.tail.then(
      () => this.request(reportData),
      () => this.request(reportData),
    );
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async request(reportData: Buffer): Promise<ExtReport> {
    const me = ++this.current;
    const exchange = async (): Promise<ExtReport> => {
      await this.write(frame(encodeReportReq(reportData)));
      for (;;) {
        const rsp = decodeReportRsp(await this.next(me));
        const table = await this.next(me);
        if (rsp.status !== STATUS_SUCCESS) throw new SnpPortError(`the SNP firmware refused the report request (status 0x${rsp.status.toString(16)})`);
        // An answer to an earlier request that timed out: not ours.
        if (!rsp.report.subarray(OFF.reportData, OFF.reportData + REPORT_DATA_SIZE).equals(reportData)) continue;
        return { report: rsp.report, certs: decodeCertTable(table) };
      }
    };
    try {
      return await withTimeout(exchange(), this.timeoutMs, { code: 'KATATS_SNP_REPORT_TIMEOUT', what: 'SNP report request on the report port' });
    } finally {
      this.current++;
      this.waiter = undefined;
    }
  }
}

/** The ReportDevice on the VM's virtio-serial port. */
export class SnpPortDevice implements ReportDevice {
  private session?: SnpStreamSession;

  constructor(
    private readonly port = SNP_PORT,
    private readonly timeoutMs = REPORT_TIMEOUT_MS,
  ) {}

  private open(): SnpStreamSession {
    if (this.session) return this.session;
    const fd = fs.openSync(this.port, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
    const write = (b: Buffer) =>
      new Promise<void>((resolve, reject) => {
        const step = (off: number) =>
          fs.write(fd, b, off, b.length - off, null, (err, n) => {
            if (err) return reject(err);
            if (off + n < b.length) step(off + n);
            else resolve();
          });
        step(0);
      });
    const session = new SnpStreamSession(write, this.timeoutMs);
    const buf = Buffer.alloc(READ_SIZE);
    const loop = () =>
      fs.read(fd, buf, 0, buf.length, null, (err, n) => {
        if (err) return session.fail(new SnpPortError(`reading ${this.port}: ${err.message}`));
        if (n > 0) session.push(Buffer.from(buf.subarray(0, n)));
        if (n === 0) setTimeout(loop, IDLE_POLL_MS);
        else loop();
      });
    loop();
    this.session = session;
    return session;
  }

  getReport(reportData: Buffer): Promise<ExtReport> {
    return this.open().getReport(reportData);
  }
}
