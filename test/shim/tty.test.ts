// Terminals through containerd 1.6: `ctr run -t` and `ctr task exec -t` need a real terminal, so
// ctr runs under util-linux `script`, which gives it a pty and copies our input into it. What is
// typed runs in the guest, on a pty of the guest (/dev/pts/N) whose size follows the outer one,
// ^C interrupts the guest's foreground process, and the shell's exit code comes back. One VM.
import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Containerd } from '../../harness/containerd.js';
import { withDescendants } from '../../harness/procs.js';
import type { KatatsEnv } from './katats-env.js';
import { endKatatsSuite, katatsContainerd, logsOf, qemuProcs, until } from './shim-helpers.js';

let env: KatatsEnv;
let c: Containerd;
let image: string;
const terminals: Terminal[] = [];

/** A command under `script`: its terminal output (CRs kept) and a way to type into it. */
class Terminal {
  readonly child: ChildProcess;
  out = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    command: string,
    readonly sandbox: string,
  ) {
    this.child = spawn('script', ['-qfec', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, SHELL: '/bin/sh' } });
    this.child.stdout!.on('data', (d: Buffer) => (this.out += d.toString('latin1')));
    this.child.stderr!.on('data', (d: Buffer) => (this.out += d.toString('latin1')));
    // Typing into a terminal whose `script` has gone is a failure of the test, told by expect().
    this.child.stdin!.on('error', (e) => (this.out += `\n[stdin: ${e.message}]`));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    terminals.push(this);
  }

  type(s: string): void {
    this.child.stdin!.write(s);
  }

  /** Waits for `re` in the output (from `from` on); fails with the transcript and the sandbox's logs. */
  async expect(re: RegExp, ms = 20_000, from = 0): Promise<RegExpExecArray> {
    const m = await until(() => re.exec(this.out.slice(from)), (v) => v !== null, ms);
    if (!m) throw new Error(`no ${re} in the terminal within ${ms} ms; transcript:\n${JSON.stringify(this.out)}\n${logsOf(env.logDir, this.sandbox)}`);
    return m;
  }

  /** ctr under this terminal, and the outer pty it sits on. */
  ctrPty(): { pid: number; pty: string } {
    const ctr = withDescendants([this.child.pid!]).find((p) => p.comm === 'ctr');
    if (!ctr) throw new Error('ctr is not running under script');
    return { pid: ctr.pid, pty: fs.readlinkSync(`/proc/${ctr.pid}/fd/0`) };
  }
}

function ctrCommand(args: string): string {
  return `${c.binaries.ctr} --address ${c.address} --namespace ${c.namespace} ${args}`;
}

beforeAll(async () => {
  ({ env, c, image } = await katatsContainerd());
}, 600_000);

afterAll(async () => {
  for (const t of terminals) if (t.child.exitCode === null && t.child.signalCode === null) t.child.kill('SIGKILL');
  await endKatatsSuite(c, env);
}, 120_000);

describe('terminals with io.containerd.katats.v2', () => {
  it('ctr run -t and ctr task exec -t: guest pty, window size and resize, ^C, exit codes', async () => {
    const id = 'tty1';
    // The outer pty starts at 40x100: ctr passes its size on right after the task starts.
    const run = new Terminal(`stty rows 40 cols 100; exec ${ctrCommand(`run -t --rm --runtime io.containerd.katats.v2 ${image} ${id} sh`)}`, id);
    await run.expect(/\/ # /, 240_000);

    run.type('echo "K=$(uname -r)"; echo "T=$(tty)"; echo "S=$(stty size)"\n');
    expect((await run.expect(/K=(\d\S*)\r/))[1]).toBe(env.image.manifest.kernel.release);
    const initPty = (await run.expect(/T=(\/dev\/pts\/\d+)\r/))[1];
    expect((await run.expect(/S=(\d+ \d+)\r/))[1]).toBe('40 100');

    // Resizing the outer pty sends ctr SIGWINCH; ctr calls ResizePty; the guest pty follows.
    const { pty } = run.ctrPty();
    expect(pty).toMatch(/^\/dev\/pts\/\d+$/);
    execFileSync('stty', ['-F', pty, 'rows', '50', 'cols', '120']);
    let seen = '';
    for (let i = 0; i < 20 && seen !== '50 120'; i++) {
      const from = run.out.length;
      run.type('echo "R=$(stty size)"\n');
      seen = (await run.expect(/R=(\d+ \d+)\r/, 20_000, from))[1]!;
      if (seen !== '50 120') await new Promise((r) => setTimeout(r, 500));
    }
    expect(seen).toBe('50 120');

    // ^C goes through the guest pty's line discipline: SIGINT for the foreground job only.
    run.type('sleep 1000\n');
    await new Promise((r) => setTimeout(r, 1500));
    run.type('\x03');
    run.type('echo "C=$((6*7))"\n');
    await run.expect(/C=42\r/, 20_000);

    // A second terminal into the same container, with its own pty and size.
    const exec = new Terminal(`stty rows 33 cols 77; exec ${ctrCommand(`task exec -t --exec-id x1 ${id} sh`)}`, id);
    await exec.expect(/\/ # /, 60_000);
    exec.type('echo "T=$(tty)"; echo "S=$(stty size)"\n');
    const execPty = (await exec.expect(/T=(\/dev\/pts\/\d+)\r/))[1];
    expect(execPty).not.toBe(initPty);
    expect((await exec.expect(/S=(\d+ \d+)\r/))[1]).toBe('33 77');
    exec.type('exit 4\n');
    expect((await exec.exited).code).toBe(4);

    run.type('exit 5\n');
    const r = await Promise.race([run.exited, new Promise<null>((res) => setTimeout(() => res(null), 60_000))]);
    expect(r?.code, run.out + logsOf(env.logDir, id)).toBe(5);
    await until(() => qemuProcs(env.stateDir), (p) => p.length === 0, 30_000);
    expect(qemuProcs(env.stateDir)).toEqual([]);
    expect((await c.ctrOk(['container', 'ls', '-q'])).stdout.trim()).toBe('');
  }, 600_000);
});
