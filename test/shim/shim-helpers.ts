// Small helpers the katats shim suites share: polling, the shim's and agent's logs of a sandbox
// for failure messages, and finding host processes by command line or environment.
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runToolOk } from '../../sys/exec.js';
import { isMounted } from '../../sys/mount.js';
import { listProcs } from '../../harness/procs.js';
import { hostHierarchies } from '../../shim/cgroups.js';
import { OVERHEAD_ROOT } from '../../shim/sandbox-cgroups.js';
import { expect } from 'vitest';
import { startContainerd, type Containerd, type StopReport } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';

export async function until<T>(fn: () => T | Promise<T>, ok: (v: T) => boolean, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * The last lines of the shim's and the agent's log of one sandbox, and with `containerdLog` the
 * containerd lines that name it, for failure messages.
 */
export function logsOf(logDir: string, sandbox: string, containerdLog?: string, lines = 15): string {
  const read = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').slice(-lines).join('\n') : '(none)');
  const parts = [`--- shim log ---\n${read(path.join(logDir, `${sandbox}.log`))}`, `--- agent log ---\n${read(path.join(logDir, `${sandbox}-agent.log`))}`];
  if (containerdLog) {
    const mine = fs.existsSync(containerdLog) ? fs.readFileSync(containerdLog, 'utf8').split('\n').filter((l) => l.includes(sandbox)).slice(-10).join('\n') : '(none)';
    parts.push(`--- containerd log (${sandbox}) ---\n${mine}`);
  }
  return parts.join('\n');
}

/**
 * Host cgroup directories the shim makes for sandbox `id` (either placement, any hierarchy) that
 * still exist; `parent` is the pod cgroup (for ctr, the containerd namespace: its cgroupsPath is /<ns>/<id>).
 */
export function sandboxCgroups(id: string, parent: string): string[] {
  return hostHierarchies().flatMap((h) => [path.join(h.mount, OVERHEAD_ROOT, id), path.join(h.mount, parent, id), path.join(h.mount, parent, `katats_${id}`)].filter((d) => fs.existsSync(d)));
}

/** katats-chv's own process: its argv names QEMU (--qemu) and the sandbox's dirs too. */
const isChv = (cmdline: string) => /\bchv(\.mjs|\/cli\.ts)\b/.test(cmdline);

/**
 * QEMU processes whose command line names `stateDir` (a katats env's), optionally of one sandbox;
 * under hypervisor = "clh" the QEMU katats-chv runs, not katats-chv itself.
 */
export function qemuProcs(stateDir: string, sandbox?: string): number[] {
  return listProcs()
    .filter((p) => p.cmdline.includes('qemu-system') && !isChv(p.cmdline) && p.cmdline.includes(stateDir) && (!sandbox || p.cmdline.includes(`/sandboxes/${sandbox}/`)))
    .map((p) => p.pid);
}

/** What runs beside a VM of this env, QEMU aside: katats-chv, its katats-fds front, virtiofsd. */
export function vmmHelperProcs(stateDir: string): number[] {
  const helper = (argv0: string) => /(^|\/)(katats-fds|virtiofsd)$/.test(argv0);
  return listProcs()
    .filter((p) => p.cmdline.includes(stateDir) && !p.comm.startsWith('qemu-system') && (isChv(p.cmdline) || helper(p.cmdline.split(' ')[0] ?? '')))
    .map((p) => p.pid);
}

/** Host cgroup directories (any hierarchy, a few levels deep) whose name holds `id`. */
export function cgroupsNamed(id: string): string[] {
  return execFileSync('find', ['/sys/fs/cgroup', '-maxdepth', '6', '-type', 'd', '-name', `*${id}*`], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

/** A count of rounds from the environment variable `name` (0-999), `fallback` when it is unset. */
export function countFromEnv(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  if (!/^\d{1,3}$/.test(v)) throw new Error(`${name}=${v}: expected a count (0-999)`);
  return Number(v);
}

/** Shim daemons serving the containerd at `address`, optionally only the one for sandbox `id`. */
export function shimProcs(address: string, id?: string): number[] {
  return listProcs()
    .filter((p) => p.cmdline.includes('shim.mjs') && p.cmdline.includes(address) && (!id || p.cmdline.includes(`-id ${id} `)))
    .map((p) => p.pid);
}

/** `ctr events` running in the background, its lines collected as they come. */
export function startEvents(c: Containerd): { child: ChildProcess; lines: string[] } {
  const child = c.ctrSpawn(['events']);
  const lines: string[] = [];
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts.filter(Boolean));
  });
  return { child, lines };
}

