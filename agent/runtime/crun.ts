// crun as the agent's OCI runtime. One-shot commands (start, kill, delete, pause, resume,
// update, state, ps) run through `katats-runner exec`, forked by the keeper while it lives (a
// spawn from node forks node: ~0.5 s under TCG, and StartContainer is on a pod's start path);
// create and exec run under a `katats-runner run` monitor (see ../process.ts), which this module
// only builds argv for.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../log.js';
import type { Keeper } from '../keeper.js';
import { internal, notFound, TtrpcError, Code } from '../errors.js';
import { runTool } from '../../sys/exec.js';
import type { OciSpec } from '../spec.js';
import { isTimeout, settleWithin, withTimeout } from '../../sys/timeout.js';

/** A one-shot crun command that did not finish in time (it is SIGKILLed). */
export const CRUN_TIMEOUT = 'KATATS_CRUN_TIMEOUT';
/** Long enough for a loaded TCG guest; a crun stuck on a frozen cgroup or a dead mount ends here. */
export const DEFAULT_CRUN_TIMEOUT_MS = 60_000;

export interface CrunOptions {
  crun: string;
  runner: string;
  /** crun --root (state directory); crun's default when unset */
  root?: string;
  /** run crun without the cgroup2 mount (hybrid cgroup hosts) */
  hideUnified: boolean;
  /** limit for each one-shot command (default DEFAULT_CRUN_TIMEOUT_MS) */
  timeoutMs?: number;
  /** forks the one-shot commands while alive, their output in files below `outputDir` */
  keeper?: Keeper;
  outputDir?: string;
  log?: Logger;
  /**
   * crun runs at fixed addresses (katats-runner --no-aslr): under TCG every randomized exec of crun
   * makes the emulator translate crun, its libraries and the loader again, at fixed addresses the
   * next crun reuses the last one's code. The one-shot commands start no process; create gives the
   * container's init a linux.personality that turns ASLR back on before its exec (createFlags);
   * exec, and any command that runs hooks, keep ASLR.
   */
  fixedAddresses?: boolean;
}

/** A one-shot command's view of what it may start: a hook is a process like any other. */
export interface OneShotOptions {
  /** The command runs hooks (a start's poststart, a delete's poststop): ASLR stays on. */
  runsHooks?: boolean;
}

/** crun's commands that start no process of their own (hooks aside: OneShotOptions.runsHooks). */
const PROCESSLESS = new Set(['start', 'kill', 'delete', 'state', 'pause', 'resume', 'update', 'ps']);

/** How long a killed crun's reap is waited for before its request is answered anyway. */
const REAP_WAIT_MS = 5000;
/** What is kept of a one-shot command's stdout (`crun ps` lists every pid of a container) and stderr. */
const MAX_OUTPUT_BYTES = 1 << 20;

