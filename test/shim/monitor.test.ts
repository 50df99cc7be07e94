// `katats monitor`'s logic with real sockets and no VM: a shim's endpoint (the shim's own code)
// found and read through the state dir, and hostile or dead "shims" that must cost a scrape one
// counted error each, or nothing at all when the shim is dead. The pods' side, with real VMs, is in
// factory.test.ts (one clone and one cold boot scraped over HTTP).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { serveMonitorEndpoint, type MonitorEndpoint } from '../../shim/monitor/endpoint.js';
import { scrapeShims } from '../../shim/monitor/collect.js';
import { count, newCounters, render } from '../../shim/monitor/render.js';
import { MONITOR_SOCKET, REPORT_VERSION, type SandboxReport } from '../../shim/monitor/report.js';
import { PodSteps } from '../../shim/pod-steps.js';
import { writeRecord } from '../../shim/layout.js';
import { tempDir } from '../support/tmp.js';
import { parseExposition, sample } from '../support/prometheus.js';

const log = pino({ level: 'silent' });
let tmp: { dir: string; cleanup: () => void };
const closers: (() => Promise<void> | void)[] = [];

beforeAll(() => {
  tmp = tempDir('kt-mon-');
});
afterAll(() => tmp.cleanup());
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  fs.rmSync(path.join(tmp.dir, 'sandboxes'), { recursive: true, force: true });
});

function sandboxSocket(id: string): string {
  const dir = path.join(tmp.dir, 'sandboxes', id);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  return path.join(dir, MONITOR_SOCKET);
}

/** A peer on a sandbox's monitor socket that answers whatever `answer` writes. */
/** A process whose argv names pod `id` as a running shim's does (the monitor tells a live shim by it). */
async function liveShimOf(id: string): Promise<ReturnType<typeof spawn>> {
  const live = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-id', id], { stdio: 'ignore' });
  closers.push(() => {
    live.kill('SIGKILL');
  });
  await new Promise((res) => setTimeout(res, 200));
  return live;
}

async function peer(id: string, answer: (s: net.Socket) => void): Promise<void> {
  const srv = net.createServer((s) => {
    s.on('error', () => undefined);
    // Reading, so that the monitor's hang-up is seen and the connection ends.
    s.resume();
    answer(s);
  });
  await new Promise<void>((r) => srv.listen(sandboxSocket(id), r));
  closers.push(() => new Promise<void>((r) => srv.close(() => r())));
}

