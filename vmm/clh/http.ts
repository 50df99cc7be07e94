// HTTP/1.1 over a unix socket, one connection per call (Connection: close), the way
// cloud-hypervisor's API is spoken. Written here rather than taken from undici or node:http because
// of vm.add-net: its TAP fds must travel as SCM_RIGHTS on the same write as the request, which only
// the native helper can do (vmm/native/katats-fds.c), so the request bytes must be ours to hand to
// it; it connects, sends them with the fds, and gives the answer back on its stdout. The parser is
// small and bounded: a status line, headers (64 KiB), a Content-Length or chunked body (1 MiB).
import { spawn } from 'node:child_process';
import net from 'node:net';
import { TimeoutError } from '../../sys/timeout.js';
import { findFdsHelper } from '../native.js';

export const MAX_HEAD_BYTES = 64 << 10;
export const DEFAULT_MAX_BODY_BYTES = 1 << 20;

/** An fd to send with the request: one this process holds, a TAP the helper opens, or one taken from another process. */
export type FdSource = { fd: number } | { tap: string } | { take: string };

export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export interface HttpRequestOptions {
  timeoutMs: number;
  /** TimeoutError code when the call runs out of time */
  code: string;
  /** what the call is, in words (for errors) */
  what: string;
  fds?: FdSource[];
  maxBodyBytes?: number;
  headers?: Record<string, string>;
}

export class HttpProtocolError extends Error {
  override readonly name = 'HttpProtocolError';
}

export function encodeRequest(method: string, urlPath: string, body: Buffer | undefined, headers: Record<string, string> = {}): Buffer {
  const lines = [`${method} ${urlPath} HTTP/1.1`, 'Host: localhost', 'Accept: application/json', 'Connection: close'];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  if (body) lines.push('Content-Type: application/json', `Content-Length: ${body.length}`);
  const head = Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
  return body ? Buffer.concat([head, body]) : head;
}

type Parsed = { done: false } | { done: true; response: HttpResponse };

/** Parses what has arrived so far; `ended`: the peer closed, so a body without a length ends here. */
export function parseResponse(buf: Buffer, ended: boolean, maxBody = DEFAULT_MAX_BODY_BYTES): Parsed {
  const headEnd = buf.indexOf('\r\n\r\n');
  if (headEnd < 0) {
    if (buf.length > MAX_HEAD_BYTES) throw new HttpProtocolError(`response head larger than ${MAX_HEAD_BYTES} bytes`);
    if (ended) throw new HttpProtocolError(buf.length ? 'connection closed inside the response head' : 'connection closed without a response');
    return { done: false };
  }
  const [statusLine, ...headerLines] = buf.subarray(0, headEnd).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine ?? '');
  if (!m) throw new HttpProtocolError(`not an HTTP/1.x status line: ${JSON.stringify((statusLine ?? '').slice(0, 80))}`);
  const status = Number(m[1]);
  const headers: Record<string, string> = {};
  for (const l of headerLines) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  const rest = buf.subarray(headEnd + 4);
  if (status === 204 || status === 304 || (status >= 100 && status < 200)) return { done: true, response: { status, headers, body: Buffer.alloc(0) } };
  if (headers['transfer-encoding']?.toLowerCase().includes('chunked')) {
    const chunks: Buffer[] = [];
    let off = 0;
    let total = 0;
    for (;;) {
      const eol = rest.indexOf('\r\n', off);
      if (eol < 0) return incomplete(ended, 'chunk size');
      const size = parseInt(rest.subarray(off, eol).toString('latin1').split(';')[0]!, 16);
      if (!Number.isFinite(size) || size < 0) throw new HttpProtocolError('bad chunk size');
      if (size === 0) return { done: true, response: { status, headers, body: Buffer.concat(chunks) } };
      total += size;
      if (total > maxBody) throw new HttpProtocolError(`response body larger than ${maxBody} bytes`);
      if (rest.length < eol + 2 + size + 2) return incomplete(ended, 'chunk');
      chunks.push(rest.subarray(eol + 2, eol + 2 + size));
      off = eol + 2 + size + 2;
    }
  }
  const cl = headers['content-length'];
  if (cl !== undefined) {
    const n = Number(cl);
    if (!Number.isInteger(n) || n < 0) throw new HttpProtocolError(`bad Content-Length ${cl}`);
    if (n > maxBody) throw new HttpProtocolError(`response body of ${n} bytes is larger than ${maxBody}`);
    if (rest.length < n) return incomplete(ended, 'body');
    return { done: true, response: { status, headers, body: Buffer.from(rest.subarray(0, n)) } };
  }
  if (rest.length > maxBody) throw new HttpProtocolError(`response body larger than ${maxBody} bytes`);
  return ended ? { done: true, response: { status, headers, body: Buffer.from(rest) } } : { done: false };
}

