// Finding (and on a development machine, building) katats-runner, the agent's native helper
// (agent/native/katats-runner.c): a static binary built with the machine's gcc. In the guest
// it sits next to the agent bundle; the guest image builder copies agent/dist/katats-runner.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const RUNNER_NAME = 'katats-runner';

function moduleDir(): string | undefined {
  try {
    // import.meta is empty in the CommonJS bundle, where process.argv[1] tells instead.
    const url = (import.meta as { url?: string }).url;
    return url ? path.dirname(fileURLToPath(url)) : undefined;
  } catch {
    return undefined;
  }
}

/** agent/native/katats-runner.c in a source checkout, if this is one. */
export function runnerSource(): string | undefined {
  const here = moduleDir();
  const candidates = [
    here && path.join(here, '..', 'native', `${RUNNER_NAME}.c`),
    here && path.join(here, 'native', `${RUNNER_NAME}.c`),
  ].filter((x): x is string => !!x);
  return candidates.find((c) => fs.existsSync(c));
}

/** Compiles the helper statically into `out`. */
export function buildRunner(src: string, out: string): void {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  execFileSync('gcc', ['-O2', '-Wall', '-static', '-s', '-o', tmp, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.renameSync(tmp, out);
}

/**
 * The helper's path: an explicit one (flag or KATATS_RUNNER), one next to the running script
 * (the guest bundle's layout), or one built from source into .cache/ keyed by the source hash.
 */
export function findRunner(explicit?: string): string {
  const env = explicit ?? process.env.KATATS_RUNNER;
  if (env) {
    if (!fs.existsSync(env)) throw new Error(`katats-runner not found at ${env}`);
    return env;
  }
  const script = process.argv[1];
  // Beside the script only for the bundle: from source, the source decides.
  if (script && !moduleDir()) {
    const beside = path.join(path.dirname(path.resolve(script)), RUNNER_NAME);
    if (fs.existsSync(beside)) return beside;
  }
  const src = runnerSource();
  if (!src) throw new Error(`${RUNNER_NAME} not found next to ${script ?? 'the agent'} (set KATATS_RUNNER or --runner)`);
  const hash = createHash('sha256').update(fs.readFileSync(src)).digest('hex').slice(0, 12);
  const repo = path.resolve(path.dirname(src), '..', '..');
  const out = path.join(repo, '.cache', 'agent', `${RUNNER_NAME}-${hash}`);
  if (!fs.existsSync(out)) buildRunner(src, out);
  return out;
}
