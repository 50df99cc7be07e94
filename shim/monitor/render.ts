// A scrape as the Prometheus text exposition format (version 0.0.4). Written here rather than with
// prom-client: every scrape renders a fresh snapshot of what the shims said, so a registry of
// long-lived metric objects (reset and refilled per scrape, racing when two scrapes overlap) would
// add state without removing any code; what is left to get right is escaping, done below.
import { SCRAPE_FAILURES, type ScrapeFailure } from './client.js';
import type { Scrape } from './collect.js';
import type { SandboxReport } from './report.js';

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Record<string, string>;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function fmt(v: number): string {
  return Number.isFinite(v) ? String(v) : v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN';
}

class Exposition {
  private readonly out: string[] = [];

  family(name: string, type: 'gauge' | 'counter', help: string, samples: [Labels, number][]): void {
    this.out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) {
      const l = Object.entries(labels).map(([k, x]) => `${k}="${escapeLabel(x)}"`);
      this.out.push(`${name}${l.length ? `{${l.join(',')}}` : ''} ${fmt(v)}`);
    }
  }

  text(): string {
    return this.out.join('\n') + '\n';
  }
}

/** The monitor's own counters, over its lifetime. */
export interface MonitorCounters {
  scrapes: number;
  /** Per reason: a shim's failure, or 'agent' for a pod whose agent did not answer its Health.Check. */
  failures: Record<ScrapeFailure | 'agent', number>;
}

export function newCounters(): MonitorCounters {
  return { scrapes: 0, failures: Object.fromEntries([...SCRAPE_FAILURES, 'agent'].map((r) => [r, 0])) as MonitorCounters['failures'] };
}

/** Counts one scrape and its failures. */
export function count(c: MonitorCounters, s: Scrape): void {
  c.scrapes++;
  for (const f of s.failures) c.failures[f.reason]++;
  for (const r of s.reports) if (r.agent && 'error' in r.agent) c.failures.agent++;
}

export function render(s: Scrape, c: MonitorCounters): string {
  const e = new Exposition();
  const id = (r: SandboxReport) => ({ sandbox_id: r.sandboxId });
  const per = <T>(pick: (r: SandboxReport) => T | undefined, each: (r: SandboxReport, v: T) => [Labels, number][]): [Labels, number][] =>
    s.reports.flatMap((r) => {
      const v = pick(r);
      return v === undefined ? [] : each(r, v);
    });

  e.family('katats_pods_running', 'gauge', 'Pods whose shim answered this scrape.', [[{}, s.reports.length]]);
  e.family(
    'katats_sandbox_info',
    'gauge',
    'One per pod: its ids, how its VM was made (boot_path: template or cold) and the VM state.',
    s.reports.map((r) => [
      {
        ...id(r),
        namespace: r.namespace,
        cri_name: r.cri?.name ?? '',
        cri_namespace: r.cri?.namespace ?? '',
        cri_uid: r.cri?.uid ?? '',
        boot_path: r.bootPath ?? '',
        accel: r.accel ?? '',
        vm_state: r.vmState,
      },
      1,
    ]),
  );
  e.family(
    'katats_sandbox_boot_seconds',
    'gauge',
    "Time from the shim's launch of the pod's VM until its agent answered (a template's clone, or a cold boot).",
    per((r) => (r.bootPath && r.steps['vm_ready'] !== undefined ? r.steps['vm_ready'] : undefined), (r, ms) => [[{ ...id(r), boot_path: r.bootPath! }, ms / 1000]]),
  );
  e.family(
    'katats_sandbox_step_seconds',
    'gauge',
    'Duration of each pod-start step: shim_serving, vm_ready, create_sandbox, create_container (the first), start (the first).',
    s.reports.flatMap((r) => Object.entries(r.steps).map(([step, ms]): [Labels, number] => [{ ...id(r), step }, ms / 1000])),
  );
  e.family(
    'katats_sandbox_agent_rtt_seconds',
    'gauge',
    "A Health.Check to the pod's agent, timed during this scrape.",
    per((r) => (r.agent && 'rttMs' in r.agent ? r.agent.rttMs : undefined), (r, ms) => [[id(r), ms / 1000]]),
  );
  e.family(
    'katats_sandbox_guest_memory_bytes',
    'gauge',
    "The guest kernel's memory (total, free, available), from the agent.",
    per(
      (r) => r.guestMemory,
      (r, m) => [
        [{ ...id(r), item: 'total' }, m.totalBytes],
        [{ ...id(r), item: 'free' }, m.freeBytes],
        [{ ...id(r), item: 'available' }, m.availableBytes],
      ],
    ),
  );
  e.family(
    'katats_sandbox_host_pss_bytes',
    'gauge',
    "Host memory of the pod's shim and VMM: proportional set size from /proc/<pid>/smaps_rollup.",
    s.reports.flatMap((r) => [
      ...(r.pss.shimBytes !== undefined ? [[{ ...id(r), process: 'shim' }, r.pss.shimBytes] as [Labels, number]] : []),
      ...(r.pss.vmmBytes !== undefined ? [[{ ...id(r), process: 'vmm' }, r.pss.vmmBytes] as [Labels, number]] : []),
    ]),
  );
  e.family('katats_sandbox_containers', 'gauge', "Containers the pod's shim holds (the sandbox container included).", s.reports.map((r) => [id(r), r.containers]));
  e.family('katats_monitor_scrape_count', 'counter', 'Scrapes served by this monitor.', [[{}, c.scrapes]]);
  e.family(
    'katats_monitor_scrape_errors_total',
    'counter',
    "Shims that did not give a usable report (timeout, refused while running, too_large, bad_response, io), plus pods whose agent did not answer (agent).",
    Object.entries(c.failures).map(([reason, n]) => [{ reason }, n]),
  );
  e.family('katats_monitor_scrape_duration_seconds', 'gauge', 'How long this scrape took to ask every shim.', [[{}, s.durationMs / 1000]]);
  return e.text();
}
