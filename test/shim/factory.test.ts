// The VM factory through containerd: `katats factory init` builds the template, pods are clones
// of it (fresh entropy, the host's clock), a pod of another VM shape boots cold saying why, and
// removing the templates under a running clone leaves it running. Real QEMU (TCG unless KVM was
// proven), the real agent, a private containerd.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { runToolOk } from '../../sys/exec.js';
import { isMounted } from '../../sys/mount.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { parseExposition, sample, type Sample } from '../support/prometheus.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const INDEX = 'katats.local/busybox:index';
let env: KatatsEnv;
let c: Containerd;
let image: string;
let templates: string;
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, c.logFile);
const shimLog = (sandbox: string) => fs.readFileSync(path.join(env.logDir, `${sandbox}.log`), 'utf8');
/** The shim's log lines for a sandbox with this message. */
const logLines = (sandbox: string, msg: string) =>
  shimLog(sandbox)
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);

function katats(...args: string[]) {
  return runToolOk(path.join(ROOT, 'node_modules', '.bin', 'tsx'), [path.join(ROOT, 'shim', 'cli', 'katats.ts'), ...args, '--config', env.configFile], {
    timeoutMs: 300_000,
    timeoutCode: 'TEST_KATATS_CLI_TIMEOUT',
  });
}

beforeAll(async () => {
  templates = fs.mkdtempSync(path.join(os.tmpdir(), 'ktpl-'));
  env = await katatsEnv({ extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"` });
  const init = await katats('factory', 'init');
  expect(init.stdout).toMatch(/^built template [0-9a-f]{64} at /);
  c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, INDEX);
  image = img.name;
}, 600_000);

afterAll(async () => {
  try {
    await katats('factory', 'destroy');
  } finally {
    await helpers.endKatatsSuite(c, env);
    fs.rmSync(templates, { recursive: true, force: true });
  }
  expect(isMounted(templates)).toBe(false);
}, 120_000);

/** `katats monitor` on a port of the kernel's choosing, for this suite's configuration. */
async function startMonitor(): Promise<{ scrape: () => Promise<Sample[]>; text: string; stop: () => Promise<void> }> {
  const child: ChildProcess = spawn(path.join(ROOT, 'node_modules', '.bin', 'tsx'), [path.join(ROOT, 'shim', 'cli', 'katats.ts'), 'monitor', '--listen', '127.0.0.1:0', '--config', env.configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`katats monitor did not say where it listens: ${out} ${err}`)), 60_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /listening on (http:\/\/\S+\/metrics)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`katats monitor exited (${code}): ${err}`));
    });
  });
  const mon = {
    text: '',
    scrape: async () => {
      const res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
      mon.text = await res.text();
      expect(res.status, mon.text).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      return parseExposition(mon.text);
    },
    stop: async () => {
      if (child.exitCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await gone;
    },
  };
  return mon;
}

/** katats_monitor_scrape_errors_total per reason. */
function errorsBy(m: Sample[]): Record<string, number> {
  return Object.fromEntries(m.filter((x) => x.name === 'katats_monitor_scrape_errors_total').map((x) => [x.labels.reason!, x.value]));
}

/** What a pod reports about its kernel: the time, random bytes, a new UUID. */
const PROBE = 'date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; cat /proc/sys/kernel/random/uuid';

async function probePod(name: string): Promise<{ sec: number; random: string; uuid: string; hostBefore: number; hostAfter: number }> {
  const hostBefore = Date.now();
  const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, name, 'sh', '-c', PROBE], { timeoutMs: 240_000 });
  const hostAfter = Date.now();
  expect(r.code, `${r.stderr}\n${logsOf(name)}`).toBe(0);
  const [sec, random, uuid] = r.stdout.trim().split('\n');
  return { sec: Number(sec), random: random!, uuid: uuid!, hostBefore, hostAfter };
}

