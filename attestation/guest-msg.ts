// The guest's side of a report request, as the SEV-SNP firmware ABI's guest messages define it:
// MSG_REPORT_REQ (REPORT_DATA[64], VMPL u32, reserved[28]) and MSG_REPORT_RSP (STATUS u32,
// REPORT_SIZE u32, reserved[24], the report), plus the certificate table SNP_GET_EXT_REPORT returns
// (GHCB spec: entries of GUID[16], offset u32, length u32, ended by an all-zero entry, then the DER
// certificates). On the emulated device each message travels in a frame: a u32 little-endian length
// then the message.
import { REPORT_DATA_SIZE, REPORT_SIZE } from './report.js';

export const MSG_REPORT_REQ_SIZE = 96;
export const MSG_REPORT_RSP_HEADER = 32;
/** STATUS values: 0 success, 0x16 (EINVAL-like) invalid parameters. */
export const STATUS_SUCCESS = 0;
export const STATUS_INVALID_PARAM = 0x16;
/** A frame is never larger than a response with a generous certificate table. */
export const MAX_FRAME = 64 * 1024;

// The GHCB spec's GUIDs for the certificates in the table.
export const CERT_GUID = {
  ark: 'c0b406a4-a803-4952-9743-3fb6014cd0ae',
  ask: '4ab7b379-bbac-4fe4-a02f-05aef327c782',
  vcek: '63da758d-e664-4564-adc5-f4b93be8accd',
} as const;

export function encodeReportReq(reportData: Buffer, vmpl = 0): Buffer {
  if (reportData.length !== REPORT_DATA_SIZE) throw new Error(`REPORT_DATA must be ${REPORT_DATA_SIZE} bytes`);
  const b = Buffer.alloc(MSG_REPORT_REQ_SIZE);
  reportData.copy(b, 0);
  b.writeUInt32LE(vmpl, 64);
  return b;
}

export function decodeReportReq(b: Buffer): { reportData: Buffer; vmpl: number } {
  if (b.length !== MSG_REPORT_REQ_SIZE) throw new Error(`MSG_REPORT_REQ is ${MSG_REPORT_REQ_SIZE} bytes, not ${b.length}`);
  if (b.subarray(68).some((x) => x !== 0)) throw new Error('MSG_REPORT_REQ reserved bytes are not zero');
  return { reportData: Buffer.from(b.subarray(0, 64)), vmpl: b.readUInt32LE(64) };
}

export function encodeReportRsp(status: number, report?: Buffer): Buffer {
  const b = Buffer.alloc(MSG_REPORT_RSP_HEADER + (report?.length ?? 0));
  b.writeUInt32LE(status, 0);
  b.writeUInt32LE(report?.length ?? 0, 4);
  report?.copy(b, MSG_REPORT_RSP_HEADER);
  return b;
}

export function decodeReportRsp(b: Buffer): { status: number; report: Buffer } {
  if (b.length < MSG_REPORT_RSP_HEADER) throw new Error('MSG_REPORT_RSP is truncated');
  const status = b.readUInt32LE(0);
  const size = b.readUInt32LE(4);
  if (status !== STATUS_SUCCESS) return { status, report: Buffer.alloc(0) };
  if (size !== REPORT_SIZE || b.length < MSG_REPORT_RSP_HEADER + size) throw new Error(`MSG_REPORT_RSP carries ${size} report bytes, not ${REPORT_SIZE}`);
  return { status, report: Buffer.from(b.subarray(MSG_REPORT_RSP_HEADER, MSG_REPORT_RSP_HEADER + size)) };
}

function guidBytes(g: string): Buffer {
  // GUIDs are stored mixed-endian: the first three groups little-endian.
  const h = g.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

export function encodeCertTable(certs: { ark: Buffer; ask: Buffer; vcek: Buffer }): Buffer {
  const entries = (['ark', 'ask', 'vcek'] as const).map((k) => ({ guid: guidBytes(CERT_GUID[k]), der: certs[k] }));
  const head = Buffer.alloc(24 * (entries.length + 1));
  let off = head.length;
  entries.forEach((e, i) => {
    e.guid.copy(head, i * 24);
    head.writeUInt32LE(off, i * 24 + 16);
    head.writeUInt32LE(e.der.length, i * 24 + 20);
    off += e.der.length;
  });
  return Buffer.concat([head, ...entries.map((e) => e.der)]);
}

export function decodeCertTable(b: Buffer): { ark?: Buffer; ask?: Buffer; vcek?: Buffer } {
  const out: { ark?: Buffer; ask?: Buffer; vcek?: Buffer } = {};
  const byGuid = new Map(Object.entries(CERT_GUID).map(([k, g]) => [guidBytes(g).toString('hex'), k as keyof typeof CERT_GUID]));
  for (let at = 0; at + 24 <= b.length; at += 24) {
    const guid = b.subarray(at, at + 16);
    if (guid.every((x) => x === 0)) return out;
    const off = b.readUInt32LE(at + 16);
    const len = b.readUInt32LE(at + 20);
    if (off + len > b.length) throw new Error('certificate table entry points past the table');
    const k = byGuid.get(guid.toString('hex'));
    if (k) out[k] = Buffer.from(b.subarray(off, off + len));
  }
  throw new Error('certificate table has no terminating entry');
}

export function frame(msg: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32LE(msg.length, 0);
  return Buffer.concat([h, msg]);
}

/** Splits a byte stream into frames; refuses a frame above `max` (the peer is not trusted). */
export class FrameReader {
  private buf = Buffer.alloc(0);
  constructor(private readonly max = MAX_FRAME) {}

  push(chunk: Buffer): Buffer[] {
    this.buf = Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      if (this.buf.length < 4) return out;
      const n = this.buf.readUInt32LE(0);
      if (n > this.max) throw new Error(`frame of ${n} bytes is larger than ${this.max}`);
      if (this.buf.length < 4 + n) return out;
      out.push(Buffer.from(this.buf.subarray(4, 4 + n)));
      this.buf = this.buf.subarray(4 + n);
    }
  }
}
