// One HTTP(S) request of the guest's KBS client, on node:http/https rather than fetch: node's fetch
// (undici) parses HTTP with a WebAssembly build of llhttp, and the guest's node runs --jitless on TCG
// (no WebAssembly), where the first fetch throws from undici's lazy loader, outside any caller's
// catch, and ends the agent. Bounded: the whole exchange has a time limit, the answer a size limit.
import http from 'node:http';
import https from 'node:https';
import { TimeoutError } from '../sys/timeout.js';

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class AnswerTooLarge extends Error {
  constructor(
    readonly status: number,
    readonly maxBytes: number,
  ) {
    super(`the answer is larger than ${maxBytes} bytes`);
  }
}

export interface HttpRequestOptions {
  method: string;
  headers: Record<string, string>;
  body?: string;
  timeoutMs: number;
  /** The TimeoutError's code when the limit passes. */
  timeoutCode: string;
  maxBytes: number;
}

export function httpRequest(url: URL, o: HttpRequestOptions): Promise<HttpAnswer> {
  return new Promise<HttpAnswer>((resolve, reject) => {
    let settled = false;
    const headers = o.body === undefined ? o.headers : { ...o.headers, 'content-length': String(Buffer.byteLength(o.body)) };
    const req = (url.protocol === 'https:' ? https : http).request(url, { method: o.method, headers }, (res) => {
      const status = res.statusCode ?? 0;
      if (Number(res.headers['content-length'] ?? '0') > o.maxBytes) return fail(new AnswerTooLarge(status, o.maxBytes));
      const chunks: Buffer[] = [];
      let total = 0;
      res.on('data', (c: Buffer) => {
        total += c.length;
        if (total > o.maxBytes) fail(new AnswerTooLarge(status, o.maxBytes));
        else chunks.push(c);
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ status, headers: res.headers, body: Buffer.concat(chunks) });
      });
      res.on('error', fail);
    });
    function fail(e: Error): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      reject(e);
    }
    // Declared after the request: fail() runs only from its events or this timer, never before this line.
    const timer = setTimeout(() => fail(new TimeoutError(o.timeoutCode, `${o.method} ${url.origin}${url.pathname}`, o.timeoutMs)), o.timeoutMs);
    timer.unref();
    req.on('error', fail);
    req.end(o.body);
  });
}
