// The guest's report device, behind one interface: 64 bytes of REPORT_DATA in, the signed report and
// the VCEK's chain out (SNP_GET_EXT_REPORT's contract). Implementations:
//  - EmulatedSnpDevice: the emulated firmware over the daemon's per-VM socket (the host's end; in
//    the guest the same stream is the virtio-serial port katats.snp.0, port-device.ts).
//  - SnpPortDevice (port-device.ts): the guest's end.
//  - ConfigfsTsmDevice: a real SEV-SNP guest's kernel interface (configfs-tsm, Linux 6.7+:
//    /sys/kernel/config/tsm/report/<name>/{inblob,outblob,auxblob}); /dev/sev-guest's
//    SNP_GET_EXT_REPORT ioctl returns the same report and table. Not exercised here: this machine
//    has no SEV-SNP hardware.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { withTimeout } from '../sys/timeout.js';
import { decodeCertTable, decodeReportRsp, encodeReportReq, frame, FrameReader, STATUS_SUCCESS } from './guest-msg.js';
import { REPORT_DATA_SIZE } from './report.js';

export interface ExtReport {
  report: Buffer;
  /** DER certificates; a real host may leave them out (the verifier then fetches them from AMD's KDS). */
  certs: { ark?: Buffer; ask?: Buffer; vcek?: Buffer };
}

export interface ReportDevice {
  getReport(reportData: Buffer): Promise<ExtReport>;
}

export const REPORT_TIMEOUT_MS = 10_000;

export class EmulatedSnpDevice implements ReportDevice {
  constructor(
    /** The per-VM socket (host side; in the guest the same stream is port katats.snp.0, see port-device.ts). */
    private readonly portPath: string,
    private readonly timeoutMs = REPORT_TIMEOUT_MS,
  ) {}

  async getReport(reportData: Buffer): Promise<ExtReport> {
    if (reportData.length !== REPORT_DATA_SIZE) throw new Error(`REPORT_DATA must be ${REPORT_DATA_SIZE} bytes`);
    const req = frame(encodeReportReq(reportData));
    const conn = net.connect(this.portPath);
    const frames: Buffer[] = [];
    const reader = new FrameReader();
    const done = new Promise<void>((resolve, reject) => {
      conn.on('error', reject);
      conn.on('close', () => reject(new Error('the SNP report port closed before answering')));
      conn.on('data', (d: Buffer | string) => {
        try {
          frames.push(...reader.push(Buffer.from(d)));
        } catch (e) {
          reject(e as Error);
        }
        if (frames.length >= 2) resolve();
      });
      conn.once('connect', () => conn.write(req));
    });
    try {
      await withTimeout(done, this.timeoutMs, { code: 'KATATS_SNP_REPORT_TIMEOUT', what: 'SNP report request', onTimeout: () => conn.destroy() });
    } finally {
      conn.destroy();
    }
    const rsp = decodeReportRsp(frames[0]!);
    if (rsp.status !== STATUS_SUCCESS) throw new Error(`the SNP firmware refused the report request (status 0x${rsp.status.toString(16)})`);
    return { report: rsp.report, certs: decodeCertTable(frames[1]!) };
  }
}

export class ConfigfsTsmDevice implements ReportDevice {
  constructor(private readonly root = '/sys/kernel/config/tsm/report') {}

  async getReport(reportData: Buffer): Promise<ExtReport> {
    if (reportData.length !== REPORT_DATA_SIZE) throw new Error(`REPORT_DATA must be ${REPORT_DATA_SIZE} bytes`);
    const dir = fs.mkdtempSync(path.join(this.root, 'katats-'));
    try {
      fs.writeFileSync(path.join(dir, 'inblob'), reportData);
      const report = fs.readFileSync(path.join(dir, 'outblob'));
      const aux = path.join(dir, 'auxblob');
      const table = fs.existsSync(aux) ? fs.readFileSync(aux) : Buffer.alloc(0);
      return { report, certs: table.length ? decodeCertTable(table) : {} };
    } finally {
      fs.rmdirSync(dir);
    }
  }
}
