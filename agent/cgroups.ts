// Cgroups as the agent sees them: which hierarchy the machine has (the guest: v2; a development
// host may have v1 or the v1+v2 "hybrid"), where a container's cgroup lives, and its statistics
// as grpc.CgroupStats, read straight from the cgroup files of either version.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { Init } from '../proto/registry.js';

export type CgroupMode = 'v2' | 'v1' | 'hybrid';

export interface CgroupLayout {
  mode: CgroupMode;
  root: string;
  /** crun must run without the cgroup2 mount (hybrid hosts whose v2 side holds a controller). */
  hideUnified: boolean;
}

export function detectCgroups(root = '/sys/fs/cgroup'): CgroupLayout {
  if (fs.existsSync(path.join(root, 'cgroup.controllers'))) return { mode: 'v2', root, hideUnified: false };
  const unified = path.join(root, 'unified', 'cgroup.controllers');
  if (fs.existsSync(unified)) {
    const controllers = fs.readFileSync(unified, 'utf8').trim();
    return { mode: 'hybrid', root, hideUnified: controllers.length > 0 };
  }
  return { mode: 'v1', root, hideUnified: false };
}

/** The v1 hierarchy directory holding `controller` (handles co-mounts such as cpu,cpuacct). */
export function v1ControllerDir(root: string, controller: string): string | undefined {
  const direct = path.join(root, controller);
  if (fs.existsSync(direct)) return direct;
  try {
    for (const e of fs.readdirSync(root)) if (e.split(',').includes(controller)) return path.join(root, e);
  } catch {
    /* no such root */
  }
  return undefined;
}

/** Where one container's cgroup is, per controller on v1 or as one directory on v2. */
export class ContainerCgroup {
  constructor(
    readonly layout: CgroupLayout,
    /** the cgroupsPath given to crun, absolute within the hierarchy */
    readonly cgPath: string,
  ) {}

  get v2(): boolean {
    return this.layout.mode === 'v2';
  }

  dir(controller: string): string | undefined {
    if (this.v2) return path.join(this.layout.root, this.cgPath);
    const base = v1ControllerDir(this.layout.root, controller);
    return base ? path.join(base, this.cgPath) : undefined;
  }

  /** The directory to watch for OOM: memory.oom_control (v1) or memory.events (v2). */
  memoryDir(): string | undefined {
    return this.dir('memory');
  }

  stats(): Init<grpc.CgroupStats> {
    return this.v2 ? statsV2(this.dir('')!) : statsV1(this);
  }
}

function readText(file: string | undefined): string | undefined {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function readNum(file: string | undefined): number {
  const t = readText(file)?.trim();
  if (!t || t === 'max') return 0;
  const n = Number(t);
  return Number.isFinite(n) ? n : 0;
}

/** "key value" lines (memory.stat, cpu.stat, cpuacct.stat, memory.events) as a map. */
export function readKeyed(file: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  const t = readText(file);
  if (!t) return out;
  for (const line of t.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && Number.isFinite(Number(v))) out.set(k, Number(v));
  }
  return out;
}

const USER_HZ = 100;
const j = (dir: string | undefined, f: string) => (dir ? path.join(dir, f) : undefined);

function statsV1(cg: ContainerCgroup): Init<grpc.CgroupStats> {
  const cpuacct = cg.dir('cpuacct');
  const cpu = cg.dir('cpu');
  const mem = cg.dir('memory');
  const pids = cg.dir('pids');
  const blkio = cg.dir('blkio');
  const acct = readKeyed(j(cpuacct, 'cpuacct.stat'));
  const percpu = (readText(j(cpuacct, 'cpuacct.usage_percpu')) ?? '')
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
  const thr = readKeyed(j(cpu, 'cpu.stat'));
  const memStat = readKeyed(j(mem, 'memory.stat'));
  const memData = (prefix: string) => ({
    usage: readNum(j(mem, `${prefix}usage_in_bytes`)),
    max_usage: readNum(j(mem, `${prefix}max_usage_in_bytes`)),
    failcnt: readNum(j(mem, `${prefix}failcnt`)),
    limit: readNum(j(mem, `${prefix}limit_in_bytes`)),
  });
  const blk = (file: string) => parseBlkioV1(readText(j(blkio, file)));
  let ioBytes = blk('blkio.throttle.io_service_bytes_recursive');
  let ioOps = blk('blkio.throttle.io_serviced_recursive');
  if (ioBytes.length === 0) ioBytes = blk('blkio.io_service_bytes_recursive');
  if (ioOps.length === 0) ioOps = blk('blkio.io_serviced_recursive');
  return {
    cpu_stats: {
      cpu_usage: {
        total_usage: readNum(j(cpuacct, 'cpuacct.usage')),
        percpu_usage: percpu,
        usage_in_kernelmode: ((acct.get('system') ?? 0) * 1e9) / USER_HZ,
        usage_in_usermode: ((acct.get('user') ?? 0) * 1e9) / USER_HZ,
      },
      throttling_data: {
        periods: thr.get('nr_periods') ?? 0,
        throttled_periods: thr.get('nr_throttled') ?? 0,
        throttled_time: thr.get('throttled_time') ?? 0,
      },
    },
    memory_stats: {
      cache: memStat.get('cache') ?? memStat.get('total_cache') ?? 0,
      usage: memData('memory.'),
      swap_usage: memData('memory.memsw.'),
      kernel_usage: memData('memory.kmem.'),
      use_hierarchy: readNum(j(mem, 'memory.use_hierarchy')) === 1,
      stats: Object.fromEntries(memStat),
    },
    pids_stats: { current: readNum(j(pids, 'pids.current')), limit: readNum(j(pids, 'pids.max')) },
    blkio_stats: { io_service_bytes_recursive: ioBytes, io_serviced_recursive: ioOps },
  };
}