function httpJson(body: unknown): (s: net.Socket) => void {
  const text = JSON.stringify(body);
  return (s) => s.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`);
}

const good = (id: string): SandboxReport => ({ version: REPORT_VERSION, sandboxId: id, namespace: 'default', vmState: 'ready', steps: { vm_ready: 1500 }, containers: 1, pss: { shimBytes: 1 << 20 } });

async function scrape(timeoutMs = 1000) {
  const s = await scrapeShims(tmp.dir, { timeoutMs });
  const c = newCounters();
  count(c, s);
  return { s, c, m: parseExposition(render(s, c)) };
}

describe('katats monitor: finding and reading shims', () => {
  it("reads a shim's own endpoint: its steps, boot path and PSS, labelled with its sandbox id", async () => {
    const steps = new PodSteps();
    steps.done('shim_serving', 120);
    steps.done('vm_ready', 2500);
    steps.done('vm_ready', 9999); // a step is kept the first time only
    steps.bootPath = 'template';
    const ep: MonitorEndpoint = await serveMonitorEndpoint({
      socket: sandboxSocket('pod-a'),
      sandboxId: 'pod-a',
      namespace: 'k8s.io',
      view: () => ({ vmState: 'ready', steps: steps.snapshot(), containers: 2, accel: 'tcg', cri: { name: 'web "1"\nx', namespace: 'default', uid: 'u\\1' } }),
      log,
    });
    closers.push(() => ep.close());
    expect(fs.statSync(sandboxSocket('pod-a')).mode & 0o777).toBe(0o600);
    const { s, m } = await scrape();
    expect(s.failures).toEqual([]);
    expect(sample(m, 'katats_pods_running')).toBe(1);
    expect(sample(m, 'katats_sandbox_step_seconds', { sandbox_id: 'pod-a', step: 'vm_ready' })).toBe(2.5);
    expect(sample(m, 'katats_sandbox_boot_seconds', { sandbox_id: 'pod-a', boot_path: 'template' })).toBe(2.5);
    expect(sample(m, 'katats_sandbox_containers', { sandbox_id: 'pod-a' })).toBe(2);
    // This process is the "shim": its PSS is real.
    expect(sample(m, 'katats_sandbox_host_pss_bytes', { sandbox_id: 'pod-a', process: 'shim' })).toBeGreaterThan(1 << 20);
    // Label values with quotes, newlines and backslashes come back as they went in.
    expect(m.find((x) => x.name === 'katats_sandbox_info')?.labels).toMatchObject({ cri_name: 'web "1"\nx', cri_uid: 'u\\1', boot_path: 'template', accel: 'tcg' });
  });

  it('counts a shim that lies about its id, breaks the schema, overflows headers or speaks no HTTP, and still answers with the good ones', async () => {
    await peer('pod-good', httpJson(good('pod-good')));
    await peer('pod-liar', httpJson(good('pod-good')));
    // A step name that would inject a label of its own, were it rendered.
    await peer('pod-inject', httpJson({ ...good('pod-inject'), steps: { 'x",sandbox_id="pod-good': 1 } }));
    await peer('pod-headers', (s) => s.end(`HTTP/1.1 200 OK\r\nx-junk: ${'a'.repeat(64 * 1024)}\r\n\r\n{}`));
    await peer('pod-garbage', (s) => s.end('\x00\x01\x02 not http\r\n\r\n'));
    const { s, c, m } = await scrape();
    expect(s.reports.map((r) => r.sandboxId)).toEqual(['pod-good']);
    expect(Object.fromEntries(s.failures.map((f) => [f.sandboxId, f.reason]))).toEqual({
      'pod-liar': 'bad_response',
      'pod-inject': 'bad_response',
      'pod-headers': 'too_large',
      'pod-garbage': 'bad_response',
    });
    expect(c.failures).toMatchObject({ bad_response: 3, too_large: 1, timeout: 0, refused: 0 });
    expect(m.filter((x) => x.labels.sandbox_id !== undefined).every((x) => x.labels.sandbox_id === 'pod-good')).toBe(true);
    expect(sample(m, 'katats_monitor_scrape_errors_total', { reason: 'bad_response' })).toBe(3);
  });

  it('a body past the cap is cut off, and a silent shim costs one timeout', async () => {
    let closed = false;
    await peer('pod-endless', (s) => {
      s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[');
      const more = () => {
        while (!s.destroyed && s.write('1,'.repeat(4096)));
        if (!s.destroyed) s.once('drain', more);
      };
      s.on('close', () => (closed = true));
      more();
    });
    await peer('pod-silent', () => undefined);
    const { s } = await scrape(500);
    expect(Object.fromEntries(s.failures.map((f) => [f.sandboxId, f.reason]))).toEqual({ 'pod-endless': 'too_large', 'pod-silent': 'timeout' });
    await new Promise((r) => setTimeout(r, 100));
    expect(closed).toBe(true);
  });

  it("a dead shim's socket is skipped without an error; a live shim that refuses is an error", async () => {
    // A process that listens on the socket and is killed leaves the socket file behind, as a killed shim does.
    const socket = sandboxSocket('pod-dead');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`, '--', '-id', 'pod-dead'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => child.stdout!.once('data', r));
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
    expect(fs.lstatSync(socket).isSocket()).toBe(true);
    writeRecord(tmp.dir, { sandboxId: 'pod-dead', namespace: 'default', shimPid: child.pid!, socket: '/nonexistent' });
    let r = await scrape();
    expect(r.s.failures).toEqual([]);
    expect(sample(r.m, 'katats_pods_running')).toBe(0);

    // The same dead socket, but the record names a process that runs this pod's shim (by its argv): refused.
    const live = await liveShimOf('pod-dead');
    writeRecord(tmp.dir, { sandboxId: 'pod-dead', namespace: 'default', shimPid: live.pid!, socket: '/nonexistent' });
    r = await scrape();
    expect(r.s.failures.map((f) => f.reason)).toEqual(['refused']);
  });

  it('a shim hanging up before it answers: skipped once it is dead, an error while it runs', async () => {
    // A shim killed while the monitor connects: the connection is queued, then reset when the
    // kernel closes the dying shim's listening socket.
    await peer('pod-reset', (s) => s.destroy());
    let r = await scrape();
    expect(r.s.failures, JSON.stringify(r.s.failures)).toEqual([]);
    const live = await liveShimOf('pod-reset');
    writeRecord(tmp.dir, { sandboxId: 'pod-reset', namespace: 'default', shimPid: live.pid!, socket: '/nonexistent' });
    r = await scrape();
    expect(r.s.failures.map((f) => f.reason)).toEqual(['io']);
  });

  it('the endpoint answers only GET /sandbox', async () => {
    const socket = sandboxSocket('pod-b');
    const ep = await serveMonitorEndpoint({ socket, sandboxId: 'pod-b', namespace: 'default', view: () => ({ vmState: 'stopped', steps: new PodSteps().snapshot(), containers: 0 }), log });
    closers.push(() => ep.close());
    const status = (p: string, method = 'GET') =>
      new Promise<number>((resolve, reject) => http.request({ socketPath: socket, path: p, method }, (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject).end());
    expect(await status('/sandbox')).toBe(200);
    expect(await status('/metrics')).toBe(404);
    expect(await status('/sandbox', 'POST')).toBe(404);
  });
});
