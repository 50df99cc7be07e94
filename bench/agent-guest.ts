// The agent inside a real guest: its resident memory (from its own GetMetrics) and request
// latency over the virtio-serial channel, on whatever accelerator the probe allows.
//   npx tsx bench/agent-guest.ts
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { buildFullGuestImage } from '../scripts/guest-image.js';
import { launchQemuSandbox } from '../shim/vm.js';
import { parseConfig } from '../shim/config.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-'));
const image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
const cfg = parseConfig(`[hypervisor.qemu]\nguest_manifest = "${image.manifestPath}"\n[runtime]\nstate_dir = "${dir}/run"\nlog_dir = "${dir}/log"\n`);
process.stderr.write('booting a guest\n');
const guest = await launchQemuSandbox({ sandboxId: 'agentbench', config: cfg, launchData: Buffer.alloc(32), stateDir: path.join(dir, 'run', 'sb'), log: pino({ level: 'warn' }, pino.destination(2)) });
try {
  const metric = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  const m = (await guest.agent.GetMetrics({})).metrics;
  const times: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    await guest.health.Check({});
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const q = (p: number) => times[Math.floor(p * (times.length - 1))]!.toFixed(2);
  console.log(`accelerator: ${guest.accel.toUpperCase()}`);
  console.log(`agent RSS in the guest: ${(metric(m, 'process_resident_memory_bytes') / 2 ** 20).toFixed(1)} MiB (V8 heap used ${(metric(m, 'nodejs_heap_used_bytes') / 2 ** 20).toFixed(1)} MiB)`);
  console.log(`Health.Check over virtio-serial, n=200: p50 ${q(0.5)} ms, p90 ${q(0.9)} ms, p99 ${q(0.99)} ms`);
} finally {
  await guest.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}
