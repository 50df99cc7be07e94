// Density: N pods (default 10) started at once through one private containerd, katats with the VM
// factory on (every pod a clone of one template) and runc in the same run for the ratio. Each pod
// is `ctr run IMAGE ID sh -c 'echo ready; exec sleep 3600'` with its stdout attached: a pod is
// running when its first byte arrives, and the figure is the time until all N are. Then the host
// memory of the idle pods, with N running and again after all but 5 are removed: PSS
// (smaps_rollup) of each pod's shim and everything under it (QEMU, any helper), with where it is
// (bench/smaps.ts: the guest RAM a clone has written, TCG's code buffer, heaps, file pages).
// `npm run bench` runs it (`--no-density` skips it); alone:
//   npx tsx bench/density.ts [--pods 10] [--settle 20] [--qemu-toml 'key = value'] [--node-options='--flag ...'] [--no-runc] [--out DIR]
// --qemu-toml and --node-options set [hypervisor.qemu] keys and the shim's node flags for this
// run only: a before/after of a footprint change, each run on its own template.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { startContainerd, type Containerd } from '../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../harness/images/busybox.js';
import { pssKiB } from '../harness/procs.js';
import { loadConfig } from '../shim/config.js';
import { factoryDestroy, factoryInit } from '../shim/factory.js';
import { katatsEnv } from '../test/shim/katats-env.js';
import { sleep } from '../sys/timeout.js';
import { podProcesses, removePod } from './macro/pods.js';
import { round, summarize, type Summary } from './macro/stats.js';
import { addBreakdown, emptyBreakdown, pssBreakdown, type PssBreakdown } from './smaps.js';

export interface DensityOptions {
  pods?: number;
  /** Seconds the idle pods sit before their memory is read. */
  settleS?: number;
  runc?: boolean;
  qemuToml?: string;
  nodeOptions?: string;
  log?: (line: string) => void;
}

export interface PodStartFigure {
  runtime: string;
  pods: number;
  /** ms from spawning the N `ctr run`s to each pod's first output byte (running pods only). */
  firstOutputMs: number[];
  /** ms until the last of them was running; undefined when some never ran. */
  allRunningMs?: number;
  failures: string[];
  /** CPU seconds (user + system) each running pod's host processes had used once all were running. */
  cpuS: number[];
  /** The same, the VMM's part (QEMU runs the guest: its kernel, agent and container). */
  vmmCpuS: number[];
  /** The 1-minute load average when the pods were started. */
  loadavg: number;
}

export interface PodMemory {
  totalKiB: number;
  shimKiB: number;
  vmmKiB: number;
  otherKiB: number;
  processes: string[];
}

export interface MemoryFigure {
  runtime: string;
  pods: number;
  perPodMiB: Summary;
  perPod: PodMemory[];
  /** katats: the sum over its pods, by kind of mapping (QEMU and shim apart). */
  vmm?: PssBreakdown;
  shim?: PssBreakdown;
  /** katats: KiB the template's RAM file holds in its tmpfs (once per node, whoever maps it). */
  templateFileKiB?: number;
}

export interface DensityReport {
  accel: string;
  guestMemoryMiB: number;
  qemuToml: string;
  nodeOptions: string;
  settleS: number;
  start: PodStartFigure[];
  memory: MemoryFigure[];
  environment: { date: string; cores: number; cpuModel: string; loadavgStart: number[]; loadavgEnd: number[]; containerd: string };
  durationS: number;
}

const POD_TIMEOUT_MS = 300_000;
const CMD = ['sh', '-c', 'echo ready; exec sleep 3600'];

