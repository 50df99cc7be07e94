// Running a command to completion with a hard time limit: the one way the harness starts short-lived
// tools (ctr, apt-get, dpkg-deb, runsc --version).
import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit, in milliseconds. */
  ms: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  input?: string;
  /** SIGKILL after this many milliseconds (default 120 s); the result then has signal SIGKILL. */
  timeoutMs?: number;
}

/** Runs cmd to completion; rejects only when it cannot be spawned. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
    child.stdin.on('error', () => {}); // the child may exit before reading stdin
    child.stdin.end(opts.input ?? '');
  });
}

/** Like run(), but rejects with the command, exit status and stderr when it does not exit 0. */
export async function runOk(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    const why = r.signal ? `killed by ${r.signal}${r.signal === 'SIGKILL' ? ' (time limit?)' : ''}` : `exit ${r.code}`;
    throw new Error(`${cmd} ${args.join(' ')}: ${why}: ${(r.stderr || r.stdout).trim().slice(-2000)}`);
  }
  return r;
}

/** The path of `cmd` on PATH (or `cmd` itself when it is an executable absolute path), else undefined. */
export async function which(cmd: string, pathEnv = process.env.PATH ?? ''): Promise<string | undefined> {
  const candidates = isAbsolute(cmd) ? [cmd] : pathEnv.split(':').filter(Boolean).map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}
