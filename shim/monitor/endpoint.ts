// The shim's side of `katats monitor`, as each Kata shim serves its own metrics on a socket of
// its own: an HTTP server on <sandbox dir>/monitor.sock (0600 in a 0700 dir) answering GET
// /sandbox with the pod's SandboxReport, gathered at request time. Off the pod path: it starts once
// the shim serves containerd. Requests that arrive while a report is being gathered share it, so a
// busy monitor costs the guest one Health.Check and one GetMetrics at a time.
import fs from 'node:fs';
import http from 'node:http';
import type { Logger } from 'pino';
import type { ServiceClient } from '../../proto/rpc.js';
import { pssBytes } from '../../sys/pss.js';
import { REPORT_PATH, REPORT_VERSION, type SandboxReport } from './report.js';
import type { PodStepsSnapshot } from '../pod-steps.js';

/** The agent calls made for the monitor, one after the other: the monitor gives a whole shim 3 s. */
const HEALTH_TIMEOUT_MS = 1500;
const METRICS_TIMEOUT_MS = 1000;
/** The agent's metrics text is the guest's word: only this much of it is looked at. */
const MAX_METRICS_TEXT = 1 << 20;

/** What the endpoint reads from the running shim, each time it is asked. */
export interface PodView {
  vmState: string;
  steps: PodStepsSnapshot;
  containers: number;
  cri?: SandboxReport['cri'];
  accel?: 'kvm' | 'tcg';
  vmmPid?: number;
  agent?: ServiceClient<'grpc.AgentService'>;
  health?: ServiceClient<'grpc.Health'>;
}

export interface EndpointOptions {
  socket: string;
  sandboxId: string;
  namespace: string;
  view: () => PodView;
  log: Logger;
}

/** The guest's memory from the agent's kata_guest_meminfo lines (bytes), when all three are there. */
export function guestMemoryOf(metrics: string): SandboxReport['guestMemory'] {
  const text = metrics.length > MAX_METRICS_TEXT ? metrics.slice(0, MAX_METRICS_TEXT) : metrics;
  const item = (name: string): number | undefined => {
    const m = new RegExp(`^kata_guest_meminfo\\{item="${name}"\\} (\\d+)$`, 'm').exec(text);
    const v = m ? Number(m[1]) : NaN;
    return Number.isSafeInteger(v) ? v : undefined;
  };
  const totalBytes = item('mem_total');
  const freeBytes = item('mem_free');
  const availableBytes = item('mem_available');
  return totalBytes !== undefined && freeBytes !== undefined && availableBytes !== undefined ? { totalBytes, freeBytes, availableBytes } : undefined;
}

export async function gatherReport(o: Pick<EndpointOptions, 'sandboxId' | 'namespace'>, v: PodView): Promise<SandboxReport> {
  const ready = v.vmState === 'ready';
  const rtt = async (): Promise<SandboxReport['agent']> => {
    if (!ready || !v.health) return undefined;
    const t0 = performance.now();
    try {
      await v.health.Check({ service: '' }, { timeoutMs: HEALTH_TIMEOUT_MS });
      return { rttMs: Math.round((performance.now() - t0) * 1000) / 1000 };
    } catch (e) {
      return { error: String((e as Error).message).slice(0, 1024) };
    }
  };
  const memory = async (): Promise<SandboxReport['guestMemory']> => {
    if (!ready || !v.agent) return undefined;
    try {
      return guestMemoryOf((await v.agent.GetMetrics({}, { timeoutMs: METRICS_TIMEOUT_MS })).metrics);
    } catch {
      return undefined;
    }
  };
  // The round trip first and alone: GetMetrics in flight would make the agent's answer wait.
  const agentCalls = async () => {
    const a = await rtt();
    return [a, await memory()] as const;
  };
  const [[agent, guestMemory], shimBytes, vmmBytes] = await Promise.all([agentCalls(), pssBytes(process.pid), v.vmmPid ? pssBytes(v.vmmPid) : undefined]);
  return {
    version: REPORT_VERSION,
    sandboxId: o.sandboxId,
    namespace: o.namespace,
    ...(v.cri ? { cri: v.cri } : {}),
    vmState: v.vmState,
    ...(v.steps.bootPath ? { bootPath: v.steps.bootPath } : {}),
    ...(v.accel ? { accel: v.accel } : {}),
    steps: v.steps.steps,
    containers: v.containers,
    ...(agent ? { agent } : {}),
    ...(guestMemory ? { guestMemory } : {}),
    pss: { ...(shimBytes !== undefined ? { shimBytes } : {}), ...(vmmBytes !== undefined ? { vmmBytes } : {}) },
  };
}

export interface MonitorEndpoint {
  close(): Promise<void>;
}

export async function serveMonitorEndpoint(o: EndpointOptions): Promise<MonitorEndpoint> {
  let inFlight: Promise<SandboxReport> | undefined;
  const report = () =>
    (inFlight ??= gatherReport(o, o.view()).finally(() => {
      inFlight = undefined;
    }));
  const server = http.createServer({ maxHeaderSize: 8192 }, (req, res) => {
    if (req.method !== 'GET' || req.url !== REPORT_PATH) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`only GET ${REPORT_PATH}\n`);
      return;
    }
    report().then(
      (r) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(r)),
      (err: unknown) => {
        o.log.warn({ err }, 'monitor: gathering the sandbox report failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('report failed\n');
      },
    );
  });
  // A client that stops reading must not hold the shim's sockets open.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 1_000;
  // A socket left by a previous daemon of this pod (killed) is nobody's: this daemon owns the pod now.
  fs.rmSync(o.socket, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.socket, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(o.socket, 0o600);
  server.on('error', (err) => o.log.warn({ err }, 'monitor endpoint error'));
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
