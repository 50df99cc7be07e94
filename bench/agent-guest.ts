// The agent inside a real guest: its resident memory (from its own GetMetrics) and request
// latency over the virtio-serial channel, on whatever accelerator the probe allows; then what the
// policy check costs in the guest: the policy `katats policy gen` makes for the fixture pod set by
// SetPolicy, the requests containerd and the shim sent for that pod replayed (their handlers may
// fail here, after the check: the pod's files are not in this guest), and the agent's own timings
// (GetMetrics: katats_agent_policy_check_seconds) read back.
//   npx tsx bench/agent-guest.ts [--policy-rounds 20] [--kernel-params "katats.node_opts=--jitless"]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { buildFullGuestImage } from '../scripts/guest-image.js';
import { launchSandbox } from '../shim/vm.js';
import { parseConfig } from '../shim/config.js';
import { busyboxImage } from '../harness/images/busybox.js';
import { pauseImage } from '../harness/images/pause.js';
import { messageType, root, type MessageName } from '../proto/registry.js';
import { generate } from '../policy/gen/generate.js';
import { ImageResolver, LayerCache, OciArchive } from '../policy/gen/image.js';

const ri = process.argv.indexOf('--policy-rounds');
const policyRounds = ri >= 0 ? Number(process.argv[ri + 1]) : 20;
const ki = process.argv.indexOf('--kernel-params');
const kernelParams = ki >= 0 ? (process.argv[ki + 1] ?? '') : '';
const fix = path.resolve(import.meta.dirname, '..', 'test', 'policy', 'fixtures', 'gen');
const [busybox, pause] = [await busyboxImage(), await pauseImage()];
// GetMetrics allowed on top (generated policies refuse it), so the agent's timings can be read back.
const podPolicy = `${(await generate(fs.readFileSync(path.join(fix, 'pod.yaml'), 'utf8'), { images: new ImageResolver([new OciArchive(busybox.archive), new OciArchive(pause.archive)], new LayerCache(undefined)) })).pods[0]!.text}\nGetMetricsRequest := true\n`;
type Req = Record<string, unknown> & { kind: string };
const captured = (JSON.parse(fs.readFileSync(path.join(fix, 'cri-bookworm.json'), 'utf8')) as { requests: Req[] }).requests;
const methodOf = new Map(root.lookupService('grpc.AgentService').methodsArray.map((m) => [m.requestType.replace(/^.*\./, ''), m.name]));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-'));
const image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
const cfg = parseConfig(`[hypervisor.qemu]\nguest_manifest = "${image.manifestPath}"\n${kernelParams ? `kernel_params = ${JSON.stringify(kernelParams)}\n` : ''}[runtime]\nstate_dir = "${dir}/run"\nlog_dir = "${dir}/log"\n`);
process.stderr.write('booting a guest\n');
const guest = await launchSandbox({ sandboxId: 'agentbench', config: cfg, launchData: Buffer.alloc(32), stateDir: path.join(dir, 'run', 'sb'), log: pino({ level: 'warn' }, pino.destination(2)) });
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

  // Launch data of zeros: the image's allow-all is in force and allows this SetPolicy.
  await guest.agent.SetPolicy({ policy: podPolicy }, { timeoutMs: 120_000 });
  const call = guest.agent as unknown as Record<string, (req: unknown, o: { timeoutMs: number }) => Promise<unknown>>;
  for (let r = 0; r < policyRounds; r++) {
    for (const { kind, ...fields } of captured) {
      const t = messageType(`grpc.${kind}` as MessageName);
      const req = t.toObject(t.decode(t.encode(t.fromObject({ exec_id: fields.container_id, storages: [], devices: [], ...fields })).finish()));
      await call[methodOf.get(kind)!]!(req, { timeoutMs: 120_000 }).catch(() => undefined);
    }
  }
  const pm = (await guest.agent.GetMetrics({})).metrics;
  console.log(`policy check in the guest (generated policy, ${podPolicy.split('\n').length} lines; ${policyRounds} rounds of ${captured.length} requests):`);
  for (const kind of new Set(captured.map((c) => c.kind))) {
    const v = (n: string, qq: string) => (Number(new RegExp(`^${n}\\{request="${kind}",quantile="${qq}"\\} (\\S+)$`, 'm').exec(pm)?.[1] ?? NaN) * 1000).toFixed(2);
    const denied = new RegExp(`^katats_agent_policy_denials_total\\{request="${kind}"\\} (\\d+)$`, 'm').exec(pm)?.[1] ?? '0';
    console.log(`  ${kind.padEnd(24)} check p50 ${v('katats_agent_policy_check_seconds', '0.5')} ms p99 ${v('katats_agent_policy_check_seconds', '0.99')} ms; evaluation p50 ${v('katats_agent_policy_eval_seconds', '0.5')} ms; denied ${denied}`);
  }
} finally {
  await guest.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}
