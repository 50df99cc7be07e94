// `npm run bench [-- --quick] [--containerd bookworm|sid|trixie] [--no-ttrpc] [--no-macro] [--no-network] [--no-density] [--no-cri-start] [--out DIR]`
// Runs the ttrpc micro-benchmark, the macro benchmark (runc, gVisor and the katats slot through one
// private containerd) and the pod network benchmark (runc, gVisor and katats pods on a CNI bridge,
// CRI on trixie's containerd 1.7 whatever --containerd says: the line the network suites prove), the
// density benchmark (10 pods at once with the VM factory, then host memory per idle pod at 10 and 5,
// runc beside it; bench/density.ts), the CRI pod start (RunPodSandbox + first container, runc and
// katats clones, CNI and host network; bench/cri-start.ts) and writes results.json, README.md and
// SVG charts to bench/results/<date>/.
import os from 'node:os';
import path from 'node:path';
import { runTtrpcBench, ttrpcTable } from './ttrpc.js';
import { runMacroBench } from './macro/index.js';
import { networkTable, runNetworkBench } from './network.js';
import { densityMarkdown, runDensityBench } from './density.js';
import { criStartMarkdown, runCriStartBench } from './cri-start.js';
import { ratioSummary } from './report/markdown.js';
import { writeReports, type BenchRun } from './report/write.js';
import type { ContainerdFlavor } from '../harness/containerd.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(name + '='));
  return eq?.slice(name.length + 1);
}

function stamp(d = new Date()): string {
  const p = (x: number) => String(x).padStart(2, '0');
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())}_${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
}

const loadavgBefore = os.loadavg();
const quick = process.argv.includes('--quick');
const flavor = (arg('--containerd') ?? 'bookworm') as ContainerdFlavor;
if (!['bookworm', 'trixie', 'sid'].includes(flavor)) throw new Error(`--containerd ${flavor}: expected bookworm, trixie or sid`);
const outDir = arg('--out') ?? path.join(import.meta.dirname, 'results', stamp() + (quick ? '-quick' : ''));
const t0 = performance.now();
const log = (line: string) => process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`);

const run: BenchRun = { quick };
if (!process.argv.includes('--no-ttrpc')) {
  try {
    log('bench: ttrpc micro-benchmark');
    run.ttrpc = await runTtrpcBench({ quick, log });
  } catch (err) {
    run.ttrpcError = (err as Error).message;
    log(`bench: ttrpc micro-benchmark failed: ${run.ttrpcError}`);
  }
}
if (!process.argv.includes('--no-macro')) {
  try {
    log(`bench: macro benchmark${quick ? ' (quick)' : ''}`);
    run.macro = await runMacroBench({ quick, flavor, log, logsDir: path.join(outDir, 'logs'), loadavgBefore });
  } catch (err) {
    run.macroError = (err as Error).stack ?? String(err);
    log(`bench: macro benchmark failed: ${(err as Error).message}`);
  }
}
if (!process.argv.includes('--no-network')) {
  try {
    log(`bench: pod network benchmark${quick ? ' (quick)' : ''}`);
    run.network = await runNetworkBench({ quick, log });
  } catch (err) {
    run.networkError = (err as Error).stack ?? String(err);
    log(`bench: pod network benchmark failed: ${(err as Error).message}`);
  }
}
if (!process.argv.includes('--no-density')) {
  try {
    log(`bench: density benchmark${quick ? ' (quick: 5 pods)' : ''}`);
    run.density = await runDensityBench({ pods: quick ? 5 : 10, settleS: quick ? 10 : 20, log });
  } catch (err) {
    run.densityError = (err as Error).stack ?? String(err);
    log(`bench: density benchmark failed: ${(err as Error).message}`);
  }
}
if (!process.argv.includes('--no-cri-start')) {
  try {
    log(`bench: CRI pod start benchmark${quick ? ' (quick: 2 pods each)' : ''}`);
    run.criStart = await runCriStartBench({ pods: quick ? 2 : 5, logsDir: path.join(outDir, 'logs', 'cri-start'), log });
    if (run.criStart.failures.length) run.criStartError = `${run.criStart.failures.length} pods failed`;
  } catch (err) {
    run.criStartError = (err as Error).stack ?? String(err);
    log(`bench: CRI pod start benchmark failed: ${(err as Error).message}`);
  }
}
const files = writeReports(outDir, run);
if (run.ttrpc) process.stdout.write('\n' + ttrpcTable(run.ttrpc) + '\n');
if (run.macro) process.stdout.write('\n' + ratioSummary(run.macro) + '\n\n');
process.stdout.write(`bench: reports in ${path.relative(process.cwd(), outDir) || outDir}: ${files.map((f) => path.basename(f)).join(', ')}\n`);
if (run.network) process.stdout.write(networkTable(run.network) + '\n\n');
if (run.density) process.stdout.write(densityMarkdown(run.density) + '\n\n');
if (run.criStart) process.stdout.write(criStartMarkdown(run.criStart) + '\n\n');
if (run.macroError || run.ttrpcError || run.networkError || run.densityError || run.criStartError) process.exitCode = 1;
