// Finding (on a development machine, building) katats-fds, the host's fd-passing helper
// (vmm/native/katats-fds.c): a static binary built with the machine's gcc into .cache/, keyed by
// the source's hash. A host helper of its own rather than a mode of the agent's katats-runner: that
// binary goes into the guest image (and its measurement), and host-only code has no place there.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const NAME = 'katats-fds';
const HERE = path.dirname(fileURLToPath(import.meta.url));

export function fdsHelperSource(): string | undefined {
  // vmm/native.ts in a checkout; dist/*.mjs (the bundle) next to the checkout's vmm/.
  return [path.join(HERE, 'native', `${NAME}.c`), path.join(HERE, '..', 'vmm', 'native', `${NAME}.c`)].find((c) => fs.existsSync(c));
}

let found: string | undefined;

/** The helper's path: KATATS_FDS, else one built from source into .cache/vmm/. */
export function findFdsHelper(): string {
  if (found) return found;
  const env = process.env.KATATS_FDS;
  if (env) {
    if (!fs.existsSync(env)) throw new Error(`${NAME} not found at ${env} (KATATS_FDS)`);
    return (found = env);
  }
  const src = fdsHelperSource();
  if (!src) throw new Error(`${NAME}.c not found (set KATATS_FDS to a built ${NAME})`);
  const hash = createHash('sha256').update(fs.readFileSync(src)).digest('hex').slice(0, 12);
  const out = path.join(path.dirname(src), '..', '..', '.cache', 'vmm', `${NAME}-${hash}`);
  if (!fs.existsSync(out)) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    execFileSync('gcc', ['-O2', '-Wall', '-static', '-s', '-o', tmp, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    fs.renameSync(tmp, out);
  }
  return (found = out);
}
