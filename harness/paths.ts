// Where the harness keeps things: the repository root and its .cache (git-ignored).
import path from 'node:path';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..');
/** Caches that survive between runs (Debian packages, built images): `.cache/` at the repository root. */
export const CACHE_DIR = process.env.KATATS_CACHE_DIR ?? path.join(REPO_ROOT, '.cache');
