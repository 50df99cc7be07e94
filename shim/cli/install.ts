// `katats install`: wires katats into an existing containerd. Puts the shim on PATH (which is all
// `ctr run --runtime io.containerd.katats.v2` needs), adds a CRI runtime handler `katats` to
// containerd's configuration, writes a katats configuration where there is none, and prints the
// Kubernetes RuntimeClass to apply.
//
// Where the handler goes depends on what containerd does with imports. containerd 1.x replaces a
// plugin's whole section with an imported file's (containerd/containerd#5837; 2.0 merges them,
// #9982): a drop-in that names the CRI plugin would wipe the CRI settings of a main config that
// has any (sandbox image, runc's SystemdCgroup, registries). So the handler goes into a drop-in
// (`<drop-in dir>/katats.toml`, imported by the main config) unless the main config is version 2
// and configures the CRI plugin itself; then it is appended to the main config.
import fs from 'node:fs';
import path from 'node:path';
import { stringify as toToml, parse as parseToml } from 'smol-toml';
import { DEFAULTS, parseConfig } from '../config.js';
import { podOverhead, type PodOverhead } from '../pod-overhead.js';
import { snapshotterInstructions } from './snapshotter-install.js';

export interface InstallOptions {
  /** Where the built wrappers live (dist/bin). */
  binDir: string;
  /** Directory on containerd's PATH to link the shim into. */
  pathDir: string;
  containerdConfig: string;
  dropInDir: string;
  katatsConfig: string;
}

export const RUNTIME_TYPE = 'io.containerd.katats.v2';
export const HANDLER = 'katats';
/** The CRI plugin's runtime table: in version 2 configs (containerd 1.x), and in version 3 (2.x). */
const CRI_PLUGIN = { 2: 'io.containerd.grpc.v1.cri', 3: 'io.containerd.cri.v1.runtime' } as const;
const MARK = 'katats install';

type Doc = Record<string, unknown>;

/** The RuntimeClass, its overhead from the measured footprint of this configuration's pods (shim/pod-overhead.ts). */
export function runtimeClassYaml(overhead: PodOverhead): string {
  return [
    'apiVersion: node.k8s.io/v1',
    'kind: RuntimeClass',
    'metadata:',
    `  name: ${HANDLER}`,
    `handler: ${HANDLER}`,
    'overhead:',
    '  podFixed:',
    `    # ${overhead.why}`,
    `    memory: "${overhead.memoryMi}Mi"`,
    `    cpu: "${overhead.cpu}"`,
    '',
  ].join('\n');
}

/** The CRI runtime tables for handler `katats` (without `version`). */
function runtimeTables(katatsConfig: string, version: 2 | 3): Doc {
  return {
    plugins: {
      [CRI_PLUGIN[version]]: {
        containerd: {
          runtimes: {
            [HANDLER]: {
              runtime_type: RUNTIME_TYPE,
              privileged_without_host_devices: true,
              pod_annotations: ['io.katacontainers.*'],
              options: { ConfigPath: katatsConfig },
            },
          },
        },
      },
    },
  };
}

/** The drop-in: a CRI runtime handler `katats` using our shim, with its config path as option. */
export function dropIn(katatsConfig: string, version: 2 | 3 = 2): string {
  return `# Written by ${MARK}: the katats runtime for containerd's CRI plugin.\n${toToml({ version, ...runtimeTables(katatsConfig, version) })}\n`;
}

function get(doc: unknown, ...keys: string[]): unknown {
  let v = doc;
  for (const k of keys) v = v !== null && typeof v === 'object' ? (v as Doc)[k] : undefined;
  return v;
}

function parseFile(file: string): Doc {
  try {
    return parseToml(fs.readFileSync(file, 'utf8')) as Doc;
  } catch (e) {
    throw new Error(`${file}: not valid TOML (${(e as Error).message}); fix it, then run katats install again`);
  }
}

function backup(file: string): string {
  const b = `${file}.katats-backup`;
  // The first backup is the operator's own file: a second run must not overwrite it with ours.
  if (!fs.existsSync(b)) fs.copyFileSync(file, b);
  return b;
}

/**
 * Makes containerd's main config import `pattern`. A file without `imports` gets one line at its
 * top (top-level keys precede every table), so the operator's comments and formatting stay; a
 * file with other imports is rewritten.
 */
function addImport(configFile: string, doc: Doc, pattern: string, dropInPath: string, say: (s: string) => void): void {
  const imports = doc['imports'] ?? [];
  if (!Array.isArray(imports) || !imports.every((i) => typeof i === 'string')) throw new Error(`${configFile}: imports must be an array of strings`);
  if (imports.includes(pattern) || imports.includes(dropInPath)) {
    say(`${configFile} already imports ${pattern}`);
    return;
  }
  const text = fs.readFileSync(configFile, 'utf8');
  const next = doc['imports'] === undefined ? `imports = ${JSON.stringify([pattern])} # added by ${MARK}\n${text}` : toToml({ ...doc, imports: [...imports, pattern] }) + '\n';
  if (!(get(parseToml(next), 'imports') as string[]).includes(pattern)) throw new Error(`${configFile}: adding the import failed`);
  const b = backup(configFile);
  fs.writeFileSync(configFile, next);
  say(`added ${pattern} to imports in ${configFile} (backup: ${b})`);
}

