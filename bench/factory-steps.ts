// Where a cloned pod's start goes: `ctr run --rm` of a pod cloned from a template, timed step by
// step from the shim's log (each step ends at a line the shim writes) and closed by ctr's first
// output byte, median and p95 over the runs.
//   npx tsx bench/factory-steps.ts [--runs 8] [--out DIR] [--against OTHER_BUILD/bin/containerd-shim-katats-v2]
//     [--kernel-params "katats.runner_spawn=node ..."]
// --against also runs pods through another build's shim (same configuration, templates and guest
// image), taking turns run by run with this one's, so that both see the same load.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { startContainerd } from '../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../harness/images/busybox.js';
import { loadConfig } from '../shim/config.js';
import { factoryDestroy, factoryInit } from '../shim/factory.js';
import { katatsEnv } from '../test/shim/katats-env.js';
import { removePod } from './macro/pods.js';
import { round, summarize } from './macro/stats.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '8' }, out: { type: 'string' }, against: { type: 'string' }, 'kernel-params': { type: 'string' } } });
const runs = Number(values.runs);
const t0 = performance.now();
const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);

/** Each step ends at the first shim log line with this message; the last at ctr's first output byte. */
const STEPS: { step: string; until: string }[] = [
  { step: 'ctr + containerd + shim start, until the daemon process runs', until: 'daemon process started' },
  { step: 'daemon: modules loaded, config read, socket listening', until: 'shim serving' },
  { step: 'Create arrives, config, host cgroups, template key', until: 'starting qemu' },
  { step: 'QEMU exec, QMP, migrate-incoming', until: 'clone restored' },
  { step: 'restored guest runs until its agent answers', until: 'guest ready' },
  { step: 'reseed + clock', until: 'factory: VM cloned from template' },
  { step: 'agent channel of the pod (dial, Health)', until: 'sandbox VM ready' },
  { step: 'CreateSandbox (SetPolicy when there is one)', until: 'sandbox created in the guest' },
  { step: 'rootfs share + CreateContainer', until: 'container created' },
  { step: 'Start arrives, StartContainer, stdio attached', until: 'container started' },
  { step: 'until the first output byte reaches ctr', until: 'first output' },
];

interface Line {
  time: number;
  msg: string;
  startupMs?: number;
}

function stepsOf(logFile: string, spawnedAt: number, firstOutputAt: number): Record<string, number> {
  const lines = fs
    .readFileSync(logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
  const at = new Map<string, number>();
  for (const l of lines) if (!at.has(l.msg)) at.set(l.msg, l.time);
  const serving = lines.find((l) => l.msg === 'shim serving');
  if (serving?.startupMs !== undefined) at.set('daemon process started', serving.time - serving.startupMs);
  at.set('first output', firstOutputAt);
  const out: Record<string, number> = {};
  let prev = spawnedAt;
  for (const s of STEPS) {
    const t = at.get(s.until);
    if (t === undefined) continue;
    out[s.step] = t - prev;
    prev = t;
  }
  return out;
}

const templates = fs.mkdtempSync('/tmp/kbt-');
const env = await katatsEnv({
  onProgress: say,
  extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"\n`,
  ...(values['kernel-params'] ? { qemuToml: `kernel_params = ${JSON.stringify(values['kernel-params'])}` } : {}),
});
const shims = [{ name: 'katats', runtime: env.runtime }];
if (values.against) {
  const wrapper = path.join(env.dir, 'containerd-shim-katatsagainst-v2');
  fs.writeFileSync(wrapper, `#!/bin/sh\nKATATS_CONF_FILE=${env.configFile} exec ${path.resolve(values.against)} "$@"\n`, { mode: 0o755 });
  shims.push({ name: 'against', runtime: { name: 'against', runtimeType: 'io.containerd.katatsagainst.v2', shimBinary: wrapper } });
}
const cd = await startContainerd({ runtimes: shims.map((s) => s.runtime), onProgress: say });
const samples: Record<string, number>[][] = shims.map(() => []);
const totals: number[][] = shims.map(() => []);
try {
  await factoryInit(loadConfig(env.configFile), pino({ level: 'warn' }, pino.destination(2)));
  const image = await busyboxImage({ onProgress: say });
  await cd.importImage(image.archive, BUSYBOX_INDEX);
  for (let i = -1; i < runs; i++) {
    for (const [k, shim] of shims.entries()) {
      const id = i < 0 ? `steps-warm${k}` : `steps${k}-${i}`;
      const spawnedAt = Date.now();
      let firstOutputAt: number | undefined;
      const child = cd.ctrSpawn(['run', '--rm', ...cd.runtimeArgs(shim.name), image.name, id, 'sh', '-c', 'echo ready']);
      child.stdout!.once('data', () => (firstOutputAt = Date.now()));
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      if (code !== 0 || firstOutputAt === undefined) {
        await removePod(cd, shim.name, id);
        throw new Error(`ctr run ${id}: exit ${code}: ${stderr.trim().slice(-400)}`);
      }
      if (i < 0) continue;
      samples[k]!.push(stepsOf(path.join(env.logDir, `${id}.log`), spawnedAt, firstOutputAt));
      totals[k]!.push(firstOutputAt - spawnedAt);
      say(`run ${i + 1}/${runs} ${shim.name}: first output ${firstOutputAt - spawnedAt} ms`);
    }
  }
} finally {
  await factoryDestroy(loadConfig(env.configFile)).catch((e: Error) => say(`factory destroy: ${e.message}`));
  await cd.stop();
  if (values.out) fs.cpSync(env.logDir, path.join(values.out, 'logs'), { recursive: true });
  env.cleanup();
  fs.rmSync(templates, { recursive: true, force: true });
}

const results = shims.map((shim, k) => {
  const rows = STEPS.map(({ step }) => {
    const v = samples[k]!.map((s) => s[step]).filter((x): x is number => x !== undefined);
    const s = v.length ? summarize(v) : undefined;
    return { step, n: v.length, median_ms: s ? round(s.median, 0) : null, p95_ms: s ? round(s.p95, 0) : null };
  });
  const total = summarize(totals[k]!);
  return { shim: k === 0 ? 'this build' : values.against!, steps: rows, total: { median_ms: round(total.median, 0), p95_ms: round(total.p95, 0) } };
});
for (const r of results) {
  console.log(`cloned pod start by step (ctr run -> first output), ${env.accel.toUpperCase()}, ${runs} runs, shim: ${r.shim}`);
  console.log('median    p95  step');
  for (const row of r.steps) console.log(`${String(row.median_ms ?? '-').padStart(6)} ${String(row.p95_ms ?? '-').padStart(6)}  ${row.step}${row.n < runs ? ` (in ${row.n} runs)` : ''}`);
  console.log(`${String(r.total.median_ms).padStart(6)} ${String(r.total.p95_ms).padStart(6)}  total (median and p95 of the totals)`);
}
if (values.out) {
  fs.mkdirSync(values.out, { recursive: true });
  const [mine, ...others] = results;
  fs.writeFileSync(path.join(values.out, 'factory-steps.json'), JSON.stringify({ accel: env.accel, runs, steps: mine!.steps, total: mine!.total, against: others[0] ?? null, at: new Date().toISOString() }, null, 2) + '\n');
}
