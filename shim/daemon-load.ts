// Loads the daemon's bundle (dist/shim-daemon.cjs, CommonJS: node 20 takes a V8 code cache only
// for a script) with the code cache the build made for it (shim-daemon.cjs.v8cache): V8 then skips
// compiling what the bundle's load runs. The cache is used only when it was made from these very
// bytes (its first 32 bytes are their sha256) and V8 accepts it (same node, same V8 flags);
// otherwise the bundle compiles as without one, at the cost of reading the file.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';

export const DAEMON_BUNDLE = 'shim-daemon.cjs';
const CACHE_SUFFIX = '.v8cache';

/** What became of the code cache: the daemon's 'shim serving' line says it. */
export type CodeCacheUse = 'used' | 'rejected by V8' | 'made from other bytes' | 'none';

function compile(file: string, source: string, cachedData?: Buffer): vm.Script {
  // The wrapper node gives a CommonJS module, so that the bundle sees the same five names.
  return new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, { filename: file, cachedData });
}

function run<T>(file: string, script: vm.Script): T {
  const module = { exports: {} as T };
  const fn = script.runInThisContext() as (e: unknown, r: NodeJS.Require, m: unknown, f: string, d: string) => void;
  fn(module.exports, createRequire(file), module, file, path.dirname(file));
  return module.exports;
}

function readCache(file: string): Buffer | undefined {
  try {
    return fs.readFileSync(file + CACHE_SUFFIX);
  } catch {
    return undefined;
  }
}

export function loadBundle<T>(file: string): { exports: T; codeCache: CodeCacheUse } {
  const bytes = fs.readFileSync(file);
  const cache = readCache(file);
  let cachedData: Buffer | undefined;
  let codeCache: CodeCacheUse = 'none';
  if (cache) {
    if (cache.length > 32 && cache.subarray(0, 32).equals(crypto.createHash('sha256').update(bytes).digest())) cachedData = cache.subarray(32);
    else codeCache = 'made from other bytes';
  }
  const script = compile(file, bytes.toString('utf8'), cachedData);
  if (cachedData) codeCache = script.cachedDataRejected ? 'rejected by V8' : 'used';
  return { exports: run<T>(file, script), codeCache };
}

/**
 * Loads the bundle at `file` (running its modules' top level, as the daemon's start does) and
 * writes the code cache of what that compiled beside it. The build runs this in a node of its own.
 */
export function writeCodeCache(file: string): void {
  const bytes = fs.readFileSync(file);
  const script = compile(file, bytes.toString('utf8'));
  run(file, script);
  const out = file + CACHE_SUFFIX;
  const tmp = `${out}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, Buffer.concat([crypto.createHash('sha256').update(bytes).digest(), script.createCachedData()]));
  fs.renameSync(tmp, out);
}
