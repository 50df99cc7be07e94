// gVisor's runsc from Debian's `runsc` package (unpacked, not installed), run by containerd's runc
// shim as its runc binary through a two-line wrapper that adds `--network=none --ignore-cgroups`
// (without them runsc refuses: "cannot run with network enabled in root network namespace").
// A failed runsc start can leave the runc shim and runsc's gofer and sandbox behind: cleanupRunsc().
//
// The package comes from trixie by default: sid's build of the same upstream release (0.0~20240729.0-7,
// compiled with Go 1.26) panics in the sentry ("running on goroutine 0 (task goroutine for
// kernel.Task ...)", gVisor's goroutine-id assertion) as soon as a task blocks in wait4 for a child
// that runs a while, e.g. `dd ... | sha256sum`; trixie's (-4+b7, Go 1.24) does not.
// KATATS_RUNSC_SUITE=sid selects sid's anyway.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { runOk } from './exec.js';
import { unpackDeb, type Suite } from './debs.js';
import { CACHE_DIR } from './paths.js';
import { RUNC_V2, type Containerd, type RuntimeRegistration } from './containerd.js';
import { unmountUnder } from './mounts.js';
import { killMatching, procsMatching, type ProcInfo } from './procs.js';

/** Which Debian suite's runsc is used unless told otherwise (see the note at the top). */
export const DEFAULT_RUNSC_SUITE: Suite = (process.env.KATATS_RUNSC_SUITE as Suite | undefined) ?? 'trixie';

/** What the wrapper adds to every runsc call the shim makes. */
export const RUNSC_FLAGS = ['--network=none', '--ignore-cgroups'];

export interface Runsc {
  /** The unpacked runsc binary. */
  binary: string;
  /** `runsc --version`'s first line, e.g. "runsc version 0.0~20240729.0". */
  version: string;
  /** Debian package version, e.g. 0.0~20240729.0-7+b1. */
  debVersion: string;
  /** The wrapper to hand to the runc shim (`ctr run --runc-binary WRAPPER`). */
  wrapper: string;
}

export interface RunscOptions {
  /** Where the wrapper is written (default .cache/runsc/). */
  dir?: string;
  suite?: Suite;
  /** Flags the wrapper adds (default RUNSC_FLAGS). */
  flags?: string[];
  /** Adds --debug --debug-log=DIR/ so that runsc's own logs land there (for diagnosing a failed start). */
  debugLogDir?: string;
  onProgress?: (line: string) => void;
}

/** The wrapper script: `exec RUNSC FLAGS "$@"`. */
export function runscWrapperScript(binary: string, flags: string[]): string {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return `#!/bin/sh\nexec ${[binary, ...flags].map(q).join(' ')} "$@"\n`;
}

/** Fetches and unpacks runsc (cached) and writes the wrapper. */
export async function prepareRunsc(opts: RunscOptions = {}): Promise<Runsc> {
  const deb = await unpackDeb('runsc', { suite: opts.suite ?? DEFAULT_RUNSC_SUITE, onProgress: opts.onProgress });
  const binary = path.join(deb.dir, 'usr', 'bin', 'runsc');
  if (!fs.existsSync(binary)) throw new Error(`runsc package ${deb.version} holds no usr/bin/runsc`);
  const version = (await runOk(binary, ['--version'], { timeoutMs: 20_000 })).stdout.split('\n')[0]!.trim();
  const flags = [...(opts.flags ?? RUNSC_FLAGS)];
  if (opts.debugLogDir) {
    fs.mkdirSync(opts.debugLogDir, { recursive: true });
    flags.push('--debug', `--debug-log=${opts.debugLogDir.replace(/\/?$/, '/')}`);
  }
  const script = runscWrapperScript(binary, flags);
  const dir = opts.dir ?? path.join(CACHE_DIR, 'runsc');
  fs.mkdirSync(dir, { recursive: true });
  const wrapper = path.join(dir, `runsc-wrapper-${createHash('sha256').update(script).digest('hex').slice(0, 12)}`);
  if (!fs.existsSync(wrapper) || fs.readFileSync(wrapper, 'utf8') !== script) {
    fs.writeFileSync(wrapper + `.tmp-${process.pid}`, script, { mode: 0o755 });
    fs.renameSync(wrapper + `.tmp-${process.pid}`, wrapper);
  }
  return { binary, version, debVersion: deb.version, wrapper };
}

