// Bundles the host binaries into dist/: one ESM file per entry point, all dependencies inside, so
// a shim starts in tens of milliseconds without a TypeScript loader.
//   dist/shim.mjs + dist/bin/containerd-shim-katats-v2 (the name containerd looks up on PATH)
//   dist/katats.mjs + dist/bin/katats
//   dist/chv.mjs + dist/bin/katats-chv (the cloud-hypervisor-compatible VMM the shim spawns)
// and the native helper the shim runs for its host modes (sys/runner.ts), built ahead into .cache/
// so that no shim compiles it on a pod's first boot, and copied to dist/bin/katats-runner, where a
// bundle without a checkout around it looks.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { findRunner } from '../sys/runner.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');

const ENTRIES: { entry: string; out: string; bin: string }[] = [
  { entry: 'shim/main.ts', out: 'shim.mjs', bin: 'containerd-shim-katats-v2' },
  { entry: 'shim/cli/katats.ts', out: 'katats.mjs', bin: 'katats' },
  { entry: 'vmm/chv/cli.ts', out: 'chv.mjs', bin: 'katats-chv' },
];

export async function buildHostBinaries(log: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<{ binDir: string }> {
  fs.mkdirSync(path.join(dist, 'bin'), { recursive: true });
  for (const e of ENTRIES) {
    if (!fs.existsSync(path.join(root, e.entry))) continue;
    await build({
      entryPoints: [path.join(root, e.entry)],
      outfile: path.join(dist, e.out),
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'esm',
      sourcemap: 'linked',
      logLevel: 'warning',
      // Bundled CommonJS dependencies (pino) still call require(): give ESM one.
      banner: { js: "import { createRequire as __katatsCreateRequire } from 'node:module'; const require = __katatsCreateRequire(import.meta.url);" },
    });
    const wrapper = path.join(dist, 'bin', e.bin);
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${process.execPath} ${path.join(dist, e.out)} "$@"\n`, { mode: 0o755 });
    log(`build: ${path.relative(root, wrapper)} -> ${path.relative(root, path.join(dist, e.out))}`);
  }
  const runner = findRunner();
  const copy = path.join(dist, 'bin', 'katats-runner');
  fs.copyFileSync(runner, `${copy}.tmp`);
  fs.chmodSync(`${copy}.tmp`, 0o755);
  fs.renameSync(`${copy}.tmp`, copy);
  log(`build: ${path.relative(root, copy)} (native helper) <- ${path.relative(root, runner)}`);
  return { binDir: path.join(dist, 'bin') };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await buildHostBinaries();
}
