import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A private temp dir removed by the returned cleanup (tests call it in afterAll/afterEach). */
export function tempDir(prefix = 'katats-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}