/** Starts `ids` at once; resolves with each one's first-output time (or its failure) once all are settled. */
async function startAtOnce(cd: Containerd, runtime: string, image: string, ids: string[], say: (s: string) => void): Promise<PodStartFigure> {
  const loadavg = round(os.loadavg()[0]!, 2);
  const t0 = performance.now();
  const firstOutputMs: number[] = [];
  const failures: string[] = [];
  await Promise.all(
    ids.map(
      (id) =>
        new Promise<void>((resolve) => {
          const child = cd.ctrSpawn(['run', ...cd.runtimeArgs(runtime), image, id, ...CMD]);
          let stderr = '';
          let done = false;
          const finish = (failure?: string) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            if (failure) {
              // One line each: ctr's stderr may carry the guest's last console lines.
              failure = failure.replace(/\s*\n\s*/g, ' | ').slice(0, 600);
              failures.push(`${id}: ${failure}`);
              say(`density ${runtime}: ${id} FAILED: ${failure}`);
            } else {
              const ms = performance.now() - t0;
              firstOutputMs.push(ms);
              say(`density ${runtime}: ${firstOutputMs.length}/${ids.length} running (${id} at ${(ms / 1000).toFixed(1)} s)`);
            }
            // The attached ctr is no longer needed: the pod runs on under its shim; removePod ends it.
            child.stdout?.destroy();
            resolve();
          };
          const timer = setTimeout(() => finish(`no output within ${POD_TIMEOUT_MS / 1000} s`), POD_TIMEOUT_MS);
          child.stdout!.once('data', () => finish());
          child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
          child.on('error', (e) => finish(e.message));
          child.on('close', (code) => finish(`ctr run exited ${code} before any output: ${stderr.trim().slice(-400)}`));
        }),
    ),
  );
  const allRunningMs = failures.length ? undefined : Math.max(...firstOutputMs);
  const procs = ids.filter((id) => !failures.some((f) => f.startsWith(`${id}:`))).map((id) => podProcesses(cd, id));
  const cpuS = procs.map((ps) => ps.reduce((a, p) => a + cpuSeconds(p.pid), 0));
  const vmmCpuS = procs.map((ps) => ps.filter((p) => p.cmdline.includes('qemu-system')).reduce((a, p) => a + cpuSeconds(p.pid), 0));
  return { runtime, pods: ids.length, firstOutputMs, ...(allRunningMs !== undefined ? { allRunningMs } : {}), failures, cpuS, vmmCpuS, loadavg };
}

const TICKS_PER_S = 100;

/** utime + stime of a process in seconds (0 when it is gone). */
function cpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of stat; f starts at field 3.
    return (Number(f[11]) + Number(f[12])) / TICKS_PER_S;
  } catch {
    return 0;
  }
}

/** PSS of each pod's processes, split into shim, VMM and the rest; for katats the mappings too. */
function measureMemory(cd: Containerd, runtime: string, ids: string[], guestRamBytes: number, templateFile?: string): MemoryFigure {
  const perPod: PodMemory[] = [];
  let vmm: PssBreakdown | undefined;
  let shim: PssBreakdown | undefined;
  for (const id of ids) {
    const procs = podProcesses(cd, id);
    if (!procs.length) throw new Error(`no host process found for pod ${id}`);
    const m: PodMemory = { totalKiB: 0, shimKiB: 0, vmmKiB: 0, otherKiB: 0, processes: procs.map((p) => p.comm) };
    for (const p of procs) {
      const kib = pssKiB(p.pid);
      m.totalKiB += kib;
      const isShim = p.cmdline.includes(`-id ${id}`) && p.cmdline.includes('-address');
      const isVmm = p.cmdline.includes('qemu-system');
      if (isShim) m.shimKiB += kib;
      else if (isVmm) m.vmmKiB += kib;
      else m.otherKiB += kib;
      if (runtime === 'katats' && (isShim || isVmm)) {
        const b = pssBreakdown(p.pid, isVmm ? guestRamBytes : undefined);
        if (!b) continue;
        if (isVmm) vmm = addBreakdown(vmm ?? emptyBreakdown(), b);
        else shim = addBreakdown(shim ?? emptyBreakdown(), b);
      }
    }
    perPod.push(m);
  }
  // A tmpfs file's allocated blocks are its memory; clones may have added pages to it since the build.
  const templateFileKiB = runtime === 'katats' && templateFile ? fs.statSync(templateFile).blocks / 2 : undefined;
  return {
    runtime,
    pods: ids.length,
    perPodMiB: summarize(perPod.map((p) => p.totalKiB / 1024)),
    perPod,
    ...(vmm ? { vmm } : {}),
    ...(shim ? { shim } : {}),
    ...(templateFileKiB !== undefined ? { templateFileKiB } : {}),
  };
}

