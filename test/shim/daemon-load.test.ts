// The daemon bundle's code cache (shim/daemon-load.ts): used when made from the very bytes loaded,
// never when the bundle changed (V8's own check compares little more than the source's length),
// and a cache V8 refuses costs nothing but the compile. Each make and load runs in a node of its
// own, as the build and the daemon do: V8's in-memory cache would otherwise answer for the file.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';

const loader = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../shim/daemon-load.ts');

function inNode(code: string, bundle: string): string {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `import { loadBundle, writeCodeCache } from '${loader}';\n${code}`, bundle], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`node exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}
const make = (bundle: string) => inNode('writeCodeCache(process.argv[1]);', bundle);
const load = (bundle: string) => JSON.parse(inNode('const r = loadBundle(process.argv[1]); console.log(JSON.stringify({ codeCache: r.codeCache, ...r.exports, word: r.exports.word() }));', bundle)) as { codeCache: string; word: string; dir: string; file: string };

describe('daemon bundle code cache', () => {
  const t = tempDir('kt-v8c-');
  afterAll(() => t.cleanup());
  const bundle = path.join(t.dir, 'b.cjs');
  const source = (word: string) => `const os = require('node:os'); module.exports = { word: () => '${word}' + os.EOL.trim(), dir: __dirname, file: __filename };\n`;

  it('is used for the bytes it was made from, and the module loads as CommonJS', () => {
    fs.writeFileSync(bundle, source('alpha'));
    expect(load(bundle)).toMatchObject({ codeCache: 'none', word: 'alpha' });
    make(bundle);
    expect(load(bundle)).toEqual({ codeCache: 'used', word: 'alpha', dir: t.dir, file: bundle });
  });

  it('is not used for a bundle rebuilt to the same length: the new code runs', () => {
    fs.writeFileSync(bundle, source('gamma'));
    make(bundle);
    fs.writeFileSync(bundle, source('omega'));
    expect(load(bundle)).toMatchObject({ codeCache: 'made from other bytes', word: 'omega' });
  });

  it('refused by V8 (damaged), the bundle still loads', () => {
    fs.writeFileSync(bundle, source('delta'));
    make(bundle);
    const cache = fs.readFileSync(`${bundle}.v8cache`);
    cache.fill(0x5a, 40);
    fs.writeFileSync(`${bundle}.v8cache`, cache);
    expect(load(bundle)).toMatchObject({ codeCache: 'rejected by V8', word: 'delta' });
  });
});
