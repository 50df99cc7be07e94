// `start` checks for a pod's daemon and spawns one if there is none; two starts of one pod at once
// must not both spawn (two daemons would serve one pod, and the second would find the first's
// socket live). The check-and-spawn runs under an exclusive flock(2) on one file in the state
// dir. Node has no flock: util-linux's flock(1) takes it and holds it while its child waits on
// our pipe, so the kernel releases it when we finish or die, whatever way.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { TimeoutError, withTimeout } from '../sys/timeout.js';

/** How long a start waits for the lock (others hold it while their daemon comes up, up to 30 s each). */
export const START_LOCK_TIMEOUT_MS = 90_000;
export const START_LOCK_TIMEOUT = 'KATATS_START_LOCK_TIMEOUT';
/** How long flock(1) may take to go away once released. */
const RELEASE_TIMEOUT_MS = 5000;

export async function withStartLock<T>(lockFile: string, fn: () => Promise<T>, timeoutMs = START_LOCK_TIMEOUT_MS): Promise<T> {
  fs.closeSync(fs.openSync(lockFile, fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW, 0o600));
  const holder = spawn('flock', ['--exclusive', lockFile, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => {
    holder.once('exit', (code) => resolve(code));
    holder.once('error', () => resolve(null));
  });
  let stderr = '';
  holder.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
  const locked = new Promise<void>((resolve, reject) => {
    holder.stdout.setEncoding('utf8').once('data', () => resolve());
    exited.then((code) => reject(new Error(`flock ${lockFile} exited (${code ?? 'could not run util-linux flock'}) before locking: ${stderr.trim()}`)), reject);
  });
  try {
    await withTimeout(locked, timeoutMs, { code: START_LOCK_TIMEOUT, what: `waiting for the shim start lock ${lockFile}`, onTimeout: () => holder.kill('SIGKILL') });
  } catch (e) {
    holder.kill('SIGKILL');
    throw e;
  }
  try {
    return await fn();
  } finally {
    holder.stdin.end();
    await withTimeout(exited, RELEASE_TIMEOUT_MS, { code: START_LOCK_TIMEOUT, what: 'releasing the shim start lock', onTimeout: () => holder.kill('SIGKILL') }).catch((e: unknown) => {
      if (!(e instanceof TimeoutError)) throw e;
    });
  }
}
