// `katats monitor`: the node's one Prometheus target for every katats pod, as kata-monitor is for
// Kata's. GET /metrics asks each running shim for its report (collect.ts) and renders the lot with
// per-sandbox labels; nothing is cached between scrapes, so a pod that is gone is gone.
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { scrapeShims } from './collect.js';
import { CONTENT_TYPE, count, newCounters, render } from './render.js';

export interface MonitorOptions {
  /** The shims' state dir ([runtime] state_dir). */
  stateDir: string;
  log: Logger;
  /** Per shim (default: client.ts SHIM_SCRAPE_TIMEOUT_MS). */
  shimTimeoutMs?: number;
}

export function monitorApp(o: MonitorOptions): FastifyInstance {
  // Its own log lines only (scrape failures below): a request line per scrape would be noise.
  const app = Fastify({ logger: false });
  const counters = newCounters();
  app.get('/metrics', async (_req, reply) => {
    const s = await scrapeShims(o.stateDir, o.shimTimeoutMs ? { timeoutMs: o.shimTimeoutMs } : {});
    count(counters, s);
    for (const f of s.failures) o.log.warn({ sandbox: f.sandboxId, reason: f.reason }, `monitor: ${f.message}`);
    return reply.type(CONTENT_TYPE).send(render(s, counters));
  });
  app.get('/', async (_req, reply) => reply.type('text/plain').send('katats monitor: GET /metrics\n'));
  return app;
}

/** "HOST:PORT", ":PORT" or "[V6]:PORT" as kata-monitor's --listen-address. */
export function parseListen(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(addr);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new Error(`--listen ${JSON.stringify(addr)}: expected HOST:PORT (e.g. 127.0.0.1:8090)`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}