/** blkio v1 "MAJ:MIN Op value" lines; the "Total" lines are dropped as runc does. */
export function parseBlkioV1(text: string | undefined): Init<grpc.BlkioStatsEntry>[] {
  const out: Init<grpc.BlkioStatsEntry>[] = [];
  for (const line of (text ?? '').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 3 || !f[0]!.includes(':')) continue;
    const [maj, min] = f[0]!.split(':').map(Number);
    out.push({ major: maj, minor: min, op: f[1], value: Number(f[2]) });
  }
  return out;
}

/** io.stat v2 lines "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.." as v1-style entries. */
export function parseIoStatV2(text: string | undefined): { bytes: Init<grpc.BlkioStatsEntry>[]; ops: Init<grpc.BlkioStatsEntry>[] } {
  const bytes: Init<grpc.BlkioStatsEntry>[] = [];
  const ops: Init<grpc.BlkioStatsEntry>[] = [];
  for (const line of (text ?? '').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (!f[0] || !f[0].includes(':')) continue;
    const [major, minor] = f[0].split(':').map(Number);
    const kv = new Map(f.slice(1).map((x) => x.split('=') as [string, string]));
    const n = (k: string) => Number(kv.get(k) ?? 0);
    bytes.push({ major, minor, op: 'Read', value: n('rbytes') }, { major, minor, op: 'Write', value: n('wbytes') });
    ops.push({ major, minor, op: 'Read', value: n('rios') }, { major, minor, op: 'Write', value: n('wios') });
  }
  return { bytes, ops };
}

export function statsV2(dir: string): Init<grpc.CgroupStats> {
  const cpu = readKeyed(path.join(dir, 'cpu.stat'));
  const memStat = readKeyed(path.join(dir, 'memory.stat'));
  const events = readKeyed(path.join(dir, 'memory.events'));
  const io = parseIoStatV2(readText(path.join(dir, 'io.stat')));
  return {
    cpu_stats: {
      cpu_usage: {
        total_usage: (cpu.get('usage_usec') ?? 0) * 1000,
        percpu_usage: [],
        usage_in_kernelmode: (cpu.get('system_usec') ?? 0) * 1000,
        usage_in_usermode: (cpu.get('user_usec') ?? 0) * 1000,
      },
      throttling_data: {
        periods: cpu.get('nr_periods') ?? 0,
        throttled_periods: cpu.get('nr_throttled') ?? 0,
        throttled_time: (cpu.get('throttled_usec') ?? 0) * 1000,
      },
    },
    memory_stats: {
      cache: memStat.get('file') ?? 0,
      usage: {
        usage: readNum(path.join(dir, 'memory.current')),
        max_usage: readNum(path.join(dir, 'memory.peak')),
        failcnt: events.get('max') ?? 0,
        limit: readNum(path.join(dir, 'memory.max')),
      },
      swap_usage: {
        usage: readNum(path.join(dir, 'memory.swap.current')),
        limit: readNum(path.join(dir, 'memory.swap.max')),
      },
      use_hierarchy: true,
      stats: Object.fromEntries(memStat),
    },
    pids_stats: { current: readNum(path.join(dir, 'pids.current')), limit: readNum(path.join(dir, 'pids.max')) },
    blkio_stats: { io_service_bytes_recursive: io.bytes, io_serviced_recursive: io.ops },
  };
}

/** Removes now-empty parent cgroup directories up to (not including) the hierarchy roots. */
export function removeCgroupParents(layout: CgroupLayout, cgPath: string): void {
  const parts = cgPath.split('/').filter(Boolean);
  const roots = layout.mode === 'v2' ? [layout.root] : listV1Roots(layout.root);
  for (const r of roots) {
    for (let n = parts.length; n > 0; n--) {
      try {
        fs.rmdirSync(path.join(r, ...parts.slice(0, n)));
      } catch {
        /* not empty, busy or gone */
      }
    }
  }
}

function listV1Roots(root: string): string[] {
  try {
    return fs
      .readdirSync(root)
      .filter((e) => e !== 'unified')
      .map((e) => path.join(root, e));
  } catch {
    return [];
  }
}
