// Log URIs through containerd 1.6: `ctr run --log-uri binary:///logger?k=v` makes the shim start
// the logger as containerd's own shims do (fd 3 stdout, fd 4 stderr, fd 5 ready, CONTAINER_ID and
// CONTAINER_NAMESPACE, the query as arguments), and `file:///path` appends both streams to a file.
// One katats VM serves every case: the init process and the execs each get their own log URI.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Containerd } from '../../harness/containerd.js';
import type { KatatsEnv } from './katats-env.js';
import { endKatatsSuite, katatsContainerd, logsOf, procsWithEnv, qemuProcs, until } from './shim-helpers.js';

// A log binary after containerd's protocol. It records what it was given, copies fd 3 and fd 4 to
// files, and signals readiness with one byte while keeping fd 5 open (containerd accepts a byte or
// end of file). With `mode linger` it stays after end of file until SIGTERM, like a logger that
// flushes somewhere remote.
const LOGGER = `#!/bin/sh
args="$*"
while [ $# -ge 2 ]; do
  case "$1" in dir) dir=$2 ;; mode) mode=$2 ;; esac
  shift 2
done
base="$dir/$CONTAINER_ID"
{
  echo "args: $args"
  env | sort
  [ -p /dev/fd/3 ] && echo "fd3: pipe"
  [ -p /dev/fd/4 ] && echo "fd4: pipe"
  [ -p /dev/fd/5 ] && echo "fd5: pipe"
} > "$base.meta"
cat <&3 > "$base.out" 5>&- &
o=$!
cat <&4 > "$base.err" 5>&- &
e=$!
printf x >&5
wait $o $e
echo eof >> "$base.meta"
if [ "$mode" = linger ]; then
  trap 'echo term >> "$base.meta"; kill $s 2>/dev/null; exit 0' TERM
  sleep 1000 5>&- &
  s=$!
  wait $s
fi
`;

let env: KatatsEnv;
let c: Containerd;
let image: string;
let dir: string;
let logger: string;

const read = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '');
const binaryUri = (mode: string) => `binary://${logger}?dir=${encodeURIComponent(dir)}&mode=${mode}&env.GREETING=hi`;

beforeAll(async () => {
  ({ env, c, image } = await katatsContainerd());
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-logs-'));
  logger = path.join(dir, 'logger.sh');
  fs.writeFileSync(logger, LOGGER, { mode: 0o755 });
}, 600_000);