/** Appends the runtime tables to a version 2 main config that configures the CRI plugin itself. */
function addToMain(configFile: string, doc: Doc, katatsConfig: string, say: (s: string) => void): void {
  if (get(doc, 'plugins', CRI_PLUGIN[2], 'containerd', 'runtimes', HANDLER) !== undefined) {
    say(`${configFile} already has a CRI runtime "${HANDLER}"; left as it is`);
    return;
  }
  const text = fs.readFileSync(configFile, 'utf8');
  const section =
    `\n# Added by ${MARK}: the katats runtime for containerd's CRI plugin. It lives here, not in a\n` +
    `# drop-in, because containerd 1.x lets an imported CRI section replace this file's whole one.\n` +
    toToml(runtimeTables(katatsConfig, 2));
  const next = `${text}${text.endsWith('\n') ? '' : '\n'}${section}\n`;
  let parsed: Doc;
  try {
    parsed = parseToml(next) as Doc;
  } catch (e) {
    throw new Error(`${configFile}: the katats runtime table cannot be appended (${(e as Error).message}); add it by hand:\n${section}`);
  }
  if (get(parsed, 'plugins', CRI_PLUGIN[2], 'containerd', 'runtimes', HANDLER, 'runtime_type') !== RUNTIME_TYPE) throw new Error(`${configFile}: appending the katats runtime failed`);
  const b = backup(configFile);
  fs.writeFileSync(configFile, next);
  say(`added the CRI runtime "${HANDLER}" to ${configFile}, which configures the CRI plugin itself (backup: ${b})`);
}

export function install(o: InstallOptions, say: (s: string) => void): void {
  const shim = path.resolve(o.binDir, 'containerd-shim-katats-v2');
  if (!fs.existsSync(shim)) throw new Error(`${shim} is missing: run \`npx tsx scripts/build.ts\` first`);
  const dropInPath = path.join(o.dropInDir, 'katats.toml');
  const pattern = path.join(o.dropInDir, '*.toml');

  // Everything that can refuse is decided before anything is written.
  const main = fs.existsSync(o.containerdConfig) ? parseFile(o.containerdConfig) : undefined;
  const version = main ? (main['version'] ?? 1) : 2;
  if (version !== 2 && version !== 3) {
    throw new Error(`${o.containerdConfig} is a version ${String(version)} config; katats install handles versions 2 and 3: run \`containerd config migrate\` first`);
  }
  const intoMain = main !== undefined && version === 2 && get(main, 'plugins', CRI_PLUGIN[2]) !== undefined;
  // The pods' overhead depends on their configuration (the factory on or off): an existing one that
  // does not parse is refused here, before anything is written; a missing one gets the defaults.
  const overhead = podOverhead(fs.existsSync(o.katatsConfig) ? parseConfig(fs.readFileSync(o.katatsConfig, 'utf8'), o.katatsConfig) : DEFAULTS);

  fs.mkdirSync(o.pathDir, { recursive: true });
  for (const name of ['containerd-shim-katats-v2', 'katats']) {
    const src = path.resolve(o.binDir, name);
    if (!fs.existsSync(src)) continue;
    const dst = path.join(o.pathDir, name);
    fs.rmSync(dst, { force: true });
    fs.symlinkSync(src, dst);
    say(`linked ${dst} -> ${src}`);
  }

  if (intoMain) {
    addToMain(o.containerdConfig, main, o.katatsConfig, say);
    // A drop-in of an earlier install would now replace the section that holds the runtime.
    if (fs.existsSync(dropInPath) && fs.readFileSync(dropInPath, 'utf8').includes(`Written by ${MARK}`)) {
      fs.rmSync(dropInPath);
      say(`removed ${dropInPath} (an earlier install's drop-in)`);
    }
  } else {
    fs.mkdirSync(o.dropInDir, { recursive: true });
    fs.writeFileSync(dropInPath, dropIn(o.katatsConfig, version));
    say(`wrote ${dropInPath}`);
    if (main) {
      addImport(o.containerdConfig, main, pattern, dropInPath, say);
    } else {
      fs.mkdirSync(path.dirname(o.containerdConfig), { recursive: true });
      fs.writeFileSync(o.containerdConfig, `# Written by ${MARK}.\nversion = 2\nimports = ${JSON.stringify([pattern])}\n`);
      say(`wrote ${o.containerdConfig} (version 2, importing ${pattern})`);
    }
    // containerd 1.x: the last import that names the CRI plugin wins over the others.
    if (version === 2) {
      for (const f of fs.readdirSync(o.dropInDir).filter((n) => n.endsWith('.toml') && n !== 'katats.toml')) {
        const other = path.join(o.dropInDir, f);
        let doc: Doc;
        try {
          doc = parseToml(fs.readFileSync(other, 'utf8')) as Doc;
        } catch {
          continue;
        }
        if (get(doc, 'plugins', CRI_PLUGIN[2]) !== undefined) say(`warning: ${other} configures the CRI plugin too; containerd 1.x keeps only the last imported CRI section`);
      }
    }
  }

  // CRI hands the shim this path, and a path that does not exist fails every pod.
  if (!fs.existsSync(o.katatsConfig)) {
    fs.mkdirSync(path.dirname(o.katatsConfig), { recursive: true });
    fs.writeFileSync(o.katatsConfig, `# katats configuration, written by ${MARK} with the defaults (README.md, Configuration).\n${toToml(DEFAULTS)}\n`);
    say(`wrote ${o.katatsConfig} (the defaults)`);
  }
  say('restart containerd to load the runtime; then `ctr run --runtime io.containerd.katats.v2 ...` works,');
  say('and Kubernetes pods can use it with this RuntimeClass:\n');
  say(runtimeClassYaml(overhead));
  say(snapshotterInstructions(path.join(o.pathDir, 'katats'), version, HANDLER));
}
