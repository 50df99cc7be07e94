// The ttrpc envelope (ttrpc.Request / ttrpc.Response, schema in proto/schema/ttrpc/request.proto)
// encoded with protobufjs' Reader/Writer directly: it wraps every call, so it skips reflection.
// test/ttrpc/envelope.test.ts checks these bytes against the reflected schema.
import protobuf from 'protobufjs';
import type { StatusDetail } from './status.js';

const { Reader, Writer } = protobuf;

export type Metadata = Map<string, string[]>;

export interface RequestEnvelope {
  service: string;
  method: string;
  payload: Uint8Array;
  timeoutNano: number;
  metadata: Metadata;
}

export interface ResponseStatus {
  code: number;
  message: string;
  details: StatusDetail[];
}

export interface ResponseEnvelope {
  status: ResponseStatus | null;
  payload: Uint8Array;
}

const EMPTY = new Uint8Array(0);

export function encodeRequest(r: RequestEnvelope): Uint8Array {
  const w = Writer.create();
  if (r.service) w.uint32(10).string(r.service);
  if (r.method) w.uint32(18).string(r.method);
  if (r.payload.length) w.uint32(26).bytes(r.payload);
  if (r.timeoutNano) w.uint32(32).int64(r.timeoutNano);
  for (const [key, values] of r.metadata) {
    for (const value of values) {
      w.uint32(42).fork();
      if (key) w.uint32(10).string(key);
      if (value) w.uint32(18).string(value);
      w.ldelim();
    }
  }
  return w.finish();
}

export function decodeRequest(buf: Uint8Array): RequestEnvelope {
  const r = Reader.create(buf);
  const out: RequestEnvelope = { service: '', method: '', payload: EMPTY, timeoutNano: 0, metadata: new Map() };
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag) {
      case 10: out.service = r.string(); break;
      case 18: out.method = r.string(); break;
      case 26: out.payload = r.bytes(); break;
      case 32: out.timeoutNano = longToNumber(r.int64()); break;
      case 42: {
        const end = r.uint32() + r.pos;
        if (end > r.len) throw new RangeError('metadata entry runs past the end of the request');
        let key = '';
        let value = '';
        while (r.pos < end) {
          const t = r.uint32();
          if (t === 10) key = r.string();
          else if (t === 18) value = r.string();
          else r.skipType(t & 7);
        }
        const list = out.metadata.get(key);
        if (list) list.push(value);
        else out.metadata.set(key, [value]);
        break;
      }
      default: skip(r, tag);
    }
  }
  return out;
}

export function encodeResponse(res: ResponseEnvelope): Uint8Array {
  const w = Writer.create();
  const s = res.status;
  if (s && (s.code !== 0 || s.message || s.details.length)) {
    w.uint32(10).fork();
    if (s.code) w.uint32(8).int32(s.code);
    if (s.message) w.uint32(18).string(s.message);
    for (const d of s.details) {
      w.uint32(26).fork();
      if (d.type_url) w.uint32(10).string(d.type_url);
      if (d.value.length) w.uint32(18).bytes(d.value);
      w.ldelim();
    }
    w.ldelim();
  }
  if (res.payload.length) w.uint32(18).bytes(res.payload);
  return w.finish();
}

export function decodeResponse(buf: Uint8Array): ResponseEnvelope {
  const r = Reader.create(buf);
  const out: ResponseEnvelope = { status: null, payload: EMPTY };
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag === 10) out.status = decodeStatus(r, r.uint32() + r.pos);
    else if (tag === 18) out.payload = r.bytes();
    else skip(r, tag);
  }
  return out;
}

function decodeStatus(r: protobuf.Reader, end: number): ResponseStatus {
  if (end > r.len) throw new RangeError('status runs past the end of the response');
  const s: ResponseStatus = { code: 0, message: '', details: [] };
  while (r.pos < end) {
    const tag = r.uint32();
    if (tag === 8) s.code = r.int32();
    else if (tag === 18) s.message = r.string();
    else if (tag === 26) {
      const dEnd = r.uint32() + r.pos;
      if (dEnd > end) throw new RangeError('status detail runs past the end of the status');
      const d: StatusDetail = { type_url: '', value: EMPTY };
      while (r.pos < dEnd) {
        const t = r.uint32();
        if (t === 10) d.type_url = r.string();
        else if (t === 18) d.value = r.bytes();
        else skip(r, t);
      }
      s.details.push(d);
    } else skip(r, tag);
  }
  return s;
}

function skip(r: protobuf.Reader, tag: number): void {
  // Field number 0 is never valid; protobufjs would otherwise loop on a zero tag.
  if (tag >>> 3 === 0) throw new RangeError(`invalid field number 0 at offset ${r.pos}`);
  r.skipType(tag & 7);
}

// Whether protobufjs hands out Long objects depends on global configuration; accept both.
function longToNumber(v: number | protobuf.Long): number {
  return typeof v === 'number' ? v : protobuf.util.LongBits.from(v).toNumber(false);
}