afterAll(async () => {
  try {
    // Log binaries this suite's containers started are the suite's helpers: none may be left.
    await endKatatsSuite(c, env, () => (c ? procsWithEnv({ CONTAINER_NAMESPACE: c.namespace }) : []));
  } finally {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

describe('log URIs with io.containerd.katats.v2', () => {
  it('binary:// for the init process and an exec, file:// for an exec; loggers end with their processes', async () => {
    const id = 'logs1';
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('katats'), '--log-uri', binaryUri('linger'), image, id, 'sh', '-c', 'echo init-out; echo init-err >&2; exec sleep 1000'], { timeoutMs: 300_000 });
    const base = path.join(dir, id);
    await until(() => read(`${base}.out`) + read(`${base}.err`), (s) => s === 'init-out\ninit-err\n', 30_000);
    expect(read(`${base}.out`), logsOf(env.logDir, id)).toBe('init-out\n');
    expect(read(`${base}.err`)).toBe('init-err\n');
    const meta = read(`${base}.meta`).split('\n');
    // The query's keys and first values are the arguments; env.* keys are environment variables.
    expect(meta).toContain(`args: dir ${dir} mode linger`);
    expect(meta).toContain(`CONTAINER_ID=${id}`);
    expect(meta).toContain(`CONTAINER_NAMESPACE=${c.namespace}`);
    expect(meta).toContain('GREETING=hi');
    // Nothing of the shim's own environment (its wrapper sets KATATS_CONF_FILE).
    expect(meta.filter((l) => l.startsWith('KATATS_CONF_FILE='))).toEqual([]);
    expect(meta).toEqual(expect.arrayContaining(['fd3: pipe', 'fd4: pipe', 'fd5: pipe']));
    expect(procsWithEnv({ CONTAINER_ID: id, CONTAINER_NAMESPACE: c.namespace }).length).toBeGreaterThan(0);

    // file:// for an exec: both streams appended to one file, its directory created.
    const logFile = path.join(dir, 'sub', 'e1.log');
    const e1 = await c.ctr(['task', 'exec', '--exec-id', 'e1', '--log-uri', `file://${logFile}`, id, 'sh', '-c', 'echo exec-out; echo exec-err >&2; exit 4']);
    expect(e1.code, `${e1.stderr}\n${logsOf(env.logDir, id)}`).toBe(4);
    expect(read(logFile).split('\n').sort()).toEqual(['', 'exec-err', 'exec-out']);

    // binary:// for an exec: CONTAINER_ID is the exec id, as containerd's shims set it; a logger
    // that exits at end of file is gone as soon as the exec is.
    const e2 = await c.ctr(['task', 'exec', '--exec-id', 'e2', '--log-uri', binaryUri('once'), id, 'sh', '-c', 'echo e2-out; echo e2-err >&2']);
    expect(e2.code, e2.stderr).toBe(0);
    const e2base = path.join(dir, 'e2');
    await until(() => read(`${e2base}.meta`), (s) => s.includes('eof'), 10_000);
    expect(read(`${e2base}.out`)).toBe('e2-out\n');
    expect(read(`${e2base}.err`)).toBe('e2-err\n');
    await until(() => procsWithEnv({ CONTAINER_ID: 'e2', CONTAINER_NAMESPACE: c.namespace }), (p) => p.length === 0, 10_000);
    expect(procsWithEnv({ CONTAINER_ID: 'e2', CONTAINER_NAMESPACE: c.namespace })).toEqual([]);

    // A log binary that cannot start fails the exec with its name, and the shim serves on.
    const bad = await c.ctr(['task', 'exec', '--exec-id', 'e3', '--log-uri', 'binary:///nonexistent/katats-logger', id, 'echo', 'lost']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('/nonexistent/katats-logger');
    const alive = await c.ctr(['task', 'exec', '--exec-id', 'e4', id, 'echo', 'still serving']);
    expect(alive.stdout, logsOf(env.logDir, id)).toBe('still serving\n');

    // A FIFO whose reader goes away mid-stream (ctr killed): writes fail with EPIPE, which ends
    // that copy and nothing else.
    const flood = c.ctrSpawn(['task', 'exec', '--exec-id', 'e5', id, 'sh', '-c', 'while true; do echo flooding-the-fifo; done']);
    await new Promise<void>((resolve) => flood.stdout!.once('data', () => resolve()));
    flood.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 2000));
    const after = await c.ctr(['task', 'exec', '--exec-id', 'e6', id, 'echo', 'after the flood']);
    expect(after.stdout, logsOf(env.logDir, id)).toBe('after the flood\n');

    // The lingering logger of the init process: still there while the task runs, gone after the
    // task is deleted (SIGTERM once both streams ended).
    expect(procsWithEnv({ CONTAINER_ID: id, CONTAINER_NAMESPACE: c.namespace }).length).toBeGreaterThan(0);
    await c.ctrOk(['task', 'kill', '-s', 'SIGKILL', id]);
    await until(() => c.ctr(['task', 'ls']), (r) => new RegExp(`${id}\\s+\\d+\\s+STOPPED`).test(r.stdout), 30_000);
    await c.ctrOk(['task', 'rm', id]);
    await until(() => procsWithEnv({ CONTAINER_ID: id, CONTAINER_NAMESPACE: c.namespace }), (p) => p.length === 0, 20_000);
    expect(procsWithEnv({ CONTAINER_ID: id, CONTAINER_NAMESPACE: c.namespace })).toEqual([]);
    expect(read(`${base}.meta`).split('\n')).toEqual(expect.arrayContaining(['eof', 'term']));
    await c.ctrOk(['container', 'rm', id]);
    await until(() => qemuProcs(env.stateDir), (p) => p.length === 0, 30_000);
    expect(qemuProcs(env.stateDir)).toEqual([]);
  }, 600_000);

  it('a log binary that cannot start fails Create before the process runs, and the VM goes away', async () => {
    const mark = path.join(dir, 'mark');
    fs.mkdirSync(mark);
    const r = await c.ctr(
      ['run', ...c.runtimeArgs('katats'), '--mount', `type=bind,src=${mark},dst=/mark,options=rbind:rw`, '--log-uri', 'binary:///nonexistent/katats-logger', image, 'logs2', 'touch', '/mark/ran'],
      { timeoutMs: 300_000 },
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr, logsOf(env.logDir, 'logs2')).toMatch(/create.*\/nonexistent\/katats-logger/is);
    // The process never started: its side effect is missing.
    expect(fs.existsSync(path.join(mark, 'ran'))).toBe(false);
    await c.ctr(['container', 'rm', 'logs2']);
    await until(() => qemuProcs(env.stateDir), (p) => p.length === 0, 60_000);
    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect((await c.ctrOk(['task', 'ls', '-q'])).stdout.trim()).toBe('');
  }, 600_000);
});
