// Small helpers for running host tools from the image builder. Their output can be large and
// binary (a decompressed kernel), so it is kept whole; each run has a time limit all the same.
import { spawn } from 'node:child_process';
import { withTimeout } from '../sys/timeout.js';

/** apt may wait up to 10 minutes for dpkg's lock (DPkg::Lock::Timeout=600); nothing else is near. */
const DEFAULT_TOOL_TIMEOUT_MS = 20 * 60_000;

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: Buffer | string;
  /** Allow these exit codes besides 0. */
  okCodes?: number[];
  /** Past this the tool is SIGKILLed and the run fails with KATATS_BUILD_TOOL_TIMEOUT. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a command without a shell; rejects with its stderr on a non-zero exit. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  let kill = () => {};
  const ran = new Promise<RunResult>((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.on('close', (code, signal) => {
      const res: RunResult = { code: code ?? -1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() };
      if (code === 0 || (code !== null && opts.okCodes?.includes(code))) resolve(res);
      else {
        const why = signal ? `signal ${signal}` : `exit ${code}`;
        reject(new Error(`${cmd} ${args.join(' ')}: ${why}: ${res.stderr.trim().slice(-2000)}`));
      }
    });
    // A tool that exits without reading its input closes the pipe: EPIPE here is not a failure of
    // ours, and the exit status (seen in 'close') says whether the tool succeeded.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
    kill = () => child.kill('SIGKILL');
  });
  return withTimeout(ran, opts.timeoutMs ?? DEFAULT_TOOL_TIMEOUT_MS, { code: 'KATATS_BUILD_TOOL_TIMEOUT', what: `${cmd} ${args.join(' ')}`, onTimeout: kill });
}

export async function runText(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  return (await run(cmd, args, opts)).stdout.toString();
}
