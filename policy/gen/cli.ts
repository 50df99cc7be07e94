// `katats policy gen`: the genpolicy equivalent on the command line.
//   katats policy gen [MANIFEST|-] --image-archive FILE... [--config-file FILE]... [--settings FILE]
//                     [--rules FILE] [--snapshotter NAME] [--layers-cache FILE | --no-layers-cache] [-w | --raw | --out-dir DIR]
//   katats policy gen --print-settings
// --snapshotter tardev (or the settings' cluster_config.snapshotter) pins each container's verified
// layers: every layer is built as the snapshotter builds it, for its root hash (cached by diff_id).
// Default output: the manifest with each pod template annotated (io.katacontainers.config.agent.policy,
// base64) on stdout; -w rewrites MANIFEST in place; --raw prints the policy text (one pod only);
// --out-dir writes <kind>-<name>.rego per pod. stderr names each pod with the sha256 of its policy
// (what the VM's launch data must carry) and how many layers were read and how many came from the cache.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ImageResolver, LayerCache, OciArchive } from './image.js';
import { annotatedManifest, generate } from './generate.js';
import { parseConfigSources, type ConfigSource } from './manifest.js';
import { DEFAULT_SETTINGS, loadSettings } from './settings.js';

export interface GenIO {
  out: (s: string) => void;
  err: (s: string) => void;
  /** stdin, when MANIFEST is - or missing. */
  readStdin?: () => string;
}

export const GEN_USAGE = `usage: katats policy gen [MANIFEST|-] --image-archive FILE... [--config-file FILE]... [--settings FILE] [--rules FILE]
                         [--snapshotter overlayfs|tardev] [--layers-cache FILE | --no-layers-cache] [-w | --raw | --out-dir DIR]
       katats policy gen --print-settings`;

export function defaultLayersCache(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'katats', 'policy-layers.json');
}

export async function genCommand(args: string[], io: GenIO): Promise<number> {
  let manifestFile: string | undefined;
  const archives: string[] = [];
  const configFiles: string[] = [];
  let settingsFile: string | undefined;
  let rulesFile: string | undefined;
  let snapshotter: string | undefined;
  let cacheFile: string | undefined = defaultLayersCache();
  let mode: 'annotate' | 'inplace' | 'raw' | 'dir' = 'annotate';
  let outDir: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
    try {
      if (a === '--image-archive' || a === '-i') archives.push(value());
      else if (a === '--config-file' || a === '-c') configFiles.push(value());
      else if (a === '--settings' || a === '-j') settingsFile = value();
      else if (a === '--rules' || a === '-p') rulesFile = value();
      else if (a === '--snapshotter') snapshotter = value();
      else if (a === '--layers-cache') cacheFile = value();
      else if (a === '--no-layers-cache') cacheFile = undefined;
      else if (a === '-w') mode = 'inplace';
      else if (a === '--raw') mode = 'raw';
      else if (a === '--out-dir') {
        mode = 'dir';
        outDir = value();
      } else if (a === '--print-settings') {
        io.out(JSON.stringify(DEFAULT_SETTINGS, null, 2));
        return 0;
      } else if (a.startsWith('-') && a !== '-') throw new UsageError(`unknown flag ${a}`);
      else if (manifestFile === undefined) manifestFile = a;
      else throw new UsageError('one manifest only');
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      io.err(`katats policy gen: ${e.message}\n${GEN_USAGE}`);
      return 2;
    }
  }
  if (mode === 'inplace' && (manifestFile === undefined || manifestFile === '-')) {
    io.err(`katats policy gen: -w needs a manifest file\n${GEN_USAGE}`);
    return 2;
  }
  try {
    const text = manifestFile === undefined || manifestFile === '-' ? (io.readStdin ?? (() => fs.readFileSync(0, 'utf8')))() : fs.readFileSync(manifestFile, 'utf8');
    const configs: ConfigSource[] = configFiles.flatMap((f) => parseConfigSources(fs.readFileSync(f, 'utf8'), f));
    const cache = new LayerCache(cacheFile);
    const images = new ImageResolver(archives.map((f) => new OciArchive(f)), cache);
    const t0 = performance.now();
    let settings = loadSettings(settingsFile);
    if (snapshotter !== undefined) settings = { ...settings, cluster_config: { ...settings.cluster_config, snapshotter } };
    const r = await generate(text, { images, settings, configs, ...(rulesFile ? { rules: fs.readFileSync(rulesFile, 'utf8') } : {}) }, manifestFile ?? 'stdin');
    cache.save();
    const ms = performance.now() - t0;
    if (r.pods.length === 0) {
      io.err('katats policy gen: the manifest has no pods');
      return 1;
    }
    for (const p of r.pods) io.err(`${p.origin}: policy sha256:${p.sha256} (${p.text.length} bytes)`);
    io.err(`layers: ${cache.misses.length} read, ${cache.built.length} built for their root hashes, the others from the cache; ${ms.toFixed(0)} ms`);
    if (mode === 'raw') {
      if (r.pods.length !== 1) {
        io.err(`katats policy gen: --raw prints one policy; the manifest has ${r.pods.length} pods (use --out-dir)`);
        return 2;
      }
      io.out(r.pods[0]!.text.replace(/\n$/, ''));
    } else if (mode === 'dir') {
      fs.mkdirSync(outDir!, { recursive: true });
      for (const p of r.pods) fs.writeFileSync(path.join(outDir!, `${p.origin.replace('/', '-').toLowerCase()}.rego`), p.text);
    } else {
      const out = annotatedManifest(r);
      if (mode === 'inplace') fs.writeFileSync(manifestFile!, out);
      else io.out(out.replace(/\n$/, ''));
    }
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    io.err(`katats policy gen: ${err.message}`);
    return 1;
  }
}

class UsageError extends Error {}