export async function runDensityBench(o: DensityOptions = {}): Promise<DensityReport> {
  const say = o.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const pods = o.pods ?? 10;
  const settleS = o.settleS ?? 20;
  const t0 = performance.now();
  const loadavgStart = os.loadavg().map((x) => round(x, 2));
  const templates = fs.mkdtempSync('/tmp/kbd-');
  const env = await katatsEnv({
    onProgress: say,
    qemuToml: o.qemuToml ?? '',
    extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"\n`,
  });
  if (o.nodeOptions) {
    // On node's command line (some V8 flags are refused in NODE_OPTIONS): the shim's daemon is
    // spawned with the same flags (process.execArgv).
    const wrapper = fs.readFileSync(env.shimWrapper, 'utf8');
    const built = /exec (\S+) "\$@"/.exec(wrapper)?.[1];
    const nodeLine = built && /^exec (\S+) (\S+) "\$@"$/m.exec(fs.readFileSync(built, 'utf8'));
    if (!nodeLine) throw new Error(`${env.shimWrapper}: cannot put node flags into this shim wrapper`);
    const flags = o.nodeOptions.split(/\s+/).filter((f) => /^--[a-z0-9-]+(=[A-Za-z0-9._-]+)?$/.test(f));
    fs.writeFileSync(env.shimWrapper, wrapper.replace(`exec ${built}`, `exec ${nodeLine[1]} ${flags.join(' ')} ${nodeLine[2]}`));
  }
  const config = loadConfig(env.configFile);
  const guestMemoryMiB = config.hypervisor.qemu.default_memory;
  const cd = await startContainerd({ runtimes: [env.runtime], onProgress: say });
  const start: PodStartFigure[] = [];
  const memory: MemoryFigure[] = [];
  const log = pino({ level: 'warn' }, pino.destination(2));
  try {
    const ti = performance.now();
    const { template } = await factoryInit(config, log);
    say(`density: template ${template.meta.key.slice(0, 12)} built in ${((performance.now() - ti) / 1000).toFixed(1)} s (${env.accel.toUpperCase()}, guest ${guestMemoryMiB} MiB)`);
    const image = await busyboxImage({ onProgress: say });
    await cd.importImage(image.archive, BUSYBOX_INDEX);
    const runtimes = [...(o.runc === false ? [] : ['runc']), 'katats'];
    for (const rt of runtimes) {
      // Warm-up, not counted: the first pod pays for caches (image layers, the shim's modules).
      const warm = await startAtOnce(cd, rt, image.name, [`dwarm-${rt}`], say);
      await removePod(cd, rt, `dwarm-${rt}`);
      if (warm.failures.length) throw new Error(`${rt}: the warm-up pod failed: ${warm.failures[0]}`);
      const ids = Array.from({ length: pods }, (_, i) => `dens-${rt}-${i}`);
      try {
        say(`density ${rt}: starting ${pods} pods at once (load ${os.loadavg()[0]!.toFixed(2)})`);
        const s = await startAtOnce(cd, rt, image.name, ids, say);
        start.push(s);
        say(`density ${rt}: ${s.allRunningMs !== undefined ? `all ${pods} running in ${(s.allRunningMs / 1000).toFixed(1)} s` : `${s.firstOutputMs.length}/${pods} running, ${s.failures.length} failed`}`);
        const running = ids.filter((id) => !s.failures.some((f) => f.startsWith(`${id}:`)));
        for (const keep of [...new Set([running.length, Math.min(5, running.length)])]) {
          for (const id of running.slice(keep)) await removePod(cd, rt, id);
          say(`density ${rt}: ${keep} idle pods, reading memory in ${settleS} s`);
          await sleep(settleS * 1000);
          const m = measureMemory(cd, rt, running.slice(0, keep), guestMemoryMiB << 20, template.memoryFile);
          memory.push(m);
          say(`density ${rt}: ${keep} idle pods: ${m.perPodMiB.median.toFixed(1)} MiB PSS per pod (median; load ${os.loadavg()[0]!.toFixed(2)})`);
        }
      } finally {
        for (const id of ids) await removePod(cd, rt, id);
      }
    }
  } finally {
    await factoryDestroy(config).catch((e: Error) => say(`factory destroy: ${e.message}`));
    await cd.stop();
    env.cleanup();
    fs.rmSync(templates, { recursive: true, force: true });
  }
  return {
    accel: env.accel.toUpperCase(),
    guestMemoryMiB,
    qemuToml: o.qemuToml ?? '',
    nodeOptions: o.nodeOptions ?? '',
    settleS,
    start,
    memory,
    environment: {
      date: new Date().toISOString(),
      cores: os.cpus().length,
      cpuModel: os.cpus()[0]?.model ?? '?',
      loadavgStart,
      loadavgEnd: os.loadavg().map((x) => round(x, 2)),
      containerd: `${cd.binaries.version} (${cd.binaries.flavor})`,
    },
    durationS: round((performance.now() - t0) / 1000, 1),
  };
}

const mib = (kib: number, n = 1) => round(kib / 1024 / n, 1);

