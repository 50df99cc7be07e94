// Running a system tool (mount, umount, crun, mkfs, ...) with a time limit: past it the child is
// SIGKILLed and the caller gets a TimeoutError naming the wait. Output is kept up to a bound, so
// a tool that floods cannot grow our memory.
import { spawn } from 'node:child_process';
import { TimeoutError } from './timeout.js';

export interface ToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ToolOptions {
  timeoutMs: number;
  /** TimeoutError code when the limit passes, e.g. KATATS_MOUNT_TIMEOUT. */
  timeoutCode: string;
  /** Bytes kept of each of stdout and stderr (the rest is counted, not kept). Default 64 KiB. */
  maxOutputBytes?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export class ToolError extends Error {
  override readonly name = 'ToolError';
  constructor(
    readonly command: string,
    readonly result: ToolResult,
  ) {
    const why = result.signal ? `killed by ${result.signal}` : `exit ${result.code}`;
    super(`${command}: ${(result.stderr || result.stdout).trim() || why}`);
  }
}

function line(cmd: string, args: string[]): string {
  return [cmd, ...args].join(' ');
}

/** Runs cmd to its end; resolves with its result whatever the exit status (see runToolOk). */
export function runTool(cmd: string, args: string[], o: ToolOptions): Promise<ToolResult> {
  const max = o.maxOutputBytes ?? 64 * 1024;
  return new Promise<ToolResult>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: o.env, cwd: o.cwd });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    child.stdout!.on('data', (b: Buffer) => {
      if (outBytes < max) out.push(b.subarray(0, max - outBytes));
      outBytes += b.length;
    });
    child.stderr!.on('data', (b: Buffer) => {
      if (errBytes < max) err.push(b.subarray(0, max - errBytes));
      errBytes += b.length;
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, o.timeoutMs);
    timer.unref();
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${line(cmd, args)}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new TimeoutError(o.timeoutCode, line(cmd, args), o.timeoutMs));
      else resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    if (o.input !== undefined) {
      // A tool may exit before reading all of its input; its exit status says whether it worked.
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(o.input);
    }
  });
}

/** Runs cmd; rejects with a ToolError (its stderr as the message) unless it exits 0. */
export async function runToolOk(cmd: string, args: string[], o: ToolOptions): Promise<ToolResult> {
  const r = await runTool(cmd, args, o);
  if (r.code !== 0) throw new ToolError(line(cmd, args), r);
  return r;
}
