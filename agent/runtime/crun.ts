// crun as the agent's OCI runtime. One-shot commands (start, kill, delete, pause, resume,
// update, state, ps) run through `katats-runner exec`; create and exec run under a
// `katats-runner run` monitor (see ../process.ts), which this module only builds argv for.
import fs from 'node:fs';
import os from 'node:os';
import { internal, notFound, TtrpcError, Code } from '../errors.js';
import { runTool } from '../../sys/exec.js';
import { isTimeout } from '../../sys/timeout.js';

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
}

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

  async run(args: string[], input?: string): Promise<RunResult> {
    const argv = ['exec', ...this.runnerPrefix(), '--', ...this.argv(args)];
    try {
      // katats-runner exec execs crun, so the SIGKILL past the limit reaches crun itself.
      const r = await runTool(this.opts.runner, argv, {
        timeoutMs: this.opts.timeoutMs ?? DEFAULT_CRUN_TIMEOUT_MS,
        timeoutCode: CRUN_TIMEOUT,
        // `crun ps` lists every pid of a container; the rest is one line of state or an error.
        maxOutputBytes: 1 << 20,
        ...(input === undefined ? {} : { input }),
      });
      return { code: r.code ?? 128 + (r.signal ? os.constants.signals[r.signal] : 0), stdout: r.stdout, stderr: r.stderr.trim() };
    } catch (e) {
      if (isTimeout(e, CRUN_TIMEOUT)) throw new TtrpcError(Code.DeadlineExceeded, `crun ${args[0] ?? ''}: ${e.message}`);
      throw e;
    }
  }

  private async must(what: string, args: string[], input?: string): Promise<RunResult> {
    const r = await this.run(args, input);
    if (r.code !== 0) throw crunError(what, r.stderr || `crun exited with status ${r.code}`);
    return r;
  }

  start(id: string): Promise<RunResult> {
    return this.must(`start container ${id}`, ['start', id]);
  }

  kill(id: string, signal: number, all = false): Promise<RunResult> {
    return this.must(`signal container ${id}`, ['kill', ...(all ? ['--all'] : []), id, String(signal)]);
  }

  delete(id: string, force = true): Promise<RunResult> {
    return this.must(`delete container ${id}`, ['delete', ...(force ? ['--force'] : []), id]);
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