describe('katats factory with containerd', () => {
  it('reports the template this configuration needs', async () => {
    const s = JSON.parse((await katats('factory', 'status', '--json')).stdout) as { wanted: string; templates: { key: string; matches: boolean }[] };
    expect(s.templates).toHaveLength(1);
    expect(s.templates[0]!.key).toBe(s.wanted);
    expect(s.templates[0]!.matches).toBe(true);
  }, 120_000);

  it('two pods cloned from one template get different random bytes and UUIDs, and the host time', async () => {
    const a = await probePod('clone1');
    const b = await probePod('clone2');
    for (const name of ['clone1', 'clone2']) expect(shimLog(name), logsOf(name)).toContain('factory: VM cloned from template');
    expect(a.random).toMatch(/^[0-9a-f]{32}$/);
    expect(a.random).not.toBe(b.random);
    expect(a.uuid).not.toBe(b.uuid);
    // The guest read its clock between ctr's start and its end: within a second of the host's.
    for (const p of [a, b]) {
      expect(p.sec).toBeGreaterThanOrEqual(Math.floor(p.hostBefore / 1000) - 1);
      expect(p.sec).toBeLessThanOrEqual(Math.ceil(p.hostAfter / 1000) + 1);
    }
  }, 600_000);

  it('a pod whose VM has another shape boots cold, and the log says why', async () => {
    const r = await c.ctr(['run', '--rm', '--annotation', 'io.katacontainers.config.hypervisor.default_memory=640', ...c.runtimeArgs('katats'), image, 'cold1', 'echo', 'cold'], {
      timeoutMs: 300_000,
    });
    expect(r.code, logsOf('cold1')).toBe(0);
    expect(r.stdout).toBe('cold\n');
    const [cold] = logLines('cold1', 'factory: cold boot');
    expect(cold?.reason).toMatch(/^key mismatch: no template for key [0-9a-f]{12}; [0-9a-f]{12}: VM shape differs at argv\[\d+\]: template "512M", pod "640M"$/);
    expect(logLines('cold1', 'factory: VM cloned from template')).toEqual([]);
  }, 600_000);

  it('katats monitor: per-pod boot path, step times, agent round trip, guest memory and PSS; bad and dead shims do not fail a scrape', async () => {
    const mon = await startMonitor();
    const fakes: net.Server[] = [];
    const fakeDirs: string[] = [];
    try {
      // One clone and one cold boot (another memory size), running side by side.
      await Promise.all([
        c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'mon-clone', 'sleep', '100000'], { timeoutMs: 300_000 }),
        c.ctrOk(['run', '-d', '--annotation', 'io.katacontainers.config.hypervisor.default_memory=640', ...c.runtimeArgs('katats'), image, 'mon-cold', 'sleep', '100000'], { timeoutMs: 300_000 }),
      ]);
      // A guest that misses a scrape's deadlines (1.5 s Health, 1 s GetMetrics: a loaded TCG host
      // has seen both) is reported without its round trip and memory: scrape until both answered.
      const answered = (ms: Sample[]) =>
        ['mon-clone', 'mon-cold'].every((id) => sample(ms, 'katats_sandbox_agent_rtt_seconds', { sandbox_id: id }) !== undefined && sample(ms, 'katats_sandbox_guest_memory_bytes', { sandbox_id: id, item: 'total' }) !== undefined);
      const m = await helpers.until(() => mon.scrape(), answered, 60_000);
      expect(sample(m, 'katats_pods_running'), mon.text).toBe(2);
      const infoIn = (ms: Sample[], id: string) => ms.find((x) => x.name === 'katats_sandbox_info' && x.labels.sandbox_id === id)?.labels;
      const info = (id: string) => infoIn(m, id);
      expect(info('mon-clone')).toMatchObject({ boot_path: 'template', namespace: c.namespace, vm_state: 'ready' });
      expect(info('mon-cold')).toMatchObject({ boot_path: 'cold', namespace: c.namespace, vm_state: 'ready' });
      for (const id of ['mon-clone', 'mon-cold']) {
        const bootPath = info(id)!.boot_path!;
        expect(sample(m, 'katats_sandbox_boot_seconds', { sandbox_id: id, boot_path: bootPath })).toBeGreaterThan(0);
        for (const step of ['shim_serving', 'vm_ready', 'create_sandbox', 'create_container', 'start']) {
          expect(sample(m, 'katats_sandbox_step_seconds', { sandbox_id: id, step }), `${id} ${step}\n${mon.text}`).toBeGreaterThan(0);
        }
        expect(sample(m, 'katats_sandbox_agent_rtt_seconds', { sandbox_id: id })).toBeGreaterThan(0);
        expect(sample(m, 'katats_sandbox_host_pss_bytes', { sandbox_id: id, process: 'shim' })).toBeGreaterThan(1 << 20);
        expect(sample(m, 'katats_sandbox_host_pss_bytes', { sandbox_id: id, process: 'vmm' })).toBeGreaterThan(1 << 20);
        expect(sample(m, 'katats_sandbox_containers', { sandbox_id: id })).toBe(1);
        const free = sample(m, 'katats_sandbox_guest_memory_bytes', { sandbox_id: id, item: 'free' })!;
        expect(free).toBeGreaterThan(0);
        expect(free).toBeLessThan(sample(m, 'katats_sandbox_guest_memory_bytes', { sandbox_id: id, item: 'total' })!);
      }
      // The guest's MemTotal is its VM's size less what the kernel keeps: each pod reports its own VM.
      const total = (id: string) => sample(m, 'katats_sandbox_guest_memory_bytes', { sandbox_id: id, item: 'total' })!;
      expect(total('mon-clone')).toBeGreaterThan(256 << 20);
      expect(total('mon-clone')).toBeLessThanOrEqual(512 << 20);
      expect(total('mon-cold')).toBeGreaterThan(512 << 20);
      expect(total('mon-cold')).toBeLessThanOrEqual(640 << 20);
      const stepsOf = (id: string) =>
        m
          .filter((x) => x.name === 'katats_sandbox_step_seconds' && x.labels.sandbox_id === id)
          .map((x) => `${x.labels.step} ${x.value.toFixed(2)}`)
          .join(', ');
      console.log(`monitor (${env.accel}) steps in s: mon-clone: ${stepsOf('mon-clone')}; mon-cold: ${stepsOf('mon-cold')}`);
      console.log(`monitor (${env.accel}): ${['mon-clone', 'mon-cold'].map((id) => `${id} boot ${sample(m, 'katats_sandbox_boot_seconds', { sandbox_id: id, boot_path: info(id)!.boot_path! })!.toFixed(2)} s, VMM PSS ${(sample(m, 'katats_sandbox_host_pss_bytes', { sandbox_id: id, process: 'vmm' })! / 2 ** 20).toFixed(0)} MiB, shim PSS ${(sample(m, 'katats_sandbox_host_pss_bytes', { sandbox_id: id, process: 'shim' })! / 2 ** 20).toFixed(0)} MiB, agent rtt ${(sample(m, 'katats_sandbox_agent_rtt_seconds', { sandbox_id: id })! * 1000).toFixed(1)} ms`).join('; ')}`);

      // Shims that answer garbage, an endless body, or nothing at all: each is one error of its
      // kind, the scrape still answers with the real pods.
      const fake = async (id: string, onConn: (s: net.Socket) => void) => {
        const dir = path.join(env.stateDir, 'sandboxes', id);
        fs.mkdirSync(dir, { recursive: true });
        fakeDirs.push(dir);
        // Reading, so that the monitor's hang-up is seen and the connection ends.
        const srv = net.createServer((s) => {
          s.resume();
          onConn(s);
        });
        await new Promise<void>((r) => srv.listen(path.join(dir, 'monitor.sock'), r));
        fakes.push(srv);
      };
      let endlessClosed = false;
      await fake('bad-garbage', (s) => s.end('SSH-2.0-OpenSSH_9.2\r\n\r\n'));
      await fake('bad-endless', (s) => {
        s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[');
        const more = () => {
          while (!s.destroyed && s.write('0,'.repeat(8192)));
          if (!s.destroyed) s.once('drain', more);
        };
        s.on('close', () => (endlessClosed = true));
        s.on('error', () => undefined);
        more();
      });
      await fake('bad-silent', (s) => s.on('error', () => undefined));
      const before = errorsBy(m);
      const m2 = await mon.scrape();
      expect(sample(m2, 'katats_pods_running'), mon.text).toBe(2);
      const after = errorsBy(m2);
      expect(after['bad_response']! - before['bad_response']!).toBe(1);
      expect(after['too_large']! - before['too_large']!).toBe(1);
      expect(after['timeout']! - before['timeout']!).toBe(1);
      // The monitor hung up on the endless body instead of reading it all.
      expect(endlessClosed).toBe(true);
      for (const f of fakes.splice(0)) await new Promise((r) => f.close(r));
      for (const d of fakeDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });

      // A shim killed: its pod is gone from the next scrape, which counts no error for it.
      const shims = helpers.shimProcs(c.address, 'mon-cold');
      expect(shims.length).toBe(1);
      process.kill(shims[0]!, 'SIGKILL');
      const running = () => {
        try {
          return fs.readFileSync(`/proc/${shims[0]}/cmdline`, 'utf8') !== '';
        } catch {
          return false;
        }
      };
      await helpers.until(running, (alive) => !alive, 10_000);
      const m3 = await mon.scrape();
      expect(sample(m3, 'katats_pods_running'), mon.text).toBe(1);
      expect(infoIn(m3, 'mon-clone')).toMatchObject({ boot_path: 'template' });
      expect(m3.some((x) => x.labels.sandbox_id === 'mon-cold')).toBe(false);
      expect(errorsBy(m3)).toEqual(after);
    } finally {
      for (const f of fakes) await new Promise((r) => f.close(r));
      for (const d of fakeDirs) fs.rmSync(d, { recursive: true, force: true });
      await mon.stop();
      for (const id of ['mon-clone', 'mon-cold']) {
        await c.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
        await helpers.until(() => c.ctr(['task', 'ls']), (r) => !new RegExp(`${id}\\s+\\d+\\s+RUNNING`).test(r.stdout));
        await c.ctr(['task', 'rm', '-f', id]);
        await c.ctr(['containers', 'rm', id]);
      }
    }
    await helpers.until(() => helpers.qemuProcs(env.stateDir), (p) => p.length === 0, 60_000);
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
  }, 900_000);

  it('removing the templates under a running clone leaves it running', async () => {
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), image, 'long1', 'sh', '-c', 'while true; do sleep 0.2; done'], { timeoutMs: 300_000 });
    try {
      expect(shimLog('long1')).toContain('factory: VM cloned from template');
      await katats('factory', 'destroy');
      expect(fs.readdirSync(templates)).toEqual([]);
      // The clone touches memory it shares with the removed template (page cache it maps privately).
      const ex = await c.ctr(['task', 'exec', '--exec-id', 'e1', 'long1', 'sh', '-c', 'head -c 33554432 /dev/zero | md5sum; echo alive']);
      expect(ex.code, logsOf('long1')).toBe(0);
      expect(ex.stdout).toContain('alive');
    } finally {
      await c.ctr(['task', 'kill', '-s', 'SIGKILL', 'long1']);
      await helpers.until(() => c.ctr(['task', 'ls']), (r) => /long1\s+\d+\s+STOPPED/.test(r.stdout));
      await c.ctrOk(['task', 'rm', 'long1']);
      await c.ctrOk(['containers', 'rm', 'long1']);
    }
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
    // With no template a pod boots cold, saying so.
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('katats'), image, 'after1', 'echo', 'after'], { timeoutMs: 300_000 });
    expect(r.stdout).toBe('after\n');
    expect(logLines('after1', 'factory: cold boot')[0]?.reason).toBe(`no template at ${templates} (run: katats factory init)`);
    // Nothing of the pods or the template builds is left: no socket, no build directory, no QEMU.
    const sockets = (dir: string): string[] =>
      fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
        const p = path.join(dir, e.name);
        return e.isDirectory() ? sockets(p) : e.isSocket() ? [p] : [];
      });
    expect(sockets(env.stateDir)).toEqual([]);
    expect(fs.readdirSync(path.join(env.stateDir, 'factory'))).toEqual([]);
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
  }, 900_000);
});
