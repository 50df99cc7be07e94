// A cross-process lock on a file (O_EXCL create holding the owner's pid; a dead owner's lock is
// taken over). Serializes image builds sharing one cache: concurrent builders would otherwise
// race on downloads and on the node snapshot, which is made once per input.
import { open, readFile, rm, stat } from 'node:fs/promises';

/** A lock file still without an owner after this long belongs to a builder that died mid-take. */
const EMPTY_LOCK_STALE_MS = 10_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function withLock<T>(lockPath: string, fn: () => Promise<T>, onWait?: (owner: number) => void): Promise<T> {
  let told = false;
  for (;;) {
    try {
      const fh = await open(lockPath, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const owner = Number((await readFile(lockPath, 'utf8').catch(() => '')).trim());
      const emptyAndOld = !owner && Date.now() - ((await stat(lockPath).catch(() => undefined))?.mtimeMs ?? Date.now()) > EMPTY_LOCK_STALE_MS;
      if ((owner && !alive(owner)) || emptyAndOld) {
        await rm(lockPath, { force: true });
        continue;
      }
      if (!told && owner) {
        onWait?.(owner);
        told = true;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lockPath, { force: true });
  }
}