/** The JSON form: times in ms, memory in MiB per pod, ratios to runc from the same run. */
export function densityJson(r: DensityReport): Record<string, unknown> {
  const runcMem = (pods: number) => r.memory.find((m) => m.runtime === 'runc' && m.pods === pods)?.perPodMiB.median;
  const runcStart = r.start.find((s) => s.runtime === 'runc')?.allRunningMs;
  return {
    kind: 'katats density benchmark',
    accel: r.accel,
    guest_memory_mib: r.guestMemoryMiB,
    qemu_toml: r.qemuToml,
    node_options: r.nodeOptions,
    settle_s: r.settleS,
    environment: r.environment,
    duration_s: r.durationS,
    start: r.start.map((s) => ({
      runtime: s.runtime,
      pods: s.pods,
      running: s.firstOutputMs.length,
      all_running_ms: s.allRunningMs !== undefined ? round(s.allRunningMs, 0) : null,
      ratio_to_runc: s.allRunningMs !== undefined && runcStart ? round(s.allRunningMs / runcStart, 1) : null,
      first_output_ms: [...s.firstOutputMs].sort((a, b) => a - b).map((v) => round(v, 0)),
      loadavg_at_start: s.loadavg,
      cpu_s_per_pod: s.cpuS.length ? round(summarize(s.cpuS).median, 2) : null,
      vmm_cpu_s_per_pod: s.vmmCpuS.length ? round(summarize(s.vmmCpuS).median, 2) : null,
      failures: s.failures,
    })),
    memory: r.memory.map((m) => {
      const n = m.perPod.length;
      const sum = (k: keyof PodMemory) => m.perPod.reduce((a, p) => a + (p[k] as number), 0);
      const base = runcMem(m.pods);
      const split = (b: PssBreakdown | undefined) =>
        b && Object.fromEntries(Object.entries(b).map(([k, v]) => [k, { pss_mib: mib(v.pssKiB, n), written_mib: mib(v.writtenKiB, n) }]));
      return {
        runtime: m.runtime,
        pods: m.pods,
        per_pod_pss_mib: { median: round(m.perPodMiB.median, 1), min: round(m.perPodMiB.min, 1), max: round(m.perPodMiB.max, 1) },
        ratio_to_runc: base ? round(m.perPodMiB.median / base, 1) : null,
        mean_per_pod_mib: { shim: mib(sum('shimKiB'), n), vmm: mib(sum('vmmKiB'), n), other: mib(sum('otherKiB'), n) },
        processes: [...new Set(m.perPod.map((p) => p.processes.join('+')))],
        ...(m.vmm ? { vmm_mappings_per_pod: split(m.vmm) } : {}),
        ...(m.shim ? { shim_mappings_per_pod: split(m.shim) } : {}),
        ...(m.templateFileKiB !== undefined ? templateJson(m.templateFileKiB, m.vmm, n) : {}),
      };
    }),
  };
}

/**
 * The template's RAM file is memory no pod's PSS holds in full: PSS gives each page a clone maps
 * to its mappers in shares, and the pages no clone maps to nobody. Summed over the pods, guest
 * RAM's PSS less what the clones wrote is the number of template pages mapped (each page's shares
 * add up to one); the rest of the file is the node's cost of keeping the template.
 */
function templateJson(fileKiB: number, vmm: PssBreakdown | undefined, pods: number): { template_ram_file_mib: number; template_unmapped_per_pod_mib: number } {
  const mappedKiB = vmm ? vmm.guestRam.pssKiB - vmm.guestRam.writtenKiB : 0;
  return { template_ram_file_mib: mib(fileKiB), template_unmapped_per_pod_mib: mib(Math.max(0, fileKiB - mappedKiB), pods) };
}

interface MappingsJson {
  [kind: string]: { pss_mib: number; written_mib: number };
}
interface MemoryJson {
  runtime: string;
  pods: number;
  per_pod_pss_mib: { median: number; min: number; max: number };
  ratio_to_runc: number | null;
  mean_per_pod_mib: { shim: number; vmm: number; other: number };
  vmm_mappings_per_pod?: MappingsJson;
  shim_mappings_per_pod?: MappingsJson;
  template_ram_file_mib?: number;
  template_unmapped_per_pod_mib?: number;
}
interface StartJson {
  loadavg_at_start: number;
  cpu_s_per_pod: number | null;
  vmm_cpu_s_per_pod: number | null;
  runtime: string;
  pods: number;
  running: number;
  all_running_ms: number | null;
  ratio_to_runc: number | null;
  failures: string[];
}

