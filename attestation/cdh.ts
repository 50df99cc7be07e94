// The pod's local attestation endpoint, as Confidential Containers' API server offers it to
// containers (they share the guest's network namespace): served by the agent on 127.0.0.1:8006.
//   GET /cdh/resource/<repository>/<type>/<tag>  the resource's plaintext, fetched from the KBS
//       after the RCAR exchange (client.ts) with this VM's report; the KBS's 401/403/404 are passed
//       on with its ErrorInformation, so a container sees "refused" as such and gets no bytes.
//   GET /aa/evidence?runtime_data=<text>  this VM's evidence ({attestation_report, cert_chain}),
//       REPORT_DATA = the runtime data (at most 64 bytes) zero-padded.
// Where the KBS is comes from the pod (the sandbox's annotation, see agent), set once. Written for
// node 18. Bounded: GET only, short URLs, a few requests at once, each with a time limit.
import http from 'node:http';
import type { Logger } from 'pino';
import { KbsClient, KbsClientError } from './client.js';
import type { ReportDevice } from './device.js';
import { REPORT_DATA_SIZE } from './report.js';
import type { ResourcePath } from './resource-uri.js';
import { isTimeout } from '../sys/timeout.js';
import { checkKbsUrl, KBS_URL_ANNOTATION } from './kbs-url.js';

export { checkKbsUrl, KBS_URL_ANNOTATION };

export const CDH_PORT = 8006;
export const CDH_HOST = '127.0.0.1';
const MAX_URL = 1024;
const MAX_IN_FLIGHT = 4;
/** One request's whole life: the RCAR exchange (three KBS calls) over TCG and a slow KBS fit within it. */
export const CDH_REQUEST_TIMEOUT_MS = 150_000;
/**
 * One KBS call. A TCG guest on a loaded host (2 cores, several guests) saw a call pass 20 s: the
 * KBS answered 403 to the same pod on the next run. Generous, since a refusal must come as such.
 */
const KBS_CALL_TIMEOUT_MS = 45_000;
const COMPONENT = /^[A-Za-z0-9._-]{1,128}$/;

export interface CdhOptions {
  device: ReportDevice;
  log: Logger;
  /** The KBS's URL when the pod named one; set later with setKbsUrl. */
  kbsUrl?: string;
  requestTimeoutMs?: number;
}

export class CdhServer {
  private readonly server: http.Server;
  private kbs?: KbsClient;
  private inFlight = 0;

