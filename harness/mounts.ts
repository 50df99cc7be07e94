// Mounts under a directory (from /proc/self/mountinfo) and their removal, deepest first.
import { mountsUnder } from '../shim/mounts.js';
import { run } from './exec.js';

export { mountsUnder };

/** Unmounts everything at or below dir (lazily when a plain umount fails). Returns what it unmounted. */
export async function unmountUnder(dir: string): Promise<string[]> {
  const done: string[] = [];
  // A mount can be stacked several times on one point: repeat until nothing is left (bounded).
  for (let round = 0; round < 5; round++) {
    const points = mountsUnder(dir);
    if (!points.length) break;
    for (const mp of points) {
      const r = await run('umount', [mp], { timeoutMs: 20_000 });
      if (r.code !== 0) await run('umount', ['-l', mp], { timeoutMs: 20_000 });
      done.push(mp);
    }
  }
  return done;
}
