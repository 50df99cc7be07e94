// stdio through Debian's containerd and ctr, in one katats pod (containers grouped by annotation
// into one shim and one VM) that every case shares: a container that stops reading a big stdin
// does not hurt its neighbour or grow the shim, and a chatty container behind a slow reader keeps
// the shim's memory flat. The lifecycle cases themselves run without a VM in task-service*.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Containerd } from '../../harness/containerd.js';
import type { KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';
import { katatsContainerd, until } from './shim-helpers.js';

const POD = 'stdiopod';
const GROUP = ['--annotation', `io.containerd.runc.v2.group=${POD}`];
let env: KatatsEnv;
let c: Containerd;
let image: string;
const logsOf = () => helpers.logsOf(env.logDir, POD, c.logFile);

/** Resident memory of a process in KiB (VmRSS). */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

function theShim(): number {
  const shims = helpers.shimProcs(c.address);
  expect(shims.length, logsOf()).toBe(1);
  return shims[0]!;
}

/** `sh -c SCRIPT` with this containerd's ctr as $CTR (and its address and namespace). */
function shell(script: string): ChildProcess {
  const ctr = `${c.binaries.ctr} --address ${c.address} --namespace ${c.namespace}`;
  return spawn('sh', ['-c', script], { env: { ...process.env, CTR: ctr }, stdio: ['ignore', 'pipe', 'pipe'] });
}

function exited(p: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (p.exitCode !== null || p.signalCode !== null ? resolve(p.exitCode) : p.once('close', (code) => resolve(code))));
}

beforeAll(async () => {
  ({ env, c, image } = await katatsContainerd());
  // The pod: its first container boots the VM; the neighbour joins it.
  await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), ...GROUP, image, POD, 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
  await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), ...GROUP, image, 'neighbour', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
}, 900_000);

afterAll(async () => {
  for (const id of ['neighbour', POD]) {
    await c?.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
    await c?.ctr(['task', 'rm', '-f', id]);
    await c?.ctr(['container', 'rm', id]);
  }
  await helpers.endKatatsSuite(c, env);
}, 300_000);

describe('a katats pod through ctr', () => {
  it("reports the VMM's pid as every task's pid, as Kata does", async () => {
    const [vmm] = helpers.qemuProcs(env.stateDir);
    expect(vmm, logsOf()).toBeDefined();
    const ls = (await c.ctrOk(['task', 'ls'])).stdout;
    expect(ls).toMatch(new RegExp(`^neighbour\\s+${vmm}\\s+RUNNING`, 'm'));
    expect(ls).toMatch(new RegExp(`^${POD}\\s+${vmm}\\s+RUNNING`, 'm'));
    expect((await c.ctrOk(['task', 'ps', 'neighbour'])).stdout).toMatch(new RegExp(`^${vmm}\\b`, 'm'));
  });

  it('a container that reads one byte of a big stdin and stops reading hurts neither its neighbour nor the shim', async () => {
    const shim = theShim();
    const [vmm] = helpers.qemuProcs(env.stateDir);
    const before = rssKiB(shim);
    let most = before;
    // 256 MiB offered; the container takes a byte, then sleeps with the rest unread.
    const p = shell(`head -c 268435456 /dev/zero | $CTR run --rm ${c.runtimeArgs('katats').join(' ')} ${GROUP.join(' ')} ${image} headc1 sh -c 'head -c1 >/dev/null; echo got-one; sleep 8'`);
    let out = '';
    let err = '';
    p.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const sampler = setInterval(() => {
      try {
        most = Math.max(most, rssKiB(shim));
      } catch {
        /* sampled as it exited: the checks below say so */
      }
    }, 250);
    const code = await exited(p);
    clearInterval(sampler);
    expect(code, `${err}\n${logsOf()}`).toBe(0);
    expect(out).toBe('got-one\n');
    // The shim holds at most its 1 MiB bound of the unread input (it held all of it before).
    expect(most - before, `shim VmRSS ${before} -> ${most} KiB`).toBeLessThan(64 * 1024);
    console.log(`head -c1 of 256 MiB: shim VmRSS ${before} KiB, at most ${most} KiB (${env.accel})`);
    // Same shim, same VM, and the neighbour still answers.
    expect(theShim()).toBe(shim);
    expect(helpers.qemuProcs(env.stateDir)).toEqual([vmm]);
    expect((await c.ctrOk(['task', 'ls'])).stdout).toMatch(/^neighbour\s+\d+\s+RUNNING/m);
    const ex = await c.ctr(['task', 'exec', '--exec-id', 'alive1', 'neighbour', 'echo', 'alive']);
    expect(ex.stdout, `${ex.stderr}\n${logsOf()}`).toBe('alive\n');
  }, 300_000);

  it("a chatty container behind a slow reader keeps the shim's memory flat", async () => {
    const shim = theShim();
    const p = shell(`exec $CTR run --rm ${c.runtimeArgs('katats').join(' ')} ${GROUP.join(' ')} ${image} chatty yes katats-chatty-line`);
    let got = 0;
    const stdout = p.stdout!;
    // A slow reader, slower than the container writes: one read every 100 ms. The FIFO stays
    // full and the shim meets back-pressure again and again.
    stdout.on('data', (d: Buffer) => {
      got += d.length;
      stdout.pause();
    });
    stdout.pause();
    const reader = setInterval(() => stdout.resume(), 100);
    p.stderr!.resume();
    await until(() => got, (n) => n > 0, 120_000);
    const samples: number[] = [];
    const SAMPLE_MS = 2000;
    for (let t = 0; t < 60_000; t += SAMPLE_MS) {
      samples.push(rssKiB(shim));
      await new Promise((r) => setTimeout(r, SAMPLE_MS));
    }
    // Read at full speed again: the shim tells the exit once the output is all delivered.
    clearInterval(reader);
    stdout.removeAllListeners('data');
    stdout.resume();
    await c.ctrOk(['task', 'kill', '-s', 'SIGKILL', 'chatty']);
    await exited(p);
    // Warm-up over (the first 10 s): what grows after that grows with the output.
    const warm = samples.slice(5);
    const growth = Math.max(...warm) - warm[0]!;
    console.log(`chatty behind a slow reader, 60 s: ${(got / 1048576).toFixed(0)} MiB read, shim VmRSS every 2 s (KiB): ${samples.join(' ')}; growth after warm-up ${growth} KiB (${env.accel})`);
    expect(got).toBeGreaterThan(1 << 20);
    expect(growth, samples.join(' ')).toBeLessThan(24 * 1024);
    // The old output copy left a listener per back-pressure episode: node warns after 10.
    const shimLog = fs.readFileSync(path.join(env.logDir, `${POD}.log`), 'utf8');
    expect(shimLog).not.toMatch(/MaxListenersExceededWarning/);
    expect(theShim()).toBe(shim);
  }, 300_000);
});