  constructor(private readonly o: CdhOptions) {
    if (o.kbsUrl) this.setKbsUrl(o.kbsUrl);
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        o.log.error({ err }, 'CDH request failed');
        if (!res.headersSent) this.send(res, 500, 'internal error\n');
        else res.destroy();
      });
    });
    this.server.requestTimeout = (o.requestTimeoutMs ?? CDH_REQUEST_TIMEOUT_MS) + 5_000;
    this.server.headersTimeout = 10_000;
    this.server.maxHeadersCount = 32;
  }

  /** The pod's KBS; the first one named stays (a later container cannot redirect the pod's secrets). */
  setKbsUrl(u: string): void {
    const origin = checkKbsUrl(u);
    if (this.kbs) {
      if (this.kbsOrigin !== origin) this.o.log.warn({ kbs: this.kbsOrigin, ignored: origin }, 'CDH: the pod already has a KBS; another URL is ignored');
      return;
    }
    this.kbsOrigin = origin;
    this.kbs = new KbsClient({ url: origin, device: this.o.device, timeoutMs: KBS_CALL_TIMEOUT_MS });
    this.o.log.info({ kbs: origin }, 'CDH: KBS set');
  }
  private kbsOrigin?: string;

  /** The pod's KBS as the agent's unsealing uses it; undefined until a KBS is named. */
  resourceSource(): { fetchResource(r: ResourcePath): Promise<Buffer> } | undefined {
    const kbs = this.kbs;
    if (!kbs) return undefined;
    return {
      fetchResource: async (r) => {
        const bytes = await kbs.getResource(r.repository, r.type, r.tag);
        this.o.log.info({ resource: `${r.repository}/${r.type}/${r.tag}`, bytes: bytes.length }, 'CDH: sealed secret released by the KBS');
        return bytes;
      },
    };
  }

  listen(port = CDH_PORT, host = CDH_HOST): Promise<{ port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.server.on('error', (err) => this.o.log.error({ err }, 'CDH server error'));
        resolve({ port: (this.server.address() as { port: number }).port });
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private send(res: http.ServerResponse, status: number, body: string | Buffer, type = 'text/plain'): void {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET') return this.send(res, 405, 'only GET\n');
    if (!req.url || req.url.length > MAX_URL) return this.send(res, 414, `URL longer than ${MAX_URL}\n`);
    if (this.inFlight >= MAX_IN_FLIGHT) return this.send(res, 503, 'too many requests at once\n');
    this.inFlight++;
    try {
      const url = new URL(req.url, 'http://localhost');
      const limit = this.o.requestTimeoutMs ?? CDH_REQUEST_TIMEOUT_MS;
      if (url.pathname === '/aa/evidence') return await this.evidence(url, res, limit);
      const m = /^\/cdh\/resource\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(url.pathname);
      if (!m) return this.send(res, 404, 'no such endpoint (GET /cdh/resource/<repository>/<type>/<tag>, /aa/evidence?runtime_data=)\n');
      const parts = m.slice(1).map((p) => {
        try {
          return decodeURIComponent(p);
        } catch {
          return '';
        }
      });
      if (parts.some((p) => !COMPONENT.test(p) || p === '.' || p === '..')) return this.send(res, 400, 'a resource path component is [A-Za-z0-9._-]{1,128}, not . or ..\n');
      if (!this.kbs) return this.send(res, 503, `the pod names no KBS (annotation ${KBS_URL_ANNOTATION})\n`);
      const [repo, type, tag] = parts as [string, string, string];
      try {
        // How long the pod waited and whether this request paid for an RCAR exchange (bench/attest-pod.ts reads both).
        const t0 = performance.now();
        const before = this.kbs.attestations;
        const bytes = await this.kbs.getResource(repo, type, tag);
        const ms = Math.round((performance.now() - t0) * 1000) / 1000;
        this.o.log.info({ resource: `${repo}/${type}/${tag}`, bytes: bytes.length, ms, attested: this.kbs.attestations > before }, 'CDH: resource released by the KBS');
        return this.send(res, 200, bytes, 'application/octet-stream');
      } catch (e) {
        return this.refused(res, e, `${repo}/${type}/${tag}`);
      }
    } finally {
      this.inFlight--;
    }
  }

  private refused(res: http.ServerResponse, e: unknown, what: string): void {
    if (e instanceof KbsClientError && [400, 401, 403, 404].includes(e.status)) {
      this.o.log.warn({ resource: what, status: e.status, err: e.message }, 'CDH: the KBS refused');
      return this.send(res, e.status, `${JSON.stringify(e.info ?? { detail: e.message })}\n`, 'application/json');
    }
    const timeout = isTimeout(e) || (e as Error).name === 'TimeoutError' || (e as Error).name === 'AbortError';
    this.o.log.error({ resource: what, err: (e as Error).message }, 'CDH: resource fetch failed');
    return this.send(res, timeout ? 504 : 502, `${timeout ? 'timed out' : 'failed'}: ${(e as Error).message}\n`);
  }

  private async evidence(url: URL, res: http.ServerResponse, limit: number): Promise<void> {
    const rd = Buffer.from(url.searchParams.get('runtime_data') ?? '', 'utf8');
    if (rd.length > REPORT_DATA_SIZE) return this.send(res, 400, `runtime_data is at most ${REPORT_DATA_SIZE} bytes\n`);
    const reportData = Buffer.alloc(REPORT_DATA_SIZE);
    rd.copy(reportData);
    try {
      const ext = await Promise.race([
        this.o.device.getReport(reportData),
        new Promise<never>((_, reject) => setTimeout(() => reject(Object.assign(new Error('report request timed out'), { name: 'TimeoutError' })), limit).unref()),
      ]);
      const body = {
        attestation_report: ext.report.toString('base64'),
        cert_chain: (['ark', 'ask', 'vcek'] as const).filter((k) => ext.certs[k]).map((k) => ({ cert_type: k, data: ext.certs[k]!.toString('base64') })),
      };
      return this.send(res, 200, `${JSON.stringify(body)}\n`, 'application/json');
    } catch (e) {
      return this.refused(res, e, 'evidence');
    }
  }
}
