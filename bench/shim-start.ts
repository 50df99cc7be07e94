// The shim's own part of a pod's start, without containerd or a VM: `start` as containerd runs it,
// then what containerd does next (dial the address it printed, call the Task service), until the
// daemon answers. Per run: when `start` exited, and when the first call was answered, both from
// the spawn of `start`; then the daemon is shut down.
//   npx tsx bench/shim-start.ts [--runs 20] [--against DIST_BIN_SHIM] [--out FILE]
// --against also runs another build's containerd-shim-katats-v2 (e.g. main's), alternating run by
// run with this one's, so both see the same load.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildHostBinaries } from '../scripts/build.js';
import { Client, dialUnix } from '../proto/ttrpc/index.js';
import { serviceClient } from '../proto/rpc.js';
import { listProcs } from '../harness/procs.js';
import { round, summarize } from './macro/stats.js';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' }, against: { type: 'string' }, out: { type: 'string' } } });
const runs = Number(values.runs);
const shims = [path.join((await buildHostBinaries(() => {})).binDir, 'containerd-shim-katats-v2'), ...(values.against ? [values.against] : [])];

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-bss-'));
const configFile = path.join(dir, 'configuration.toml');
fs.writeFileSync(configFile, `[runtime]\nstate_dir = "${dir}/run"\nlog_dir = "${dir}/log"\n`);
const address = path.join(dir, 'containerd.sock');
const daemons = () => listProcs().filter((p) => p.cmdline.includes(address) && !p.cmdline.includes(' start')).map((p) => p.pid);

function runStart(shim: string, id: string, bundle: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const args = ['-namespace', 'bench', '-id', id, '-address', address, '-publish-binary', '/bin/false', '-bundle', bundle, 'start'];
    const child = spawn(shim, args, { cwd: bundle, env: { ...process.env, KATATS_CONF_FILE: configFile, MAX_SHIM_VERSION: '2' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const exited: number[][] = shims.map(() => []);
const answered: number[][] = shims.map(() => []);
/** The daemon's own figures from its 'shim serving' line (startupCpuMs where the build logs it). */
const daemonMs: number[][] = shims.map(() => []);
const daemonCpuMs: number[][] = shims.map(() => []);
try {
  for (let i = -2; i < runs; i++) {
    for (const [k, shim] of shims.entries()) {
      const id = `b${k}-${i + 2}`;
      const bundle = path.join(dir, 'bundles', id);
      fs.mkdirSync(bundle, { recursive: true });
      fs.writeFileSync(path.join(bundle, 'config.json'), JSON.stringify({ ociVersion: '1.1.0', process: { args: ['true'], cwd: '/' }, root: { path: 'rootfs' }, annotations: {} }));
      const t0 = performance.now();
      const r = await runStart(shim, id, bundle);
      const tExit = performance.now() - t0;
      if (r.code !== 0) throw new Error(`start ${id}: exit ${r.code}: ${r.stderr.trim()}`);
      const addr = (JSON.parse(r.stdout) as { address: string }).address.replace(/^unix:\/\//, '');
      const client = new Client(() => dialUnix(addr));
      const task = serviceClient(client, 'containerd.task.v2.Task');
      try {
        await task.Connect({ id }, { timeoutMs: 30_000 });
        const tAnswer = performance.now() - t0;
        if (i >= 0) {
          exited[k]!.push(tExit);
          answered[k]!.push(tAnswer);
          process.stderr.write(`run ${i + 1}/${runs} ${shim}: start exited ${Math.round(tExit)} ms, first call answered ${Math.round(tAnswer)} ms\n`);
        }
        await task.Shutdown({ id: '', now: true }, { timeoutMs: 10_000 });
      } finally {
        await client.close();
      }
      const end = Date.now() + 10_000;
      while (daemons().length > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      const serving = fs
        .readFileSync(path.join(dir, 'log', `${id}.log`), 'utf8')
        .split('\n')
        .filter((l) => l.includes('"shim serving"'))
        .map((l) => JSON.parse(l) as { startupMs?: number; startupCpuMs?: number })[0];
      if (i >= 0 && serving?.startupMs !== undefined) daemonMs[k]!.push(serving.startupMs);
      if (i >= 0 && serving?.startupCpuMs !== undefined) daemonCpuMs[k]!.push(serving.startupCpuMs);
    }
  }
} finally {
  for (const pid of daemons()) process.kill(pid, 'SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
}
const fmt = (v: number[]) => {
  const x = summarize(v);
  return { median_ms: round(x.median, 0), p95_ms: round(x.p95, 0), min_ms: round(x.min, 0) };
};
const results = shims.map((shim, k) => ({
  shim,
  startExited: fmt(exited[k]!),
  firstCallAnswered: fmt(answered[k]!),
  daemonStartup: daemonMs[k]!.length ? fmt(daemonMs[k]!) : null,
  daemonStartupCpu: daemonCpuMs[k]!.length ? fmt(daemonCpuMs[k]!) : null,
}));
console.log(`shim start, ${runs} runs each (load ${os.loadavg()[0]!.toFixed(1)} at the end): median / p95 / min ms`);
for (const r of results) {
  console.log(r.shim);
  console.log(`  start exited          ${r.startExited.median_ms} / ${r.startExited.p95_ms} / ${r.startExited.min_ms}`);
  console.log(`  first call answered   ${r.firstCallAnswered.median_ms} / ${r.firstCallAnswered.p95_ms} / ${r.firstCallAnswered.min_ms}`);
  if (r.daemonStartup) console.log(`  daemon until serving  ${r.daemonStartup.median_ms} / ${r.daemonStartup.p95_ms} / ${r.daemonStartup.min_ms}`);
  if (r.daemonStartupCpu) console.log(`  of it CPU             ${r.daemonStartupCpu.median_ms} / ${r.daemonStartupCpu.p95_ms} / ${r.daemonStartupCpu.min_ms}`);
}
if (values.out) {
  fs.mkdirSync(path.dirname(values.out), { recursive: true });
  fs.writeFileSync(values.out, JSON.stringify({ runs, results, at: new Date().toISOString() }, null, 2) + '\n');
}
