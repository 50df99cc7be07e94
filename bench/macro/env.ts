// The environment a benchmark ran in, recorded next to its figures.
import fs from 'node:fs';
import os from 'node:os';

export interface Environment {
  date: string;
  host: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** /dev/kvm present; whether a VM runtime used KVM or TCG is said per runtime. */
  devKvm: boolean;
  loadavgStart: number[];
  loadavgEnd?: number[];
  containerd?: { flavor: string; version: string };
  runc?: string;
  runsc?: string;
  busybox?: string;
  /** Per runtime: "n/a (no VM)", "KVM", "TCG", ... */
  virtualization: Record<string, string>;
}

export function environment(): Environment {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  return {
    date: new Date().toISOString(),
    host: os.hostname(),
    cpuModel: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: os.release(),
    node: process.version,
    devKvm: fs.existsSync('/dev/kvm'),
    loadavgStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
    virtualization: {},
  };
}