/** The registration for startContainerd({ runtimes }): the runc shim with the wrapper as its runc binary. */
export function runscRuntime(runsc: Runsc, name = 'runsc'): RuntimeRegistration {
  return { name, runtimeType: RUNC_V2, runcBinary: runsc.wrapper };
}

/**
 * After a failed (or abandoned) runsc start of container `id`. A failed start leaves the runc shim,
 * runsc's gofer and sandbox for a few seconds, and containerd's own clean-up (`shim delete`, which
 * runs `runsc delete --force`) may start later still. So: wait up to graceMs for the gofer and
 * sandbox to go by themselves, remove the task and container through containerd, then kill whatever still names the
 * id's shim, bundle or runsc state until two scans in a row find nothing; unmount the bundle's rootfs
 * and remove runsc's state of the id. Returns the processes it had to kill.
 */
export async function cleanupRunsc(cd: Containerd, id: string, opts: { runtimeName?: string; graceMs?: number } = {}): Promise<ProcInfo[]> {
  const bundle = path.join(cd.state, 'io.containerd.runtime.v2.task', cd.namespace, id);
  const root = path.join(cd.runcRoot(opts.runtimeName ?? 'runsc'), cd.namespace);
  const isShim = (p: ProcInfo): boolean => {
    // The shim (start or delete form): `-id ID` and `-address OUR_SOCKET` anywhere in argv.
    const toks = p.cmdline.split(' ');
    return toks.some((t, i) => t === '-id' && toks[i + 1] === id) && toks.some((t, i) => t === '-address' && toks[i + 1] === cd.address);
  };
  // runsc-gofer, runsc-sandbox, `runsc delete`: `--bundle=BUNDLE`, `--log=BUNDLE/log.json`, `--log BUNDLE/log.json`.
  const isRunsc = (p: ProcInfo): boolean => p.cmdline.split(' ').some((t) => t === bundle || t.endsWith('=' + bundle) || t.includes(bundle + '/'));
  const ours = (p: ProcInfo): boolean => isShim(p) || isRunsc(p);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const graceEnd = Date.now() + (opts.graceMs ?? 5000);
  // The gofer and sandbox of a failed start exit by themselves within a few seconds; removing the task
  // before that can leave `runsc delete --force` hanging. The shim stays until the task is removed.
  while (procsMatching((p) => isRunsc(p) && !isShim(p)).length && Date.now() < graceEnd) await sleep(100);
  await cd.ctr(['tasks', 'rm', '-f', id], { timeoutMs: 15_000 });
  await cd.ctr(['containers', 'rm', id], { timeoutMs: 15_000 });
  const killed: ProcInfo[] = [];
  const end = Date.now() + 15_000;
  for (let quiet = 0; quiet < 2 && Date.now() < end; ) {
    const k = await killMatching(ours);
    killed.push(...k);
    quiet = k.length ? 0 : quiet + 1;
    await sleep(200);
  }
  await unmountUnder(bundle);
  // A killed shim leaves its socket behind.
  if (killed.some(isShim)) fs.rmSync(cd.shimSocketPath(id), { force: true });
  for (const e of fs.existsSync(root) ? fs.readdirSync(root) : []) {
    if (e === id || e.startsWith(id + '_') || e.includes(`_sandbox:${id}`)) fs.rmSync(path.join(root, e), { recursive: true, force: true });
  }
  if (killed.length) cd.logger.warn({ id, killed: killed.map((p) => `${p.pid} ${p.cmdline}`) }, 'runsc leftovers killed');
  return killed;
}
