// Boot benchmark: spawn -> agent ready, split into QEMU start, firmware, kernel, init and agent.
//   npx tsx bench/boot.ts [--n 5] [--machine q35|pc|microvm] [--vcpus 1] [--accel auto|tcg|kvm]
//                         [--seabios] [--param K=V ...] [--compare q35,pc,microvm] [--memory MiB]
//                         [--initrd-compression gzip|none|lz4|zstd] [--rootfs erofs|ext4] [--cpu MODEL]
// Boots the real guest image (agent bundle and its native helper); ready = the agent answered
// grpc.Health/Check on the agent channel.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { buildAgent } from '../agent/build.js';
import { buildGuestImage } from '../guest/build.js';
import type { InitrdCompression } from '../guest/initrd.js';
import type { RootfsType } from '../guest/rootfs.js';
import type { AccelChoice, MachineType } from '../vmm/config.js';
import { QemuVm } from '../vmm/vm.js';
import { Client, dialUnix } from '../proto/ttrpc/index.js';
import { serviceClient } from '../proto/rpc.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '5' },
    machine: { type: 'string', default: 'q35' },
    vcpus: { type: 'string', default: '1' },
    accel: { type: 'string', default: 'auto' },
    seabios: { type: 'boolean', default: false },
    param: { type: 'string', multiple: true, default: [] },
    compare: { type: 'string' },
    'initrd-compression': { type: 'string', default: 'gzip' },
    rootfs: { type: 'string', default: 'erofs' },
    memory: { type: 'string', default: '512' },
    cpu: { type: 'string' },
  },
});

interface Sample {
  total: number;
  qemu: number;
  firmware: number;
  kernel: number;
  init: number;
  agent: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Health.Check until SERVING, on one client (requests sent while the guest boots wait in QEMU). */
function healthProbe(socket: string, out: { client?: Client }) {
  return async (signal: AbortSignal): Promise<void> => {
    const client = new Client(() => dialUnix(socket), { randomStreamIds: true });
    out.client = client;
    const health = serviceClient(client, 'grpc.Health');
    while (!signal.aborted) {
      if ((await health.Check({ service: '' }, { timeoutMs: 2000 }).then((r) => r.status, () => 0)) === 1) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
}

const { bundle, runner } = await buildAgent(path.resolve(import.meta.dirname, '../agent/dist'));
const image = await buildGuestImage({
  agentBundle: bundle,
  extraFiles: [{ guestPath: '/agent/katats-runner', hostPath: runner, mode: 0o755 }],
  initrdCompression: values['initrd-compression'] as InitrdCompression,
  rootfsType: values.rootfs as RootfsType,
  onProgress: (m) => console.error(`guest: ${m}`),
});
const logger = pino({ level: 'warn' }, pino.destination(2));
const work = path.join(os.tmpdir(), `katats-bench-boot-${process.pid}`);
mkdirSync(work, { recursive: true });
const hostData = path.join(work, 'host_data');
writeFileSync(hostData, Buffer.alloc(32, 0xab));
let accelUsed = '';

async function bootOnce(machine: MachineType, i: number): Promise<Sample> {
  const runDir = path.join(work, `${machine}-${i}`);
  const vm = await QemuVm.start(
    {
      id: `bench-${machine}-${i}`,
      vcpus: Number(values.vcpus),
      memoryMiB: Number(values.memory),
      ...(values.cpu ? { cpu: values.cpu } : {}),
      kernel: image.kernel,
      initrd: image.initrd,
      rootfs: image.rootfs,
      baseCmdline: image.manifest.cmdline,
      kernelParams: values.param,
      agentSocket: path.join(runDir, 'agent.sock'),
      agentLogFile: path.join(runDir, 'agent.log'),
      launchDataFile: hostData,
      accel: values.accel as AccelChoice,
      machine,
      runDir,
    },
    { logger, ...(values.seabios ? { firmware: null } : {}) },
  );
  accelUsed = vm.accel;
  let initStart: { t: number; uptime: number } | undefined;
  let execAgent: number | undefined;
  vm.on('console', (l: { line: string; t: number }) => {
    const m = /katats-init: start uptime=([\d.]+)/.exec(l.line);
    if (m) initStart = { t: l.t, uptime: Number(m[1]) * 1000 };
    if (/katats-init: exec agent/.test(l.line)) execAgent = l.t;
  });
  const conn: { client?: Client } = {};
  try {
    const total = await vm.waitReady(healthProbe(vm.config.agentSocket, conn), 180_000);
    const qemu = vm.timeline.qmpReadyMs ?? 0;
    if (!initStart || execAgent === undefined) throw new Error('init markers missing from the console');
    const kernelStart = initStart.t - initStart.uptime;
    return {
      total,
      qemu,
      firmware: Math.max(0, kernelStart - qemu),
      kernel: initStart.uptime,
      init: execAgent - initStart.t,
      agent: total - execAgent,
    };
  } finally {
    await conn.client?.close();
    await vm.quit();
    rmSync(runDir, { recursive: true, force: true });
  }
}

function report(machine: string, samples: Sample[]): void {
  const f = (k: keyof Sample) => `${(median(samples.map((s) => s[k])) / 1000).toFixed(2)}s`;
  console.log(
    `${accelUsed.toUpperCase()} ${machine} vcpus=${values.vcpus} n=${samples.length}: ready ${f('total')} ` +
      `(min ${(Math.min(...samples.map((s) => s.total)) / 1000).toFixed(2)}s) = qemu ${f('qemu')} + firmware ${f('firmware')} + ` +
      `kernel ${f('kernel')} + init ${f('init')} + agent ${f('agent')}`,
  );
}

try {
  const n = Number(values.n);
  const machines = (values.compare ?? values.machine).split(',') as MachineType[];
  const samples = new Map<string, Sample[]>(machines.map((m) => [m, []]));
  console.error(
    `boot bench: image ${path.basename(image.dir)} kernel ${image.manifest.kernel.release} ` +
      `(${(image.manifest.kernel.size / 1e6).toFixed(1)} MB ${image.manifest.kernel.format}), initrd ${(image.manifest.initrd.size / 1e6).toFixed(2)} MB, ` +
      `rootfs ${(image.manifest.rootfs.size / 1e6).toFixed(1)} MB ${image.manifest.rootfs.type}; load average ${os.loadavg()[0]!.toFixed(2)}`,
  );
  // Interleave machine types so host load hits them alike.
  for (let i = 0; i < n; i++) {
    for (const m of machines) {
      const s = await bootOnce(m, i);
      samples.get(m)!.push(s);
      console.error(`  ${accelUsed} ${m} #${i + 1}: ready ${(s.total / 1000).toFixed(2)}s (qemu ${s.qemu} firmware ${s.firmware.toFixed(0)} kernel ${s.kernel.toFixed(0)} init ${s.init} agent ${s.agent} ms)`);
    }
  }
  for (const m of machines) report(m, samples.get(m)!);
  console.log(`accelerator: ${accelUsed === 'kvm' ? 'KVM' : 'TCG'}; host load average now ${os.loadavg()[0]!.toFixed(2)} on ${os.cpus().length} cores`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