function incomplete(ended: boolean, what: string): Parsed {
  if (ended) throw new HttpProtocolError(`connection closed inside the response ${what}`);
  return { done: false };
}

/** One request on a fresh connection to `socketPath`; resolves with the whole response. */
export function httpRequest(socketPath: string, method: string, urlPath: string, body: Buffer | undefined, o: HttpRequestOptions): Promise<HttpResponse> {
  return new Promise<HttpResponse>((resolve, reject) => {
    const maxBody = o.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    const bytes = encodeRequest(method, urlPath, body, o.headers);
    let sock: net.Socket | undefined;
    const proc: { helper?: ReturnType<typeof spawn> } = {};
    let got: Buffer = Buffer.alloc(0);
    let settled = false;
    const finish = (err: Error | undefined, res?: HttpResponse) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock?.destroy();
      if (proc.helper && proc.helper.exitCode === null) proc.helper.kill('SIGKILL');
      if (err) reject(err);
      else resolve(res!);
    };
    const timer = setTimeout(() => finish(new TimeoutError(o.code, o.what, o.timeoutMs)), o.timeoutMs);
    timer.unref();
    const step = (ended: boolean) => {
      try {
        const p = parseResponse(got, ended, maxBody);
        if (p.done) finish(undefined, p.response);
      } catch (e) {
        finish(e as Error);
      }
    };
    const onData = (d: Buffer) => {
      got = got.length ? Buffer.concat([got, d]) : d;
      step(false);
    };
    if (!o.fds?.length) {
      const s = net.connect(socketPath);
      sock = s;
      s.on('data', onData);
      s.on('end', () => step(true));
      s.on('close', () => step(true));
      s.on('error', (e) => finish(new Error(`${o.what}: ${e.message}`)));
      s.once('connect', () => s.write(bytes));
      return;
    }
    // The helper connects, writes the request with the fds in one sendmsg, and hands back the answer on its stdout.
    const args = ['send', '--connect', socketPath];
    const stdio: (number | 'pipe' | 'ignore')[] = ['pipe', 'pipe', 'pipe'];
    for (const f of o.fds) {
      if ('fd' in f) {
        args.push('--fd', String(stdio.length));
        stdio.push(f.fd);
      } else if ('tap' in f) args.push('--tap', f.tap);
      else args.push('--take', f.take);
    }
    let bin: string;
    try {
      bin = findFdsHelper();
    } catch (e) {
      finish(e as Error);
      return;
    }
    const h = spawn(bin, args, { stdio });
    proc.helper = h;
    let errText = '';
    h.stdout!.on('data', onData);
    h.stderr!.on('data', (d: Buffer) => (errText = (errText + d.toString()).slice(-2000)));
    h.on('error', (e) => finish(new Error(`${o.what}: cannot run ${bin}: ${e.message}`)));
    h.on('close', (code) => {
      if (code !== 0) finish(new Error(`${o.what}: sending the request with its fds failed: ${errText.trim() || `exit ${code}`}`));
      else step(true);
    });
    h.stdin!.on('error', () => {});
    h.stdin!.end(bytes);
  });
}
