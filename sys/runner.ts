// Finding (and in a source checkout, building) katats-runner, the native helper
// (agent/native/katats-runner.c): a static binary built with the machine's gcc, one mode per job
// node cannot do. The agent runs it in the guest (next to its bundle); the shim runs its host
// modes (tap-exec) from dist/bin, where scripts/build.ts puts it.
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

/** agent/native/katats-runner.c in a source checkout, if this is one (from sys/, or from a host bundle in dist/). */
export function runnerSource(): string | undefined {
  const here = moduleDir();
  const c = here && path.join(here, '..', 'agent', 'native', `${RUNNER_NAME}.c`);
  return c && fs.existsSync(c) ? c : undefined;
}

/** Compiles the helper statically into `out`. */
export function buildRunner(src: string, out: string): void {
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  execFileSync('gcc', ['-O2', '-Wall', '-static', '-s', '-o', tmp, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.renameSync(tmp, out);
}

/** The sha256 prefix of the helper's source: names a build of it. */
export function runnerSourceHash(src: string): string {
  return createHash('sha256').update(fs.readFileSync(src)).digest('hex').slice(0, 12);
}

/**
 * The helper's path: an explicit one (flag or KATATS_RUNNER), one next to the running script
 * (the guest's CommonJS agent bundle), one built from the checkout's source into .cache/ keyed by
 * the source hash (scripts/build.ts builds it ahead for the host bundles), or one in bin/ beside
 * a host bundle without a checkout around it.
 */
export function findRunner(explicit?: string): string {
  const env = explicit ?? process.env.KATATS_RUNNER;
  if (env) {
    if (!fs.existsSync(env)) throw new Error(`katats-runner not found at ${env}`);
    return env;
  }
  const here = moduleDir();
  const script = process.argv[1];
  // Beside the script only for the CommonJS agent bundle: from source, the source decides.
  if (script && !here) {
    const beside = path.join(path.dirname(path.resolve(script)), RUNNER_NAME);
    if (fs.existsSync(beside)) return beside;
  }
  const src = runnerSource();
  if (src) {
    const repo = path.resolve(path.dirname(src), '..', '..');
    const out = path.join(repo, '.cache', 'agent', `${RUNNER_NAME}-${runnerSourceHash(src)}`);
    if (!fs.existsSync(out)) buildRunner(src, out);
    return out;
  }
  const bundled = here && path.join(here, 'bin', RUNNER_NAME);
  if (bundled && fs.existsSync(bundled)) return bundled;
  throw new Error(`${RUNNER_NAME} not found next to ${script ?? 'this program'} (set KATATS_RUNNER or --runner)`);
}