/** Processes whose environment holds every `KEY=value` given (e.g. a log binary's CONTAINER_ID). */
export function procsWithEnv(vars: Record<string, string>): number[] {
  const want = Object.entries(vars).map(([k, v]) => `${k}=${v}`);
  const out: number[] = [];
  for (const p of listProcs()) {
    try {
      const env = fs.readFileSync(`/proc/${p.pid}/environ`, 'utf8').split('\0');
      if (want.every((w) => env.includes(w))) out.push(p.pid);
    } catch {
      /* gone, or a kernel thread */
    }
  }
  return out;
}

/** A private katats env and a private containerd with katats registered and busybox imported. */
export async function katatsContainerd(): Promise<{ env: KatatsEnv; c: Containerd; image: string }> {
  const env = await katatsEnv();
  const c = await startContainerd({ runtimes: [env.runtime] });
  const img = await busyboxImage();
  await c.importImage(img.archive, 'katats.local/busybox:index');
  return { env, c, image: img.name };
}

/**
 * The katats suites' common end: containerd stopped by the harness (politely first), whatever of
 * this env still runs killed (its QEMUs, and `alsoKill()`, the suite's own helpers), the env
 * removed; then the checks that none of that force was needed. Returns the harness's report for
 * checks of the suite's own.
 */
export async function endKatatsSuite(
  c: Containerd | undefined,
  env: KatatsEnv | undefined,
  alsoKill: () => number[] = () => [],
): Promise<StopReport | undefined> {
  const report = await c?.stop();
  const leftQemu = env ? qemuProcs(env.stateDir) : [];
  const leftOther = alsoKill();
  for (const pid of [...leftQemu, ...leftOther]) process.kill(pid, 'SIGKILL');
  env?.cleanup();
  expect(report?.killed ?? []).toEqual([]);
  expect(leftQemu).toEqual([]);
  expect(leftOther).toEqual([]);
  return report;
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The `katats` CLI from the checkout, on this environment's configuration. */
export function katatsCli(env: KatatsEnv, ...args: string[]) {
  return runToolOk(path.join(ROOT, 'node_modules', '.bin', 'tsx'), [path.join(ROOT, 'shim', 'cli', 'katats.ts'), ...args, '--config', env.configFile], {
    timeoutMs: 300_000,
    timeoutCode: 'TEST_KATATS_CLI_TIMEOUT',
  });
}

/**
 * With `factory`: a katats env whose [factory] enable_template points at a fresh dir, and the
 * template `katats factory init` builds there; `end()` destroys it (before the env goes: destroy
 * detaches the templates' tmpfs) and checks nothing stays mounted. Without: a plain env.
 */
export async function factoryKatatsEnv(factory: boolean): Promise<{ env: KatatsEnv; end: () => Promise<void> }> {
  if (!factory) return { env: await katatsEnv(), end: () => Promise.resolve() };
  const templates = fs.mkdtempSync(path.join(os.tmpdir(), 'ktpl-'));
  const env = await katatsEnv({ extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"` });
  const end = async () => {
    try {
      await katatsCli(env, 'factory', 'destroy');
    } finally {
      expect(isMounted(templates)).toBe(false);
      fs.rmSync(templates, { recursive: true, force: true });
    }
  };
  try {
    expect((await katatsCli(env, 'factory', 'init')).stdout).toMatch(/^built template [0-9a-f]{64} at /);
  } catch (e) {
    await end().catch(() => {});
    env.cleanup();
    throw e;
  }
  return { env, end };
}

/** The pod's VM came from the template (the shim's log says so). */
export function expectCloned(env: KatatsEnv, sandbox: string, containerdLog?: string): void {
  const log = fs.readFileSync(path.join(env.logDir, `${sandbox}.log`), 'utf8');
  expect(log, logsOf(env.logDir, sandbox, containerdLog, 20)).toContain('factory: VM cloned from template');
  expect(log).not.toContain('factory: cold boot');
}
