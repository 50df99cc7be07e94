// Pod start with the VM factory: `ctr run --rm IMAGE ID sh -c 'echo ready'` timed to the first
// output byte, for runc, katats booting cold and katats cloning a template, taking turns run by run
// in one private containerd (so a slow moment of the machine hits all three alike), with each
// median's ratio to runc's from the same run.
//   npx tsx bench/factory.ts [--runs 5] [--out DIR]
// The katats configuration is rewritten between runs ([factory] enable_template false/true): each
// pod's shim reads it when it starts.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { startContainerd } from '../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../harness/images/busybox.js';
import { loadConfig } from '../shim/config.js';
import { factoryDestroy, factoryInit } from '../shim/factory.js';
import { katatsEnv } from '../test/shim/katats-env.js';
import { removePod, timedRunRm } from './macro/pods.js';
import { round, summarize } from './macro/stats.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, out: { type: 'string' } } });
const runs = Number(values.runs);
const t0 = performance.now();
const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);

const templates = fs.mkdtempSync('/tmp/kbt-');
const factoryToml = (on: boolean) => `[factory]\nenable_template = ${on}\ntemplate_path = "${templates}"\n`;
const env = await katatsEnv({ onProgress: say, extraToml: factoryToml(true) });
const baseToml = fs.readFileSync(env.configFile, 'utf8').replace(factoryToml(true), '');
const setFactory = (on: boolean) => fs.writeFileSync(env.configFile, baseToml + factoryToml(on));
const log = pino({ level: 'warn' }, pino.destination(2));
const cd = await startContainerd({ runtimes: [env.runtime], onProgress: say });
const modes = ['runc', 'katats-cold', 'katats-factory'] as const;
const first: Record<string, number[]> = {};
let templateMs = 0;
let templateReadyMs = 0;
try {
  const ti = performance.now();
  const { template } = await factoryInit(loadConfig(env.configFile), log);
  templateMs = performance.now() - ti;
  templateReadyMs = template.meta.buildMs.ready;
  say(`factory init: template ${template.meta.key.slice(0, 12)} in ${Math.round(templateMs)} ms (agent ready ${templateReadyMs} ms, save ${template.meta.buildMs.save} ms)`);
  const image = await busyboxImage({ onProgress: say });
  await cd.importImage(image.archive, BUSYBOX_INDEX);
  const once = async (mode: (typeof modes)[number], id: string) => {
    if (mode !== 'runc') setFactory(mode === 'katats-factory');
    const r = await timedRunRm(cd, mode === 'runc' ? 'runc' : 'katats', image.name, id, ['sh', '-c', 'echo ready'], 300_000);
    if (r.code !== 0 || r.stdout.trim() !== 'ready' || r.firstOutputMs === undefined) {
      await removePod(cd, mode === 'runc' ? 'runc' : 'katats', id);
      throw new Error(`${mode} ${id}: ctr run exit ${r.code}: ${r.stderr.trim().slice(-400)}`);
    }
    return r.firstOutputMs;
  };
  // Warm-up, not counted: the first pod of each pays for caches (image layers, the shim's modules).
  for (const m of modes) await once(m, `warm-${m}`);
  for (let i = 0; i < runs; i++) {
    for (const m of modes) {
      const ms = await once(m, `b${i}-${m}`);
      (first[m] ??= []).push(ms);
      say(`${m} ${i + 1}/${runs}: first output ${Math.round(ms)} ms`);
    }
  }
} finally {
  await factoryDestroy(loadConfig(env.configFile)).catch((e: Error) => say(`factory destroy: ${e.message}`));
  await cd.stop();
  env.cleanup();
  fs.rmSync(templates, { recursive: true, force: true });
}

const runc = summarize(first.runc!).median;
const rows = modes.map((m) => {
  const s = summarize(first[m]!);
  const ms = (x: number) => round(x, 0);
  return { mode: m, n: s.n, median_ms: ms(s.median), p95_ms: ms(s.p95), min_ms: ms(s.min), max_ms: ms(s.max), ratio_to_runc: round(s.median / runc, 1) };
});
const result = { accel: env.accel, runs, templateBuildMs: round(templateMs, 0), templateReadyMs, podStart: rows, at: new Date().toISOString() };
console.log(`pod start (ctr run -> first output), ${env.accel.toUpperCase()}, ${runs} runs each, turns interleaved`);
console.log('mode             median    p95     min     max   x runc');
for (const r of rows) console.log(`${r.mode.padEnd(15)} ${String(r.median_ms).padStart(6)} ${String(r.p95_ms).padStart(6)} ${String(r.min_ms).padStart(7)} ${String(r.max_ms).padStart(7)} ${String(r.ratio_to_runc).padStart(7)}`);
const cold = rows.find((r) => r.mode === 'katats-cold')!;
const fac = rows.find((r) => r.mode === 'katats-factory')!;
console.log(`factory vs cold: ${round(cold.median_ms / fac.median_ms, 2)}x faster (median); template built once in ${round(templateMs / 1000, 1)} s`);
if (values.out) {
  fs.mkdirSync(values.out, { recursive: true });
  fs.writeFileSync(path.join(values.out, 'factory.json'), JSON.stringify(result, null, 2) + '\n');
}
