// CRI pod start: RunPodSandbox, then CreateContainer + StartContainer of the pod's first container
// (busybox `sh -c 'echo hi; sleep 100'`), through one private containerd with CRI and CNI
// (harness/cni.ts), for runc and for katats with the VM factory on (every pod a clone), each with
// a CNI network (eth0 on the bridge: for katats a NIC hot-plugged into the clone) and with the
// host's network, taking turns pod by pod so that a slow moment of the machine hits all alike.
// `npm run bench` runs it (`--no-cri-start` skips it); alone:
//   npx tsx bench/cri-start.ts [--pods 5] [--qemu-toml 'key = value'] [--compare 'key = value'] [--out DIR]
// --qemu-toml sets [hypervisor.qemu] keys for every katats pod; --compare adds a katats variant
// with one more line there (its own template), run in the same turns: an A/B of one setting.
// Figures, each the median and p95 over the pods, in ms: sandbox = RunPodSandbox; container =
// CreateContainer + StartContainer; total = both, the "RunPodSandbox + first container".
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../harness/images/busybox.js';
import { loadConfig } from '../shim/config.js';
import { factoryDestroy, factoryInit } from '../shim/factory.js';
import { katatsEnv } from '../test/shim/katats-env.js';
import { runtime } from '../proto/gen/types.js';
import { round, summarize, withUnit } from './macro/stats.js';

/** Each CRI call's own limit: a TCG guest under load takes seconds, a wedged one never answers. */
const CALL_TIMEOUT_MS = 300_000;
const { POD, CONTAINER, NODE } = runtime.v1.NamespaceMode;

export interface CriStartOptions {
  /** Pods per variant, after one warm-up pod each. */
  pods?: number;
  qemuToml?: string;
  /** One more [hypervisor.qemu] line for a second katats variant ("katats+"). */
  compare?: string;
  /** Where a failed run copies the shims' logs. */
  logsDir?: string;
  log?: (line: string) => void;
}

interface Variant {
  name: string;
  handler: string;
  network: 'cni' | 'host';
  /** The katats configuration file's text for this variant; none for runc. */
  config?: string;
}

interface PodFigures {
  sandboxMs: number;
  containerMs: number;
  totalMs: number;
}

export interface CriStartRow {
  variant: string;
  pods: number;
  sandbox: Record<string, number>;
  container: Record<string, number>;
  total: Record<string, number>;
  /** katats' total median over runc's with the same network, from the same run. */
  x_runc: number | null;
}

export interface CriStartReport {
  accel: string;
  cores: number;
  containerd: string;
  qemuToml: string;
  compare: string | null;
  loadStart: number[];
  loadEnd: number[];
  date: string;
  rows: CriStartRow[];
  failures: string[];
}