export interface CrunState {
  id: string;
  pid: number;
  status: 'creating' | 'created' | 'running' | 'paused' | 'stopped' | string;
  bundle: string;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class Crun {
  constructor(readonly opts: CrunOptions) {}

  /** crun's global options, then the command. */
  argv(args: string[], logFile?: string): string[] {
    const g: string[] = [this.opts.crun];
    if (this.opts.root) g.push('--root', this.opts.root);
    if (logFile) g.push(`--log=file:${logFile}`, '--log-format=json');
    return [...g, ...args];
  }

  /** The runner's own options in front of a crun argv. */
  runnerPrefix(): string[] {
    return this.opts.hideUnified ? ['--hide-unified'] : [];
  }

  /**
   * `katats-runner run`'s options for `crun create`, and the spec change they need. At fixed
   * addresses the next crun create reuses this one's translated code; the container's init is
   * crun's child and would inherit the persona, so the spec gets a linux.personality (the host
   * never sends one), which crun applies in the init before it execs the container's process:
   * that process, and all it starts, has ASLR. Hooks run by create keep it on for crun too.
   */
  createFlags(spec: OciSpec, o: OneShotOptions = {}): string[] {
    if (!this.opts.fixedAddresses || o.runsHooks) return this.runnerPrefix();
    spec.linux ??= {};
    spec.linux.personality ??= { domain: 'LINUX' };
    return [...this.runnerPrefix(), '--no-aslr'];
  }

  /** `katats-runner exec`'s options for a one-shot command: fixed addresses only for one that starts no process. */
  private oneShotPrefix(args: string[], o: OneShotOptions): string[] {
    const fixed = this.opts.fixedAddresses && !o.runsHooks && PROCESSLESS.has(args[0] ?? '');
    return [...this.runnerPrefix(), ...(fixed ? ['--no-aslr'] : [])];
  }

  private outputs = 0;

  async run(args: string[], input?: string, o: OneShotOptions = {}): Promise<RunResult> {
    const k = this.opts.keeper;
    if (k && input === undefined && this.opts.outputDir) {
      if (k.alive) {
        try {
          return await this.runByKeeper(k, this.opts.outputDir, args, o);
        } catch (e) {
          // A deadline passed is crun's answer; a keeper that could not take the request is not.
          if (e instanceof TtrpcError) throw e;
          this.opts.log?.warn({ err: e }, 'the keeper did not run crun: spawning it from node');
        }
      } else {
        this.opts.log?.warn({ command: args[0] }, 'the keeper is dead: spawning crun from node');
      }
    }
    const argv = ['exec', ...this.oneShotPrefix(args, o), '--', ...this.argv(args)];
    try {
      // katats-runner exec execs crun, so the SIGKILL past the limit reaches crun itself.
      const r = await runTool(this.opts.runner, argv, {
        timeoutMs: this.opts.timeoutMs ?? DEFAULT_CRUN_TIMEOUT_MS,
        timeoutCode: CRUN_TIMEOUT,
        // `crun ps` lists every pid of a container; the rest is one line of state or an error.
        maxOutputBytes: MAX_OUTPUT_BYTES,
        ...(input === undefined ? {} : { input }),
      });
      return { code: r.code ?? 128 + (r.signal ? os.constants.signals[r.signal] : 0), stdout: r.stdout, stderr: r.stderr.trim() };
    } catch (e) {
      if (isTimeout(e, CRUN_TIMEOUT)) throw new TtrpcError(Code.DeadlineExceeded, `crun ${args[0] ?? ''}: ${e.message}`);
      throw e;
    }
  }

  /** One command forked by the keeper; its output read back from files, bounded. */
  private async runByKeeper(k: Keeper, dir: string, args: string[], o: OneShotOptions): Promise<RunResult> {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const base = path.join(dir, `crun-${++this.outputs}`);
    const [outFile, errFile] = [`${base}.out`, `${base}.err`];
    try {
      const { pid, ended } = await k.exec(outFile, errFile, [...this.oneShotPrefix(args, o), '--', ...this.argv(args)]);
      let reaped = false;
      const end = await withTimeout(
        ended.finally(() => (reaped = true)),
        this.opts.timeoutMs ?? DEFAULT_CRUN_TIMEOUT_MS,
        {
          code: CRUN_TIMEOUT,
          what: `crun ${args[0] ?? ''}`,
          // Unreaped, the pid is still crun's; the keeper reaps it once killed.
          onTimeout: () => {
            if (!reaped) process.kill(pid, 'SIGKILL');
          },
        },
      ).catch(async (e: Error) => {
        if (!isTimeout(e, CRUN_TIMEOUT)) throw e;
        // Killed: answered once the keeper reaped it, as a spawned crun is answered after its exit.
        await settleWithin(ended, REAP_WAIT_MS);
        throw new TtrpcError(Code.DeadlineExceeded, `crun ${args[0] ?? ''}: ${e.message}`);
      });
      const ws = end.waitStatus;
      const sig = ws === undefined ? 0 : ws & 0x7f;
      // A keeper that died meanwhile took crun's status with it: not a success.
      const code = ws === undefined ? 255 : sig ? 128 + sig : (ws >> 8) & 0xff;
      const stderr = readBounded(errFile).trim();
      return { code, stdout: readBounded(outFile), stderr: ws === undefined && !stderr ? 'the keeper died before crun ended' : stderr };
    } finally {
      fs.rmSync(outFile, { force: true });
      fs.rmSync(errFile, { force: true });
    }
  }

  private async must(what: string, args: string[], input?: string, o: OneShotOptions = {}): Promise<RunResult> {
    const r = await this.run(args, input, o);
    if (r.code !== 0) throw crunError(what, r.stderr || `crun exited with status ${r.code}`);
    return r;
  }

  start(id: string, o: OneShotOptions = {}): Promise<RunResult> {
    return this.must(`start container ${id}`, ['start', id], undefined, o);
  }

  kill(id: string, signal: number, all = false): Promise<RunResult> {
    return this.must(`signal container ${id}`, ['kill', ...(all ? ['--all'] : []), id, String(signal)]);
  }

  delete(id: string, force = true, o: OneShotOptions = {}): Promise<RunResult> {
    return this.must(`delete container ${id}`, ['delete', ...(force ? ['--force'] : []), id], undefined, o);
  }

  pause(id: string): Promise<RunResult> {
    return this.must(`pause container ${id}`, ['pause', id]);
  }

  resume(id: string): Promise<RunResult> {
    return this.must(`resume container ${id}`, ['resume', id]);
  }

  /** Applies OCI LinuxResources JSON, handed to crun in `file`. */
  async update(id: string, resources: unknown, file: string): Promise<RunResult> {
    fs.writeFileSync(file, JSON.stringify(resources));
    try {
      return await this.must(`update container ${id}`, ['update', '--resources', file, id]);
    } finally {
      fs.rmSync(file, { force: true });
    }
  }

  async state(id: string): Promise<CrunState | undefined> {
    const r = await this.run(['state', id]);
    if (r.code !== 0) return undefined;
    return JSON.parse(r.stdout) as CrunState;
  }

  async ps(id: string): Promise<number[]> {
    const r = await this.must(`list processes of container ${id}`, ['ps', '--format', 'json', id]);
    return JSON.parse(r.stdout || '[]') as number[];
  }

  createArgs(id: string, bundle: string, pidFile: string, consoleSocket: string | undefined, logFile: string): string[] {
    return this.argv(
      ['create', '--bundle', bundle, '--pid-file', pidFile, ...(consoleSocket ? ['--console-socket', consoleSocket] : []), id],
      logFile,
    );
  }

  execArgs(id: string, processFile: string, pidFile: string, consoleSocket: string | undefined, logFile: string): string[] {
    return this.argv(
      [
        'exec',
        '--detach',
        '--pid-file',
        pidFile,
        '--process',
        processFile,
        ...(consoleSocket ? ['--tty', '--console-socket', consoleSocket] : []),
        id,
      ],
      logFile,
    );
  }
}

function readBounded(file: string): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return '';
  }
  try {
    const b = Buffer.alloc(Math.min(fs.fstatSync(fd).size, MAX_OUTPUT_BYTES));
    return b.subarray(0, b.length ? fs.readSync(fd, b, 0, b.length, 0) : 0).toString();
  } finally {
    fs.closeSync(fd);
  }
}

/** A crun failure as a ttrpc error; "does not exist" becomes NotFound. */
export function crunError(what: string, message: string): TtrpcError {
  const m = message.replace(/\s+$/, '');
  if (/does not exist|No such file or directory: (?:container|state)/i.test(m)) return notFound(`${what}: ${m}`);
  if (/already exists/i.test(m)) return new TtrpcError(Code.AlreadyExists, `${what}: ${m}`);
  return internal(`${what}: ${m}`);
}

/** The last error line of a crun --log-format=json log. */
export function lastLogError(text: string): string | undefined {
  let msg: string | undefined;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const j = JSON.parse(line) as { msg?: string; level?: string };
      if (j.msg && (j.level === 'error' || j.level === 'fatal' || !msg)) msg = j.msg;
    } catch {
      msg = line.trim();
    }
  }
  return msg;
}
