// Host processes seen through /proc: finding a pod's processes (a shim and everything under it),
// their memory (PSS from smaps_rollup), and killing what a failed run left behind.
import fs from 'node:fs';
import { hasExited } from '../sys/proc.js';

export interface ProcInfo {
  pid: number;
  ppid: number;
  /** argv joined with spaces. */
  cmdline: string;
  /** The kernel's short name (comm). */
  comm: string;
}

/** Every process visible in /proc now (processes that vanish while reading are skipped). */
export function listProcs(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      // comm may hold spaces and parentheses: the fields after it start at the last ')'.
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const ppid = Number(stat.slice(close + 2).split(' ')[1]);
      const cmdline = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0+$/, '').split('\0').join(' ');
      out.push({ pid: Number(name), ppid, cmdline, comm });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The given pids and all their descendants (from one snapshot of /proc). */
export function withDescendants(roots: number[], procs: ProcInfo[] = listProcs()): ProcInfo[] {
  const children = new Map<number, ProcInfo[]>();
  for (const p of procs) {
    const list = children.get(p.ppid) ?? [];
    list.push(p);
    children.set(p.ppid, list);
  }
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const seen = new Set<number>();
  const out: ProcInfo[] = [];
  const stack = roots.filter((r) => byPid.has(r));
  while (stack.length) {
    const pid = stack.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    out.push(byPid.get(pid)!);
    for (const c of children.get(pid) ?? []) stack.push(c.pid);
  }
  return out;
}

/** Proportional set size of one process in KiB (smaps_rollup), or 0 when it is gone. */
export function pssKiB(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** What selects processes: substrings of the command line (any of them), or a predicate. */
export type ProcMatch = string[] | ((p: ProcInfo) => boolean);

/** Processes whose command line contains any of the needles, or that the predicate accepts (never this process). */
export function procsMatching(match: ProcMatch, procs: ProcInfo[] = listProcs()): ProcInfo[] {
  const pred = typeof match === 'function' ? match : (p: ProcInfo) => match.some((n) => n.length > 0 && p.cmdline.includes(n));
  return procs.filter((p) => p.pid !== process.pid && pred(p));
}

/** SIGKILLs the processes by pid and waits (up to timeoutMs) until they are gone. Returns the pids signalled. */
export async function killPids(pids: number[], timeoutMs = 5000): Promise<number[]> {
  const hit: number[] = [];
  for (const pid of new Set(pids)) {
    if (pid === process.pid || pid <= 1) continue;
    try {
      process.kill(pid, 'SIGKILL');
      hit.push(pid);
    } catch {
      /* already gone */
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (hit.some((pid) => !hasExited(pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return hit;
}

/**
 * Kills every process that `match` selects, together with all their
 * descendants (a runc shim's container processes, runsc's sandbox and gofer), children first
 * collected from one snapshot so that nothing escapes by being reparented in between.
 */
export async function killMatching(match: ProcMatch): Promise<ProcInfo[]> {
  const procs = listProcs();
  const roots = procsMatching(match, procs).map((p) => p.pid);
  const victims = withDescendants(roots, procs).filter((p) => p.pid !== process.pid);
  await killPids(victims.map((p) => p.pid));
  return victims;
}

/** Every path that some process has open now (from /proc/<pid>/fd links). */
export function openPaths(): Set<string> {
  const out = new Set<string>();
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        out.add(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      } catch {
        /* closed meanwhile */
      }
    }
  }
  return out;
}
