// The agent's cgroup statistics as containerd's cgroups v1 Metrics, the shape `ctr task metrics`
// and the CRI decode from StatsResponse.stats (Kata's shim reports the same type).
import type { grpc, io } from '../proto/gen/types.js';
import { packAny, type Init } from '../proto/registry.js';

function memEntry(d: grpc.MemoryData | null | undefined) {
  return { usage: d?.usage ?? 0, max: d?.max_usage ?? 0, failcnt: d?.failcnt ?? 0, limit: d?.limit ?? 0 };
}

export function agentStatsToMetrics(res: grpc.StatsContainerResponse): Init<io.containerd.cgroups.v1.Metrics> {
  const cg = res.cgroup_stats;
  const cpu = cg?.cpu_stats;
  const mem = cg?.memory_stats;
  const blk = cg?.blkio_stats;
  const entries = (list: grpc.BlkioStatsEntry[] | undefined) =>
    (list ?? []).map((e) => ({ op: e.op, major: e.major, minor: e.minor, value: e.value }));
  const stat = (k: string) => mem?.stats?.[k] ?? 0;
  return {
    pids: { current: cg?.pids_stats?.current ?? 0, limit: cg?.pids_stats?.limit ?? 0 },
    cpu: {
      usage: {
        total: cpu?.cpu_usage?.total_usage ?? 0,
        kernel: cpu?.cpu_usage?.usage_in_kernelmode ?? 0,
        user: cpu?.cpu_usage?.usage_in_usermode ?? 0,
        per_cpu: cpu?.cpu_usage?.percpu_usage ?? [],
      },
      throttling: {
        periods: cpu?.throttling_data?.periods ?? 0,
        throttled_periods: cpu?.throttling_data?.throttled_periods ?? 0,
        throttled_time: cpu?.throttling_data?.throttled_time ?? 0,
      },
    },
    memory: {
      cache: mem?.cache ?? 0,
      rss: stat('rss') || stat('anon'),
      mapped_file: stat('mapped_file') || stat('file_mapped'),
      dirty: stat('dirty') || stat('file_dirty'),
      writeback: stat('writeback') || stat('file_writeback'),
      pg_fault: stat('pgfault'),
      pg_maj_fault: stat('pgmajfault'),
      inactive_anon: stat('inactive_anon'),
      active_anon: stat('active_anon'),
      inactive_file: stat('inactive_file'),
      active_file: stat('active_file'),
      unevictable: stat('unevictable'),
      usage: memEntry(mem?.usage),
      swap: memEntry(mem?.swap_usage),
      kernel: memEntry(mem?.kernel_usage),
    },
    blkio: {
      io_service_bytes_recursive: entries(blk?.io_service_bytes_recursive),
      io_serviced_recursive: entries(blk?.io_serviced_recursive),
      io_queued_recursive: entries(blk?.io_queued_recursive),
      io_service_time_recursive: entries(blk?.io_service_time_recursive),
      io_wait_time_recursive: entries(blk?.io_wait_time_recursive),
      io_merged_recursive: entries(blk?.io_merged_recursive),
      io_time_recursive: entries(blk?.io_time_recursive),
      sectors_recursive: entries(blk?.sectors_recursive),
    },
    hugetlb: Object.entries(cg?.hugetlb_stats ?? {}).map(([pagesize, h]) => ({ pagesize, usage: h.usage, max: h.max_usage, failcnt: h.failcnt })),
  };
}

export function metricsAny(res: grpc.StatsContainerResponse) {
  return packAny('io.containerd.cgroups.v1.Metrics', agentStatsToMetrics(res));
}
