// Mounts under a directory (from /proc/self/mountinfo) and their removal, deepest first.
import fs from 'node:fs';
import path from 'node:path';
import { run } from './exec.js';

/** Mount points at or below dir, deepest first. */
export function mountsUnder(dir: string): string[] {
  const root = path.resolve(dir);
  const points: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const mp = field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp === root || mp.startsWith(root + '/')) points.push(mp);
  }
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

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
