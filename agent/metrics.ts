// GetMetrics: the agent process's own metrics in the Prometheus text exposition format, under
// upstream's kata_agent_ names plus the conventional process_ ones.
import fs from 'node:fs';

let scrapes = 0;
const CLK_TCK = 100;
const PAGE = 4096;

function gauge(lines: string[], name: string, help: string, value: number, type = 'gauge', labels = ''): void {
  lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}${labels} ${Number.isFinite(value) ? value : 0}`);
}

/** /proc/meminfo fields the guest reports, under Kata's item names for kata_guest_meminfo. */
const MEMINFO_ITEMS: Record<string, string> = {
  MemTotal: 'mem_total',
  MemFree: 'mem_free',
  MemAvailable: 'mem_available',
  Buffers: 'buffers',
  Cached: 'cached',
  Shmem: 'shmem',
  AnonPages: 'anon_pages',
  Slab: 'slab',
};

/** kata_guest_meminfo{item=...}: the guest kernel's memory counters, in bytes. */
export function guestMeminfo(text: string): string {
  const lines = ['# HELP kata_guest_meminfo Statistics about memory usage in the guest, in bytes.', '# TYPE kata_guest_meminfo gauge'];
  for (const m of text.matchAll(/^(\w+):\s+(\d+) kB$/gm)) {
    const item = MEMINFO_ITEMS[m[1]!];
    if (item) lines.push(`kata_guest_meminfo{item="${item}"} ${Number(m[2]) * 1024}`);
  }
  return lines.join('\n') + '\n';
}

export function agentMetrics(extra: Record<string, number> = {}): string {
  scrapes++;
  const lines: string[] = [];
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  // Fields after the command name (which may hold spaces) start at state (field 3).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(f[11]) / CLK_TCK;
  const stime = Number(f[12]) / CLK_TCK;
  const threads = Number(f[17]);
  const vsize = Number(f[20]);
  const rss = Number(f[21]) * PAGE;
  const startTicks = Number(f[19]);
  const btime = Number(/^btime (\d+)/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1] ?? 0);
  let fds = 0;
  try {
    fds = fs.readdirSync('/proc/self/fd').length;
  } catch {
    /* no procfs */
  }
  const mem = process.memoryUsage();
  gauge(lines, 'kata_agent_scrape_count', 'Metrics scrape count', scrapes, 'counter');
  gauge(lines, 'kata_agent_threads', 'Agent process threads', threads);
  gauge(lines, 'kata_agent_total_time', 'Agent process total time (user + system) in seconds', utime + stime);
  gauge(lines, 'kata_agent_total_vm', 'Agent process total virtual memory in bytes', vsize);
  gauge(lines, 'kata_agent_total_rss', 'Agent process resident set size in bytes', rss);
  gauge(lines, 'process_cpu_seconds_total', 'Total user and system CPU time spent in seconds', utime + stime, 'counter');
  gauge(lines, 'process_resident_memory_bytes', 'Resident memory size in bytes', rss);
  gauge(lines, 'process_virtual_memory_bytes', 'Virtual memory size in bytes', vsize);
  gauge(lines, 'process_open_fds', 'Number of open file descriptors', fds);
  gauge(lines, 'process_start_time_seconds', 'Start time of the process since unix epoch in seconds', btime + startTicks / CLK_TCK);
  gauge(lines, 'nodejs_heap_used_bytes', 'V8 heap used in bytes', mem.heapUsed);
  gauge(lines, 'nodejs_heap_total_bytes', 'V8 heap total in bytes', mem.heapTotal);
  for (const [k, v] of Object.entries(extra)) gauge(lines, k, k.replace(/_/g, ' '), v);
  let meminfo = '';
  try {
    meminfo = guestMeminfo(fs.readFileSync('/proc/meminfo', 'utf8'));
  } catch {
    /* no procfs */
  }
  return lines.join('\n') + '\n' + meminfo;
}
