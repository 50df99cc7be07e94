// The VM factory through containerd: `katats factory init` builds the template, pods are clones
// of it (fresh entropy, the host's clock), a pod of another VM shape boots cold saying why, and
// removing the templates under a running clone leaves it running. Real QEMU (TCG unless KVM was
// proven), the real agent, a private containerd.
import fs from 'node:fs';
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
