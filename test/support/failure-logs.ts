// A suite that fails only under load leaves nothing to read once its instance dirs are gone. When a
// test of the file failed, the tails of the daemon logs it names go to stderr (and so into CI's
// output) before afterAll removes them.
import fs from 'node:fs';
import { afterEach, beforeAll } from 'vitest';
import type { RunnerTask } from 'vitest';

const TAIL_LINES = 60;
const TAIL_BYTES = 64 * 1024;
const MAX_LINE = 600;

export interface FailureLogs {
  readonly failed: boolean;
  /** Prints each named log's tail if a test of this file failed; a missing file is named as such. */
  print(logs: Record<string, string | undefined>): void;
}

/** Call at the top of a test file: it registers the afterEach that notices a failed test. */
export function logTailsOnFailure(): FailureLogs {
  let failedTest = false;
  // A failed beforeAll runs no test (so no afterEach sees it) but marks its suite: the file's
  // tasks are walked when asked.
  let file: RunnerTask | undefined;
  beforeAll(({}, suite) => {
    file = suite.file ?? suite;
  });
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail') failedTest = true;
  });
  const failed = () => failedTest || (file !== undefined && anyFailed(file));
  return {
    get failed() {
      return failed();
    },
    print(logs) {
      if (!failed()) return;
      for (const [name, file] of Object.entries(logs)) console.error(`--- ${name} (${file ?? 'no file'}), last ${TAIL_LINES} lines ---\n${tailOf(file)}`);
    },
  };
}

function anyFailed(t: RunnerTask): boolean {
  if (t.result?.state === 'fail') return true;
  return 'tasks' in t && t.tasks.some(anyFailed);
}

export function tailOf(file: string | undefined): string {
  if (!file) return '(not started)';
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    return `(cannot open: ${(e as Error).message})`;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    return buf
      .toString('utf8')
      .split('\n')
      .slice(-TAIL_LINES)
      .map((l) => (l.length > MAX_LINE ? `${l.slice(0, MAX_LINE)}…` : l))
      .join('\n');
  } finally {
    fs.closeSync(fd);
  }
}

/** The most recently written file of a log dir (the pod whose start failed, usually). */
export function latestLog(dir: string): string | undefined {
  let best: { file: string; mtime: number } | undefined;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return undefined;
  }
  for (const n of names) {
    const file = `${dir}/${n}`;
    const st = fs.statSync(file, { throwIfNoEntry: false });
    if (st?.isFile() && (!best || st.mtimeMs > best.mtime)) best = { file, mtime: st.mtimeMs };
  }
  return best?.file;
}
