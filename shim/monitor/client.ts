// The monitor asking one shim for its SandboxReport over the shim's HTTP unix socket. A shim is a
// process of its own that may be stuck, dying or broken: the whole exchange has one deadline, the
// headers and the body have caps, and whatever comes back is checked against the schema before
// the monitor believes any of it. Every failure is a ShimScrapeError naming its reason.
import http from 'node:http';
import type net from 'node:net';
import { Ajv } from 'ajv';
import { REPORT_PATH, REPORT_SCHEMA, type SandboxReport } from './report.js';

/** A report is a few hundred bytes; anything past this is not one. */
export const MAX_REPORT_BYTES = 64 * 1024;
/** Per shim, as kata-monitor gives each shim (3 s): one stuck shim costs a scrape this much, no more. */
export const SHIM_SCRAPE_TIMEOUT_MS = 3000;
export const SHIM_SCRAPE_TIMEOUT = 'KATATS_MONITOR_SHIM_TIMEOUT';

export type ScrapeFailure = 'timeout' | 'refused' | 'too_large' | 'bad_response' | 'io';
export const SCRAPE_FAILURES: readonly ScrapeFailure[] = ['timeout', 'refused', 'too_large', 'bad_response', 'io'];

export class ShimScrapeError extends Error {
  override readonly name = 'ShimScrapeError';
  constructor(
    readonly reason: ScrapeFailure,
    message: string,
    /** The connection was refused or the socket is gone: the shim may simply have died. */
    readonly noListener = false,
  ) {
    super(message);
  }
}

const ajv = new Ajv({ allErrors: false });
const validate = ajv.compile<SandboxReport>(REPORT_SCHEMA);

/** The report of the shim serving `socket`, or a ShimScrapeError. */
export function fetchReport(socket: string, o: { timeoutMs?: number; maxBytes?: number } = {}): Promise<SandboxReport> {
  const timeoutMs = o.timeoutMs ?? SHIM_SCRAPE_TIMEOUT_MS;
  const maxBytes = o.maxBytes ?? MAX_REPORT_BYTES;
  return new Promise<SandboxReport>((resolve, reject) => {
    let settled = false;
    let conn: net.Socket | undefined;
    const finish = (e: ShimScrapeError | undefined, r?: SandboxReport) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      // After a parse error the request lets go of its socket without closing it: closed here, or
      // a shim speaking no HTTP would keep a connection of the monitor's open.
      conn?.destroy();
      if (e) reject(e);
      else resolve(r!);
    };
    const timer = setTimeout(() => finish(new ShimScrapeError('timeout', `${socket}: no report within ${timeoutMs} ms (${SHIM_SCRAPE_TIMEOUT})`)), timeoutMs);
    timer.unref();
    const req = http.request({ socketPath: socket, path: REPORT_PATH, method: 'GET', maxHeaderSize: 8192, agent: false, headers: { host: 'katats-shim' } }, (res) => {
      if (res.statusCode !== 200) {
        finish(new ShimScrapeError('bad_response', `${socket}: HTTP ${res.statusCode}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) {
          finish(new ShimScrapeError('too_large', `${socket}: report larger than ${maxBytes} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on('error', (e) => finish(new ShimScrapeError('io', `${socket}: ${e.message}`)));
      res.on('end', () => {
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (e) {
          finish(new ShimScrapeError('bad_response', `${socket}: not JSON: ${(e as Error).message}`));
          return;
        }
        if (!validate(body)) {
          finish(new ShimScrapeError('bad_response', `${socket}: not a sandbox report: ${ajv.errorsText(validate.errors)}`));
          return;
        }
        finish(undefined, body);
      });
    });
    req.once('socket', (s) => (conn = s));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') finish(new ShimScrapeError('refused', `${socket}: ${e.code}`, true));
      // Hung up before any answer: also what a shim killed while the monitor connects looks like
      // (the kernel closes its listening socket after the connection was queued on it).
      else if (e.code === 'ECONNRESET' || e.code === 'EPIPE') finish(new ShimScrapeError('io', `${socket}: hung up before answering (${e.code})`, true));
      // The HTTP parser's words for a peer that does not speak HTTP (or sends huge headers).
      else if (e.code?.startsWith('HPE_')) finish(new ShimScrapeError(e.code === 'HPE_HEADER_OVERFLOW' ? 'too_large' : 'bad_response', `${socket}: ${e.code}: ${e.message}`));
      else finish(new ShimScrapeError('io', `${socket}: ${e.code ?? ''} ${e.message}`));
    });
    req.end();
  });
}
