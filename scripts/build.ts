// Bundles the host binaries into dist/: one ESM file per entry point, all dependencies inside, so
// a shim starts in tens of milliseconds without a TypeScript loader.
//   dist/shim.mjs + dist/bin/containerd-shim-katats-v2 (the name containerd looks up on PATH), and
//   beside it one bundle per action of the shim (shim-start.mjs, shim-delete.mjs, and the daemon's
//   shim-daemon.cjs with its V8 code cache shim-daemon.cjs.v8cache)
//   dist/katats.mjs + dist/bin/katats
//   dist/chv.mjs + dist/bin/katats-chv (the cloud-hypervisor-compatible VMM the shim spawns)
// and the native helper the shim runs for its host modes (sys/runner.ts), built ahead into .cache/
// so that no shim compiles it on a pod's first boot, and copied to dist/bin/katats-runner, where a
// bundle without a checkout around it looks.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Plugin } from 'esbuild';
import { findRunner } from '../sys/runner.js';
import { DAEMON_BUNDLE } from '../shim/daemon-load.js';
import { spawnSync } from 'node:child_process';

/**
 * The shim's actions, each a bundle of its own that shim.mjs imports from beside itself: node parses
 * all of a file it loads, and `start` (on every pod's start path) needs 40 KB of the daemon's 1 MB.
 * A bundle holds everything it uses, so a rebuild while a daemon runs never mixes two builds' chunks.
 */
const SHIM_ACTIONS: Record<string, string> = { './start.js': 'shim-start.mjs', './delete.js': 'shim-delete.mjs' };

/** shim/main.ts's imports of its actions become imports of their bundles. */
const shimActionsExternal: Plugin = {
  name: 'shim-actions',
  setup(b) {
    b.onResolve({ filter: /^\.\/(start|delete)\.js$/ }, (a) => (a.importer.endsWith(path.join('shim', 'main.ts')) ? { path: `./${SHIM_ACTIONS[a.path]!}`, external: true } : undefined));
  },
};

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');

const ENTRIES: { entry: string; out: string; bin?: string; format?: 'esm' | 'cjs' }[] = [
  { entry: 'shim/main.ts', out: 'shim.mjs', bin: 'containerd-shim-katats-v2' },
  ...Object.entries(SHIM_ACTIONS).map(([module, out]) => ({ entry: `shim/${module.replace(/\.js$/, '.ts')}`, out })),
  // CommonJS, with a V8 code cache made below (shim/daemon-load.ts).
  { entry: 'shim/daemon.ts', out: DAEMON_BUNDLE, format: 'cjs' },
  { entry: 'shim/cli/katats.ts', out: 'katats.mjs', bin: 'katats' },
  { entry: 'vmm/chv/cli.ts', out: 'chv.mjs', bin: 'katats-chv' },
];

/**
 * Replaces `file` with `data` by a rename, and only when it differs: test files build in parallel
 * while containerd execs the shim and suites run the CLI, and a file rewritten in place was once
 * read half-written (a snapshotter that died on start, its socket left refusing connections).
 */
function replaceFile(file: string, data: string | Uint8Array, mode = 0o644): boolean {
  const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  try {
    if (fs.readFileSync(file).equals(bytes) && (fs.statSync(file).mode & 0o777) === mode) return false;
  } catch {
    /* not there yet */
  }
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, bytes, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
  return true;
}

/**
 * The daemon bundle's code cache, made by this node (the one the wrappers run) in a process of its
 * own: V8 refuses a cache from another node or other V8 flags, and the daemon then compiles as
 * without one. A failure here costs the daemon that time only, so it is reported, not fatal.
 */
async function writeDaemonCodeCache(bundle: string): Promise<void> {
  const maker = await build({
    stdin: { contents: `import { writeCodeCache } from './shim/daemon-load.ts';\nwriteCodeCache(process.argv[1]);\n`, resolveDir: root, loader: 'ts' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    write: false,
    logLevel: 'warning',
  });
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', maker.outputFiles[0]!.text, bundle], { encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) process.stderr.write(`build: no code cache for ${bundle} (${r.error?.message ?? r.stderr.trim().slice(-500)})\n`);
}

export async function buildHostBinaries(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<{ binDir: string }> {
  fs.mkdirSync(path.join(dist, 'bin'), { recursive: true });
  for (const e of ENTRIES) {
    if (!fs.existsSync(path.join(root, e.entry))) continue;
    const out = await build({
      entryPoints: [path.join(root, e.entry)],
      outfile: path.join(dist, e.out),
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: e.format ?? 'esm',
      sourcemap: 'linked',
      logLevel: 'warning',
      write: false,
      plugins: e.entry === 'shim/main.ts' ? [shimActionsExternal] : [],
      ...(e.format === 'cjs'
        ? // The modules that find files beside their bundle read import.meta.url, which CommonJS lacks.
          { define: { 'import.meta.url': '__katatsUrl' }, banner: { js: "const __katatsUrl = require('node:url').pathToFileURL(__filename).href;" } }
        : // Bundled CommonJS dependencies (pino) still call require(): give ESM one.
          { banner: { js: "import { createRequire as __katatsCreateRequire } from 'node:module'; const require = __katatsCreateRequire(import.meta.url);" } }),
    });
    let changed = false;
    for (const f of out.outputFiles) changed = replaceFile(f.path, f.contents) || changed;
    if (!e.bin) {
      if (e.out === DAEMON_BUNDLE && (changed || !fs.existsSync(path.join(dist, DAEMON_BUNDLE + '.v8cache')))) await writeDaemonCodeCache(path.join(dist, DAEMON_BUNDLE));
      log(`build: ${path.relative(root, path.join(dist, e.out))}${changed ? '' : ' (unchanged)'}`);
      continue;
    }
    const wrapper = path.join(dist, 'bin', e.bin);
    changed = replaceFile(wrapper, `#!/bin/sh\nexec ${process.execPath} ${path.join(dist, e.out)} "$@"\n`, 0o755) || changed;
    log(`build: ${path.relative(root, wrapper)} -> ${path.relative(root, path.join(dist, e.out))}${changed ? '' : ' (unchanged)'}`);
  }
  const runner = findRunner();
  const copy = path.join(dist, 'bin', 'katats-runner');
  replaceFile(copy, fs.readFileSync(runner), 0o755);
  log(`build: ${path.relative(root, copy)} (native helper) <- ${path.relative(root, runner)}`);
  return { binDir: path.join(dist, 'bin') };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await buildHostBinaries();
}
