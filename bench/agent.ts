// Agent request latency in local mode: the agent as its own process (tsx agent/main.ts) on a
// unix socket, real crun, a busybox rootfs.   tsx bench/agent.ts [--iterations N]
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { Client } from '../proto/ttrpc/index.js';
import { serviceClient } from '../proto/rpc.js';
import { busyboxRootfs, containerSpec, processSpec } from '../test/agent/helpers.js';
import { findRunner } from '../agent/runtime/runner.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { iterations: { type: 'string' } } });
const N = Number(values.iterations ?? 30);

function stats(name: string, ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return `${name.padEnd(42)} n=${String(s.length).padStart(5)}  p50 ${q(0.5).toFixed(2).padStart(8)} ms  p90 ${q(0.9).toFixed(2).padStart(8)} ms  p99 ${q(0.99).toFixed(2).padStart(8)} ms  mean ${mean.toFixed(2).padStart(8)} ms`;
}

async function time<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const v = await f();
  return [performance.now() - t0, v];
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-bench-agent-'));
  const rootfs = busyboxRootfs(dir);
  const sock = path.join(dir, 'agent.sock');
  const agent = spawn(path.join(repo, 'node_modules/.bin/tsx'), [path.join(repo, 'agent/main.ts'), '--listen', sock, '--state-dir', path.join(dir, 'state'), '--log-level', 'warn'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (i > 400) throw new Error('agent did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    const client = await Client.connect(sock, { maxMessageSize: 8 << 20 });
    const svc = serviceClient(client, 'grpc.AgentService');
    const health = serviceClient(client, 'grpc.Health');
    const lines: string[] = [];

    for (let i = 0; i < 200; i++) await health.Check({});
    const hc: number[] = [];
    for (let i = 0; i < 2000; i++) hc.push((await time(() => health.Check({})))[0]);
    lines.push(stats('Health.Check (sequential)', hc));

    // CopyFile of a config-map-sized file (one chunk, three directories below the copy root).
    const copyDir = path.join(dir, 'state', 'shared', 'containers', `bench-${process.pid}`, 'volumes', 'cm');
    const data = Buffer.alloc(4096, 'k');
    const copy = (i: number) => svc.CopyFile({ path: path.join(copyDir, `key-${i}`), file_mode: 0o100644, dir_mode: 0o755, file_size: data.length, data, offset: 0, uid: 0, gid: 0 });
    for (let i = 0; i < 50; i++) await copy(i);
    const cp: number[] = [];
    for (let i = 0; i < 1000; i++) cp.push((await time(() => copy(i)))[0]);
    lines.push(stats('CopyFile (4 KiB file, one chunk)', cp));
    // What a native helper spawned per CopyFile would cost before doing any work: one spawn.
    const runner = findRunner();
    const sp: number[] = [];
    for (let i = 0; i < 200; i++) sp.push((await time(() => new Promise((res, rej) => execFile(runner, ['--version'], (e) => (e ? rej(e) : res(null))))))[0]);
    lines.push(stats('native helper spawn (per-call floor)', sp));

    const create: number[] = [];
    const start: number[] = [];
    const wait: number[] = [];
    const remove: number[] = [];
    const total: number[] = [];
    for (let i = 0; i < N + 2; i++) {
      const cid = `bench-${process.pid}-${i}`;
      const t0 = performance.now();
      const [c] = await time(() => svc.CreateContainer({ container_id: cid, OCI: containerSpec(rootfs, ['true']) }));
      const [s] = await time(() => svc.StartContainer({ container_id: cid }));
      const [w, r] = await time(() => svc.WaitProcess({ container_id: cid, exec_id: '' }));
      if (r.status !== 0) throw new Error(`true exited ${r.status}`);
      const [d] = await time(() => svc.RemoveContainer({ container_id: cid }));
      if (i < 2) continue; // warm-up
      create.push(c);
      start.push(s);
      wait.push(w);
      remove.push(d);
      total.push(performance.now() - t0);
    }
    lines.push(stats('CreateContainer (true)', create));
    lines.push(stats('StartContainer', start));
    lines.push(stats('WaitProcess (after start)', wait));
    lines.push(stats('RemoveContainer', remove));
    lines.push(stats('Create+Start+Wait+Remove of `true`', total));

    const cid = `bench-${process.pid}-exec`;
    await svc.CreateContainer({ container_id: cid, OCI: containerSpec(rootfs, ['sleep', '1000']) });
    await svc.StartContainer({ container_id: cid });
    const ex: number[] = [];
    for (let i = 0; i < N + 2; i++) {
      const [e] = await time(async () => {
        await svc.ExecProcess({ container_id: cid, exec_id: `e${i}`, process: processSpec(['true']) });
        await svc.WaitProcess({ container_id: cid, exec_id: `e${i}` });
      });
      if (i >= 2) ex.push(e);
    }
    lines.push(stats('ExecProcess+WaitProcess of `true`', ex));

    // Bulk stdout: 64 MiB from /dev/zero (dd, 1 MiB writes) read with 1 MiB ReadStdout calls.
    await svc.ExecProcess({ container_id: cid, exec_id: 'bulk', process: processSpec(['dd', 'if=/dev/zero', 'bs=1M', 'count=64']) });
    const t0 = performance.now();
    let bytes = 0;
    for (;;) {
      try {
        bytes += (await svc.ReadStdout({ container_id: cid, exec_id: 'bulk', len: 1 << 20 })).data.length;
      } catch {
        break;
      }
    }
    const secs = (performance.now() - t0) / 1000;
    await svc.WaitProcess({ container_id: cid, exec_id: 'bulk' });
    await svc.RemoveContainer({ container_id: cid });
    lines.push(`${'ReadStdout throughput (64 MiB, 1 MiB reads)'.padEnd(42)} ${(bytes / secs / (1 << 20)).toFixed(0)} MiB/s`);
    await client.close();
    process.stdout.write(`katats agent, local mode (real crun), ${os.cpus().length} cores\n${lines.join('\n')}\n`);
  } finally {
    agent.kill('SIGTERM');
    await new Promise((r) => agent.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`bench/agent: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