/** Markdown tables for the report. */
export function densityMarkdown(r: DensityReport): string {
  const j = densityJson(r) as { start: StartJson[]; memory: MemoryJson[] };
  const env = r.environment;
  const lines = [
    `${r.accel} for katats (guest ${r.guestMemoryMiB} MiB, every pod a clone of one template), ${env.cores} cores, ` +
      `load ${env.loadavgStart.join(' ')} at the start and ${env.loadavgEnd.join(' ')} at the end; ${env.containerd}.`,
    ...(r.qemuToml || r.nodeOptions ? ['', `Run with [hypervisor.qemu] \`${r.qemuToml.trim() || '-'}\`, shim node flags \`${r.nodeOptions || '-'}\`.`] : []),
    '',
    '| runtime | pods at once | running | all running | x runc | load at start | CPU s per pod (median) | of which VMM |',
    '|---|---|---|---|---|---|---|---|',
    ...j.start.map(
      (s) =>
        `| ${s.runtime} | ${s.pods} | ${s.running} | ${s.all_running_ms !== null ? `${(s.all_running_ms / 1000).toFixed(1)} s` : 'not all'} | ${s.ratio_to_runc ?? '-'} ` +
        `| ${s.loadavg_at_start} | ${s.cpu_s_per_pod ?? '-'} | ${s.vmm_cpu_s_per_pod ?? '-'} |`,
    ),
    '',
    'CPU s per pod: user + system time of the pod\'s host processes (shim, QEMU: the guest runs in it) when all were running; ' +
      'N pods at once on an idle host need about N x that / cores.',
    '',
    `Host PSS per idle pod (${r.settleS} s after the last start; shim + VMM + helpers, smaps_rollup):`,
    '',
    '| runtime | idle pods | per pod (median) | min-max | x runc | shim | VMM | other |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const m of j.memory) {
    const p = m.per_pod_pss_mib;
    const mean = m.mean_per_pod_mib;
    lines.push(`| ${m.runtime} | ${m.pods} | ${p.median} MiB | ${p.min}-${p.max} | ${m.ratio_to_runc ?? '-'} | ${mean.shim} | ${mean.vmm} | ${mean.other} |`);
  }
  const split = j.memory.filter((m) => m.vmm_mappings_per_pod);
  if (split.length) {
    lines.push('', "Where a katats pod's PSS is (mean per pod, MiB; PSS / written by it):", '');
    lines.push('| idle pods | QEMU guest RAM | QEMU TCG code | QEMU other anon | QEMU files | shim anon (heap) | shim files |', '|---|---|---|---|---|---|---|');
    for (const m of split) {
      const c = (b: MappingsJson | undefined, k: string) => (b?.[k] ? `${b[k].pss_mib} / ${b[k].written_mib}` : '-');
      const v = m.vmm_mappings_per_pod;
      const s = m.shim_mappings_per_pod;
      lines.push(`| ${m.pods} | ${c(v, 'guestRam')} | ${c(v, 'tcgCode')} | ${c(v, 'anon')} | ${c(v, 'file')} | ${c(s, 'anon')} | ${c(s, 'file')} |`);
    }
  }
  const withTemplate = j.memory.filter((m) => m.template_ram_file_mib !== undefined);
  if (withTemplate.length) {
    lines.push(
      '',
      "Beside the pods, once per node: the template's RAM file in its tmpfs. The clones' guest RAM above holds shares of the pages they map; " +
        'the pages no clone maps are in no PSS:',
      '',
      '| idle pods | template RAM file | of it mapped by no clone, per pod |',
      '|---|---|---|',
      ...withTemplate.map((m) => `| ${m.pods} | ${m.template_ram_file_mib} MiB | ${m.template_unmapped_per_pod_mib} MiB |`),
    );
  }
  const failed = j.start.flatMap((s) => s.failures.map((f) => `${s.runtime}: ${f}`));
  if (failed.length) lines.push('', 'Failures:', '', ...failed.map((f) => `- ${f}`));
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      pods: { type: 'string', default: '10' },
      settle: { type: 'string', default: '20' },
      'qemu-toml': { type: 'string', default: '' },
      'node-options': { type: 'string', default: '' },
      'no-runc': { type: 'boolean', default: false },
      out: { type: 'string' },
    },
  });
  const t0 = performance.now();
  const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);
  const r = await runDensityBench({
    pods: Number(values.pods),
    settleS: Number(values.settle),
    runc: !values['no-runc'],
    qemuToml: values['qemu-toml'].replace(/\\n/g, '\n'),
    nodeOptions: values['node-options'],
    log: say,
  });
  const md = densityMarkdown(r);
  console.log(md);
  if (values.out) {
    fs.mkdirSync(values.out, { recursive: true });
    fs.writeFileSync(path.join(values.out, 'density.json'), JSON.stringify(densityJson(r), null, 2) + '\n');
    fs.writeFileSync(path.join(values.out, 'density.md'), md + '\n');
  }
  if (r.start.some((s) => s.failures.length)) process.exitCode = 1;
}