export async function runCriStartBench(o: CriStartOptions = {}): Promise<CriStartReport> {
  const pods = o.pods ?? 5;
  if (!Number.isInteger(pods) || pods < 1 || pods > 100) throw new Error(`cri-start: ${pods} pods: 1..100`);
  const say = o.log ?? (() => {});
  const templates = fs.mkdtempSync('/tmp/kbc-');
  const env = await katatsEnv({ onProgress: say, qemuToml: o.qemuToml ?? '', extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"\n` });
  const baseConfig = fs.readFileSync(env.configFile, 'utf8');
  if (o.compare !== undefined && !baseConfig.includes('[hypervisor.qemu]\n')) throw new Error(`${env.configFile}: no [hypervisor.qemu] table to put --compare in`);
  const configs: Record<string, string> = { katats: baseConfig, ...(o.compare !== undefined ? { 'katats+': baseConfig.replace('[hypervisor.qemu]\n', `[hypervisor.qemu]\n${o.compare}\n`) } : {}) };
  const variants: Variant[] = [
    ...(['cni', 'host'] as const).map((network) => ({ name: `runc ${network}`, handler: 'runc', network })),
    ...Object.entries(configs).flatMap(([name, config]) => (['cni', 'host'] as const).map((network) => ({ name: `${name} ${network}`, handler: 'katats', network, config }))),
  ];
  const figures = new Map<string, PodFigures[]>(variants.map((v) => [v.name, []]));
  const failures: string[] = [];
  const loadStart = os.loadavg().map((x) => round(x, 2));
  let cd: Containerd | undefined;

  /** One pod of a variant, timed, then stopped and removed. */
  const onePod = async (c: Containerd, image: string, v: Variant, n: number): Promise<PodFigures> => {
    if (v.config) fs.writeFileSync(env.configFile, v.config);
    const cri = c.criApi();
    const config = {
      metadata: { name: `bench-${n}`, uid: `bench-uid-${n}`, namespace: 'default' },
      linux: { security_context: { namespace_options: { network: v.network === 'cni' ? POD : NODE, pid: CONTAINER, ipc: POD } } },
    };
    const a = performance.now();
    const { pod_sandbox_id: id } = await cri.runtime.RunPodSandbox({ config, runtime_handler: v.handler }, { timeoutMs: CALL_TIMEOUT_MS });
    try {
      const b = performance.now();
      const { container_id } = await cri.runtime.CreateContainer(
        { pod_sandbox_id: id, sandbox_config: config, config: { metadata: { name: 'first' }, image: { image }, command: ['sh', '-c', 'echo hi; sleep 100'] } },
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: CALL_TIMEOUT_MS });
      const d = performance.now();
      if (v.config && !fs.readFileSync(path.join(env.logDir, `${id}.log`), 'utf8').includes('VM cloned from template')) throw new Error(`${v.name}: pod ${id} was not a clone (see its shim log)`);
      return { sandboxMs: b - a, containerMs: d - b, totalMs: d - a };
    } finally {
      await cri.runtime.StopPodSandbox({ pod_sandbox_id: id }, { timeoutMs: CALL_TIMEOUT_MS });
      await cri.runtime.RemovePodSandbox({ pod_sandbox_id: id }, { timeoutMs: CALL_TIMEOUT_MS });
    }
  };

  try {
    cd = await startContainerd({ cri: true, cni: true, runtimes: [env.runtime], onProgress: say });
    const log = pino({ level: 'warn' }, pino.destination(2));
    for (const [name, config] of Object.entries(configs)) {
      fs.writeFileSync(env.configFile, config);
      const { template } = await factoryInit(loadConfig(env.configFile), log);
      say(`cri-start ${name}: template ${template.meta.key.slice(0, 12)} (${env.accel.toUpperCase()})`);
    }
    const image = await busyboxImage({ onProgress: say });
    await cd.importImage(image.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
    await cd.criApi().waitForImage(image.name);
    let n = 0;
    // Warm-up, not counted: the first pod of each pays for caches (layers, the shim's modules).
    for (const v of variants) await onePod(cd, image.name, v, n++);
    for (let turn = 1; turn <= pods; turn++) {
      // Each turn in another order, so that no variant always follows the same one.
      const order = turn % 2 ? variants : [...variants].reverse();
      for (const v of order) {
        try {
          const f = await onePod(cd, image.name, v, n++);
          figures.get(v.name)!.push(f);
          say(`cri-start ${v.name} ${turn}/${pods}: RunPodSandbox ${Math.round(f.sandboxMs)} ms + first container ${Math.round(f.containerMs)} ms = ${Math.round(f.totalMs)} ms (load ${os.loadavg()[0]!.toFixed(2)})`);
        } catch (e) {
          failures.push(`${v.name} ${turn}: ${(e as Error).message.slice(0, 500)}`);
          say(`cri-start ${v.name} ${turn}/${pods}: FAILED ${(e as Error).message.slice(0, 300)}`);
        }
      }
    }
  } finally {
    for (const config of Object.values(configs)) {
      fs.writeFileSync(env.configFile, config);
      await factoryDestroy(loadConfig(env.configFile)).catch((e: Error) => say(`factory destroy: ${e.message}`));
    }
    if (failures.length && o.logsDir) fs.cpSync(env.logDir, o.logsDir, { recursive: true });
    await cd?.stop();
    env.cleanup();
    fs.rmSync(templates, { recursive: true, force: true });
  }

  const runcTotal = (network: string) => figures.get(`runc ${network}`)!;
  const rows = variants
    .filter((v) => figures.get(v.name)!.length)
    .map((v): CriStartRow => {
      const f = figures.get(v.name)!;
      const t = summarize(f.map((x) => x.totalMs));
      const runc = runcTotal(v.network);
      const x = v.handler === 'runc' || !runc.length ? undefined : t.median / summarize(runc.map((r) => r.totalMs)).median;
      return {
        variant: v.name,
        pods: f.length,
        sandbox: withUnit(summarize(f.map((x) => x.sandboxMs)), 'ms'),
        container: withUnit(summarize(f.map((x) => x.containerMs)), 'ms'),
        total: withUnit(t, 'ms'),
        x_runc: x === undefined ? null : round(x, 1),
      };
    });
  return {
    accel: env.accel.toUpperCase(),
    cores: os.cpus().length,
    containerd: cd?.binaries.version ?? '?',
    qemuToml: o.qemuToml ?? '',
    compare: o.compare ?? null,
    loadStart,
    loadEnd: os.loadavg().map((x) => round(x, 2)),
    date: new Date().toISOString(),
    rows,
    failures,
  };
}

export function criStartMarkdown(r: CriStartReport): string {
  const ms = (n: number | undefined) => String(Math.round(n ?? NaN));
  return [
    `CRI pod start, ${r.accel} for katats (factory on: every pod a clone), ${r.cores} cores, containerd ${r.containerd}; load ${r.loadStart.join(' ')} at the start, ${r.loadEnd.join(' ')} at the end.`,
    ...(r.qemuToml ? [`[hypervisor.qemu] ${r.qemuToml} for katats.`] : []),
    ...(r.compare !== null ? [`katats+ = katats with [hypervisor.qemu] ${r.compare}.`] : []),
    '',
    '| variant | pods | RunPodSandbox median / p95 | first container median / p95 | total median / p95 | x runc (total) |',
    '|---|---|---|---|---|---|',
    ...r.rows.map((x) => `| ${x.variant} | ${x.pods} | ${ms(x.sandbox.median_ms)} / ${ms(x.sandbox.p95_ms)} | ${ms(x.container.median_ms)} / ${ms(x.container.p95_ms)} | ${ms(x.total.median_ms)} / ${ms(x.total.p95_ms)} | ${x.x_runc ?? '-'} |`),
    '',
    'In ms. RunPodSandbox: the pod with its network (for katats a VM cloned from the template, on a CNI network with a NIC hot-plugged into it); first container: CreateContainer + StartContainer; total: both.',
    ...(r.failures.length ? ['', 'Failed:', ...r.failures.map((f) => `- ${f}`)] : []),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { pods: { type: 'string', default: '5' }, out: { type: 'string' }, 'qemu-toml': { type: 'string', default: '' }, compare: { type: 'string' } } });
  const t0 = performance.now();
  const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);
  const r = await runCriStartBench({
    pods: Number(values.pods),
    qemuToml: values['qemu-toml'].replace(/\\n/g, '\n'),
    ...(values.compare !== undefined ? { compare: values.compare } : {}),
    ...(values.out ? { logsDir: path.join(values.out, 'logs') } : {}),
    log: say,
  });
  const md = criStartMarkdown(r);
  console.log(md);
  if (values.out) {
    fs.mkdirSync(values.out, { recursive: true });
    fs.writeFileSync(path.join(values.out, 'cri-start.json'), JSON.stringify(r, null, 2) + '\n');
    fs.writeFileSync(path.join(values.out, 'cri-start.md'), md + '\n');
  }
  if (r.failures.length) process.exitCode = 1;
}
