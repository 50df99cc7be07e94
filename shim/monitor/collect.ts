// One scrape: find the pods' shims from the shim state dir (a sandbox dir with a monitor socket)
// and ask each for its report, a few at a time, each within its own deadline. A shim that died
// (nothing listens, and its recorded pid no longer runs this pod's shim) has simply gone: its pod
// drops out of the scrape without counting as an error, whatever `shim delete` has cleaned up yet.
import fs from 'node:fs';
import path from 'node:path';
import { isValidId } from '../../sys/ids.js';
import { readRecord } from '../layout.js';
import { fetchReport, ShimScrapeError, type ScrapeFailure } from './client.js';
import { MONITOR_SOCKET, type SandboxReport } from './report.js';

/** Shims asked at once: a scrape of many pods does not open a socket to each at the same moment. */
const CONCURRENCY = 16;
/** Sandbox dirs looked at per scrape: a state dir filled with junk costs a bounded walk. */
const MAX_SANDBOXES = 4096;

export interface ShimFailure {
  sandboxId: string;
  reason: ScrapeFailure;
  message: string;
}

export interface Scrape {
  reports: SandboxReport[];
  failures: ShimFailure[];
  durationMs: number;
}

interface Target {
  sandboxId: string;
  socket: string;
}

export function findShims(stateDir: string): Target[] {
  const root = path.join(stateDir, 'sandboxes');
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return [];
  }
  const out: Target[] = [];
  for (const id of names.slice(0, MAX_SANDBOXES)) {
    if (!isValidId(id)) continue;
    const socket = path.join(root, id, MONITOR_SOCKET);
    if (fs.lstatSync(socket, { throwIfNoEntry: false })?.isSocket()) out.push({ sandboxId: id, socket });
  }
  return out;
}

/** The recorded shim of this pod still runs: its command line carries `-id <sandbox>` (not a reused pid). */
export function shimAlive(stateDir: string, sandboxId: string): boolean {
  const pid = readRecord(stateDir, sandboxId)?.shimPid;
  if (!pid) return false;
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('-id');
    return i >= 0 && argv[i + 1] === sandboxId;
  } catch {
    return false;
  }
}

export async function scrapeShims(stateDir: string, o: { timeoutMs?: number } = {}): Promise<Scrape> {
  const t0 = performance.now();
  const targets = findShims(stateDir);
  const reports: SandboxReport[] = [];
  const failures: ShimFailure[] = [];
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const t = targets[next++]!;
      try {
        const r = await fetchReport(t.socket, o);
        // The dir's name is the monitor's word for the pod; a report about another pod is refused.
        if (r.sandboxId !== t.sandboxId) failures.push({ sandboxId: t.sandboxId, reason: 'bad_response', message: `${t.socket}: the report names sandbox ${r.sandboxId}` });
        else reports.push(r);
      } catch (e) {
        const err = e instanceof ShimScrapeError ? e : new ShimScrapeError('io', String(e));
        if (err.noListener && !shimAlive(stateDir, t.sandboxId)) continue;
        failures.push({ sandboxId: t.sandboxId, reason: err.reason, message: err.message });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, targets.length) }, worker));
  reports.sort((a, b) => a.sandboxId.localeCompare(b.sandboxId));
  return { reports, failures, durationMs: performance.now() - t0 };
}
