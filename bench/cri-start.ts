// CRI pod start: RunPodSandbox, then CreateContainer + StartContainer of the pod's first container
// (busybox `sh -c 'echo hi; sleep 100'`), through one private containerd with CRI and CNI
// (harness/cni.ts), for runc and for katats with the VM factory on (every pod a clone), each with
// a CNI network (eth0 on the bridge: for katats a NIC hot-plugged into the clone) and with the
// host's network, taking turns pod by pod so that a slow moment of the machine hits all alike.
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

const { values } = parseArgs({ options: { pods: { type: 'string', default: '5' }, out: { type: 'string' }, 'qemu-toml': { type: 'string', default: '' }, compare: { type: 'string' } } });
const pods = Number(values.pods);
if (!Number.isInteger(pods) || pods < 1 || pods > 100) throw new Error(`--pods ${values.pods}: 1..100`);
const t0 = performance.now();
const say = (s: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);
/** Each CRI call's own limit: a TCG guest under load takes seconds, a wedged one never answers. */
const CALL_TIMEOUT_MS = 300_000;
const { POD, CONTAINER, NODE } = runtime.v1.NamespaceMode;

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

const templates = fs.mkdtempSync('/tmp/kbc-');
const env = await katatsEnv({ onProgress: say, qemuToml: values['qemu-toml'].replace(/\\n/g, '\n'), extraToml: `[factory]\nenable_template = true\ntemplate_path = "${templates}"\n` });
const baseConfig = fs.readFileSync(env.configFile, 'utf8');
if (values.compare !== undefined && !baseConfig.includes('[hypervisor.qemu]\n')) throw new Error(`${env.configFile}: no [hypervisor.qemu] table to put --compare in`);
const configs: Record<string, string> = { katats: baseConfig, ...(values.compare !== undefined ? { 'katats+': baseConfig.replace('[hypervisor.qemu]\n', `[hypervisor.qemu]\n${values.compare}\n`) } : {}) };
const variants: Variant[] = [
  ...(['cni', 'host'] as const).map((network) => ({ name: `runc ${network}`, handler: 'runc', network })),
  ...Object.entries(configs).flatMap(([name, config]) => (['cni', 'host'] as const).map((network) => ({ name: `${name} ${network}`, handler: 'katats', network, config }))),
];
const figures = new Map<string, PodFigures[]>(variants.map((v) => [v.name, []]));
const failures: string[] = [];
const log = pino({ level: 'warn' }, pino.destination(2));
let cd: Containerd | undefined;
const loadStart = os.loadavg().map((x) => round(x, 2));

/** One pod of a variant, timed, then stopped and removed. */
async function onePod(c: Containerd, image: string, v: Variant, n: number): Promise<PodFigures> {
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
}

try {
  cd = await startContainerd({ cri: true, cni: true, runtimes: [env.runtime], onProgress: say });
  for (const [name, config] of Object.entries(configs)) {
    fs.writeFileSync(env.configFile, config);
    const { template } = await factoryInit(loadConfig(env.configFile), log);
    say(`${name}: template ${template.meta.key.slice(0, 12)} (${env.accel.toUpperCase()})`);
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
        say(`${v.name} ${turn}/${pods}: RunPodSandbox ${Math.round(f.sandboxMs)} ms + first container ${Math.round(f.containerMs)} ms = ${Math.round(f.totalMs)} ms (load ${os.loadavg()[0]!.toFixed(2)})`);
      } catch (e) {
        failures.push(`${v.name} ${turn}: ${(e as Error).message.slice(0, 500)}`);
        say(`${v.name} ${turn}/${pods}: FAILED ${(e as Error).message.slice(0, 300)}`);
      }
    }
  }
} finally {
  for (const config of Object.values(configs)) {
    fs.writeFileSync(env.configFile, config);
    await factoryDestroy(loadConfig(env.configFile)).catch((e: Error) => say(`factory destroy: ${e.message}`));
  }
  if (failures.length && values.out) fs.cpSync(env.logDir, path.join(values.out, 'logs'), { recursive: true });
  await cd?.stop();
  env.cleanup();
  fs.rmSync(templates, { recursive: true, force: true });
}

const accel = env.accel.toUpperCase();
const runcTotal = (network: string) => figures.get(`runc ${network}`)!;
const rows = variants
  .filter((v) => figures.get(v.name)!.length)
  .map((v) => {
    const f = figures.get(v.name)!;
    const [s, c, t] = [summarize(f.map((x) => x.sandboxMs)), summarize(f.map((x) => x.containerMs)), summarize(f.map((x) => x.totalMs))];
    const runc = runcTotal(v.network);
    const x = v.handler === 'runc' || !runc.length ? undefined : t.median / summarize(runc.map((r) => r.totalMs)).median;
    return { variant: v.name, pods: f.length, sandbox: withUnit(s, 'ms'), container: withUnit(c, 'ms'), total: withUnit(t, 'ms'), x_runc: x === undefined ? null : round(x, 1) };
  });
const ms = (n: number) => String(Math.round(n));
const table = [
  `CRI pod start, ${accel} for katats (factory on: every pod a clone), ${os.cpus().length} cores, containerd ${cd?.binaries.version ?? '?'}; load ${loadStart.join(' ')} at the start, ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} at the end.`,
  ...(values['qemu-toml'] ? [`[hypervisor.qemu] ${values['qemu-toml']} for katats.`] : []),
  ...(values.compare !== undefined ? [`katats+ = katats with [hypervisor.qemu] ${values.compare}.`] : []),
  '',
  '| variant | pods | RunPodSandbox median / p95 | first container median / p95 | total median / p95 | x runc (total) |',
  '|---|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.variant} | ${r.pods} | ${ms(r.sandbox.median_ms!)} / ${ms(r.sandbox.p95_ms!)} | ${ms(r.container.median_ms!)} / ${ms(r.container.p95_ms!)} | ${ms(r.total.median_ms!)} / ${ms(r.total.p95_ms!)} | ${r.x_runc ?? '-'} |`),
  ...(failures.length ? ['', 'Failed:', ...failures.map((f) => `- ${f}`)] : []),
].join('\n');
console.log(table);
if (values.out) {
  fs.mkdirSync(values.out, { recursive: true });
  const result = { accel, cores: os.cpus().length, containerd: cd?.binaries.version, qemuToml: values['qemu-toml'], compare: values.compare ?? null, loadStart, loadEnd: os.loadavg().map((x) => round(x, 2)), date: new Date().toISOString(), rows, failures };
  fs.writeFileSync(path.join(values.out, 'cri-start.json'), JSON.stringify(result, null, 2) + '\n');
  fs.writeFileSync(path.join(values.out, 'cri-start.md'), table + '\n');
}
if (failures.length) process.exitCode = 1;
