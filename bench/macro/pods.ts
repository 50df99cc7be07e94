// One pod as the macro benchmark sees it: a container started with `ctr run` under one registered
// runtime (runc, runsc through the runc shim, katats), its host processes (the shim and everything
// under it: container processes, runsc's sandbox and gofer, later QEMU) and their PSS.
import type { Containerd } from '../../harness/containerd.js';
import { cleanupRunsc } from '../../harness/runsc.js';
import { listProcs, pssKiB, withDescendants, type ProcInfo } from '../../harness/procs.js';

export interface TimedRun {
  /** From spawning `ctr run` to the first byte on its stdout (undefined when nothing came). */
  firstOutputMs?: number;
  /** From spawning `ctr run` to its exit. */
  exitMs: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `ctr run --rm RUNTIME IMAGE ID CMD...`, timed to the first output byte and to exit. */
export function timedRunRm(cd: Containerd, runtime: string, image: string, id: string, cmd: string[], timeoutMs = 120_000): Promise<TimedRun> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let firstOutputMs: number | undefined;
    let stdout = '';
    let stderr = '';
    const child = cd.ctrSpawn(['run', '--rm', ...cd.runtimeArgs(runtime), image, id, ...cmd]);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      firstOutputMs ??= performance.now() - t0;
      stdout += d.toString();
    });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ firstOutputMs, exitMs: performance.now() - t0, code, stdout, stderr });
    });
  });
}

/** `ctr run -d`: returns once the task has started; rejects with ctr's stderr when it fails. */
export async function startDetached(cd: Containerd, runtime: string, image: string, id: string, cmd: string[], timeoutMs = 120_000): Promise<number> {
  const r = await cd.ctr(['run', '-d', ...cd.runtimeArgs(runtime), image, id, ...cmd], { timeoutMs });
  if (r.code !== 0) throw new Error(`ctr run -d ${id} (${runtime}): exit ${r.code ?? r.signal}: ${r.stderr.trim().slice(-500)}`);
  return r.ms;
}

/** `ctr task exec` timed from spawn to exit. */
export interface TimedExec {
  ms: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

export async function timedExec(cd: Containerd, id: string, execId: string, cmd: string[], timeoutMs = 120_000): Promise<TimedExec> {
  const r = await cd.ctr(['tasks', 'exec', '--exec-id', execId, id, ...cmd], { timeoutMs });
  return { ms: r.ms, code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** Kills and removes the task and container; for runsc (or whenever something is left) the full runsc clean-up. */
export async function removePod(cd: Containerd, runtime: string, id: string): Promise<void> {
  await cd.ctr(['tasks', 'rm', '-f', id], { timeoutMs: 30_000 });
  await cd.ctr(['containers', 'rm', id], { timeoutMs: 30_000 });
  if (podProcesses(cd, id).length) await cleanupRunsc(cd, id, { runtimeName: runtime, graceMs: 2000 });
}

/** The pod's host processes: its shim (the long-running `-id ID -address SOCK` one) and all its descendants. */
export function podProcesses(cd: Containerd, id: string, procs: ProcInfo[] = listProcs()): ProcInfo[] {
  const shims = procs.filter((p) => {
    const t = p.cmdline.split(' ');
    const has = (flag: string, v: string) => t.some((x, i) => x === flag && t[i + 1] === v);
    return has('-id', id) && has('-address', cd.address) && !t.includes('delete');
  });
  return withDescendants(
    shims.map((s) => s.pid),
    procs,
  );
}

/** Sum of the PSS (KiB) of the pod's host processes, with the processes counted. */
export function podPss(cd: Containerd, id: string): { kib: number; processes: string[] } {
  const ps = podProcesses(cd, id);
  return { kib: ps.reduce((a, p) => a + pssKiB(p.pid), 0), processes: ps.map((p) => p.comm) };
}
