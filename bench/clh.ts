// cloud-hypervisor path vs direct QEMU: boot to a ready agent, and the round trip of control calls.
//   npx tsx bench/clh.ts [--n 3] [--calls 50] [--accel auto|tcg|kvm]
// Each round boots the real guest image once directly on QEMU (QemuHypervisor, QMP) and once through
// the cloud-hypervisor client, katats-chv and its QEMU (ClhHypervisor, REST over a unix socket,
// the agent over hybrid vsock); ready = the agent answered grpc.Health/Check. Then, on each running
// VM, `--calls` of: info (vm.info | query-status + query-pci) and a pause+resume pair.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { buildFullGuestImage } from '../scripts/guest-image.js';
import { ClhHypervisor } from '../vmm/clh/driver.js';
import { chvCommand } from '../vmm/clh/vmm-binary.js';
import type { AccelChoice } from '../vmm/config.js';
import type { Hypervisor } from '../vmm/hypervisor.js';
import { QemuHypervisor } from '../vmm/qemu-hypervisor.js';
import { agentReady } from '../harness/agent-ready.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '3' }, calls: { type: 'string', default: '50' }, accel: { type: 'string', default: 'auto' } } });
const N = Number(values.n);
const CALLS = Number(values.calls);
const accel = values.accel as AccelChoice;
const log = pino({ level: 'warn' }, pino.destination(2));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function timeCalls(fn: () => Promise<unknown>): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const t = performance.now();
    await fn();
    xs.push(performance.now() - t);
  }
  return median(xs);
}

interface Row { path: string; bootMs: number; infoMs: number; pauseResumeMs: number; accel: string }

const image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-bench-clh-'));
const rows: Row[] = [];
try {
  for (let round = 0; round < N; round++) {
    for (const which of ['qemu', 'clh'] as const) {
      const runDir = path.join(tmp, `${which}${round}`);
      fs.mkdirSync(runDir, { recursive: true });
      const t0 = performance.now();
      let hv: Hypervisor;
      if (which === 'qemu') {
        hv = QemuHypervisor.create(
          { id: `bq${round}`, vcpus: 1, memoryMiB: 512, kernel: image.kernel, initrd: image.initrd, rootfs: image.rootfs, baseCmdline: image.manifest.cmdline, agentSocket: path.join(runDir, 'agent.sock'), accel, runDir },
          { logger: log },
        );
      } else {
        hv = await ClhHypervisor.create({
          flavour: 'katats-chv',
          command: chvCommand(),
          vmId: `bc${round}`,
          runDir,
          startTimeoutMs: 60_000,
          chvArgs: ['--accel', accel],
          log,
          config: {
            cpus: { boot_vcpus: 1, max_vcpus: 1 },
            memory: { size: 512 << 20 },
            payload: { kernel: image.kernel, initramfs: image.initrd, cmdline: image.manifest.cmdline },
            disks: [{ path: image.rootfs, readonly: true, serial: 'katats-root' }],
            serial: { mode: 'File', file: path.join(runDir, 'console.log') },
            vsock: { cid: 3, socket: path.join(runDir, 'vsock.sock') },
          },
        });
      }
      try {
        await hv.boot();
        const client = await agentReady(hv);
        const bootMs = performance.now() - t0;
        const infoMs = await timeCalls(() => hv.info());
        const pauseResumeMs = await timeCalls(async () => {
          await hv.pause();
          await hv.resume();
        });
        await client.close();
        rows.push({ path: which === 'qemu' ? 'QEMU (QMP)' : 'cloud-hypervisor API (katats-chv)', bootMs, infoMs, pauseResumeMs, accel: hv.accel });
        log.warn({ which, round, bootMs }, 'round done');
      } finally {
        await hv.stop().catch(() => hv.kill());
      }
    }
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
const out = ['| path | accel | boot to ready agent (median ms) | info (median ms) | pause+resume (median ms) | rounds |', '|---|---|---|---|---|---|'];
for (const p of [...new Set(rows.map((r) => r.path))]) {
  const rs = rows.filter((r) => r.path === p);
  out.push(`| ${p} | ${rs[0]!.accel} | ${median(rs.map((r) => r.bootMs)).toFixed(0)} | ${median(rs.map((r) => r.infoMs)).toFixed(2)} | ${median(rs.map((r) => r.pauseResumeMs)).toFixed(2)} | ${rs.length} |`);
}
process.stdout.write(`${out.join('\n')}\n\nload average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}, ${os.cpus().length} CPUs\n`);
