// Pod start with the VM factory: `ctr run --rm IMAGE ID sh -c 'echo ready'` timed to the first
// output byte, for runc, katats booting cold and katats cloning a template, taking turns run by run
// in one private containerd (so a slow moment of the machine hits all three alike), with each
// median's ratio to runc's from the same run.
//   npx tsx bench/factory.ts [--runs 5] [--qemu-toml 'tcg_tb_size = 32'] [--out DIR]
// Then host memory of one idle pod of each katats kind: PSS of its shim and everything under it
// (QEMU), 20 s after it started (a clone shares the template's untouched pages).
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
import { podProcesses, removePod, startDetached, timedRunRm } from './macro/pods.js';
import { pssKiB } from '../harness/procs.js';
import { sleep } from '../sys/timeout.js';
import { round, summarize } from './macro/stats.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' }, out: { type: 'string' }, 'qemu-toml': { type: 'string', default: '' } } });
const runs = Number(values.runs);
const t0 = performance.now();
const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);

const templates = fs.mkdtempSync('/tmp/kbt-');
const factoryToml = (on: boolean) => `[factory]\nenable_template = ${on}\ntemplate_path = "${templates}"\n`;
const env = await katatsEnv({ onProgress: say, qemuToml: values['qemu-toml'].replace(/\\n/g, '\n'), extraToml: factoryToml(true) });
const baseToml = fs.readFileSync(env.configFile, 'utf8').replace(factoryToml(true), '');
const setFactory = (on: boolean) => fs.writeFileSync(env.configFile, baseToml + factoryToml(on));
const log = pino({ level: 'warn' }, pino.destination(2));
const cd = await startContainerd({ runtimes: [env.runtime], onProgress: say });
const modes = ['runc', 'katats-cold', 'katats-factory'] as const;
const first: Record<string, number[]> = {};
const failures: Record<string, string[]> = {};
const idlePss: Record<string, { podMiB: number; qemuMiB: number }> = {};
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
      try {
        const ms = await once(m, `b${i}-${m}`);
        (first[m] ??= []).push(ms);
        say(`${m} ${i + 1}/${runs}: first output ${Math.round(ms)} ms`);
      } catch (e) {
        // Counted and reported, not fatal: one failed boot on a loaded host says something too.
        (failures[m] ??= []).push((e as Error).message);
        say(`${m} ${i + 1}/${runs}: FAILED: ${(e as Error).message}`);
      }
    }
  }
  for (const m of ['katats-cold', 'katats-factory'] as const) {
    setFactory(m === 'katats-factory');
    const id = `idle-${m}`;
    await startDetached(cd, 'katats', image.name, id, ['sleep', '3600'], 300_000);
    try {
      await sleep(20_000);
      const procs = podProcesses(cd, id);
      const mib = (ps: typeof procs) => round(ps.reduce((a, p) => a + pssKiB(p.pid), 0) / 1024, 1);
      idlePss[m] = { podMiB: mib(procs), qemuMiB: mib(procs.filter((p) => p.cmdline.includes('qemu-system'))) };
      say(`${m}: idle pod PSS ${idlePss[m].podMiB} MiB (QEMU ${idlePss[m].qemuMiB} MiB)`);
    } finally {
      await removePod(cd, 'katats', id);
    }
  }
} finally {
  await factoryDestroy(loadConfig(env.configFile)).catch((e: Error) => say(`factory destroy: ${e.message}`));
  await cd.stop();
  // The pods' shim, agent and console logs, kept when a run failed.
  if (Object.keys(failures).length && values.out) fs.cpSync(env.logDir, path.join(values.out, 'logs'), { recursive: true });
  env.cleanup();
  fs.rmSync(templates, { recursive: true, force: true });
}

const runc = summarize(first.runc ?? [NaN]).median;
const rows = modes.map((m) => {
  const s = summarize(first[m] ?? [NaN]);
  const ms = (x: number) => round(x, 0);
  const counts = { n: first[m]?.length ?? 0, failed: failures[m]?.length ?? 0 };
  return { mode: m, ...counts, median_ms: ms(s.median), p95_ms: ms(s.p95), min_ms: ms(s.min), max_ms: ms(s.max), ratio_to_runc: round(s.median / runc, 1) };
});
const result = {
  accel: env.accel,
  runs,
  templateBuildMs: round(templateMs, 0),
  templateReadyMs,
  podStart: rows,
  idlePodPss: idlePss,
  failures,
  at: new Date().toISOString(),
};
console.log(`pod start (ctr run -> first output), ${env.accel.toUpperCase()}, ${runs} runs each, turns interleaved`);
console.log('mode             median    p95     min     max   x runc  failed');
for (const r of rows) {
  const cols = [r.median_ms, r.p95_ms, r.min_ms, r.max_ms, r.ratio_to_runc, r.failed].map((v, i) => String(v).padStart(i < 1 ? 6 : 7));
  console.log(`${r.mode.padEnd(15)} ${cols.join(' ')}`);
}
const cold = rows.find((r) => r.mode === 'katats-cold')!;
const fac = rows.find((r) => r.mode === 'katats-factory')!;
console.log(`factory vs cold: ${round(cold.median_ms / fac.median_ms, 2)}x faster (median); template built once in ${round(templateMs / 1000, 1)} s`);
for (const [m, v] of Object.entries(idlePss)) console.log(`${m}: one idle pod ${v.podMiB} MiB PSS (QEMU ${v.qemuMiB} MiB) after 20 s`);
if (values.out) {
  fs.mkdirSync(values.out, { recursive: true });
  fs.writeFileSync(path.join(values.out, 'factory.json'), JSON.stringify(result, null, 2) + '\n');
}
