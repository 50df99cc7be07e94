// `katats install`: wires katats into an existing containerd. Puts the shim on PATH, writes a
// containerd config drop-in with the runtime entry (ctr's --runtime name and a CRI handler), makes
// containerd's config import it, and prints the Kubernetes RuntimeClass to apply.
import fs from 'node:fs';
import path from 'node:path';
import { stringify as toToml, parse as parseToml } from 'smol-toml';

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

export function runtimeClassYaml(): string {
  return [
    'apiVersion: node.k8s.io/v1',
    'kind: RuntimeClass',
    'metadata:',
    `  name: ${HANDLER}`,
    `handler: ${HANDLER}`,
    'overhead:',
    '  podFixed:',
    '    memory: "160Mi"',
    '    cpu: "250m"',
    '',
  ].join('\n');
}

/** The drop-in: a CRI runtime handler `katats` using our shim, with its config path as option. */
export function dropIn(katatsConfig: string): string {
  const doc = {
    version: 2,
    plugins: {
      'io.containerd.grpc.v1.cri': {
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
  return `# Written by katats install: the katats runtime for containerd's CRI plugin.\n${toToml(doc)}\n`;
}

export function install(o: InstallOptions, say: (s: string) => void): void {
  const shim = path.join(o.binDir, 'containerd-shim-katats-v2');
  if (!fs.existsSync(shim)) throw new Error(`${shim} is missing: run \`npx tsx scripts/build.ts\` first`);
  fs.mkdirSync(o.pathDir, { recursive: true });
  for (const name of ['containerd-shim-katats-v2', 'katats']) {
    const src = path.join(o.binDir, name);
    if (!fs.existsSync(src)) continue;
    const dst = path.join(o.pathDir, name);
    fs.rmSync(dst, { force: true });
    fs.symlinkSync(src, dst);
    say(`linked ${dst} -> ${src}`);
  }
  fs.mkdirSync(o.dropInDir, { recursive: true });
  const dropInPath = path.join(o.dropInDir, 'katats.toml');
  fs.writeFileSync(dropInPath, dropIn(o.katatsConfig));
  say(`wrote ${dropInPath}`);

  // containerd reads drop-ins only through `imports` in its main config (version 2).
  let main: Record<string, unknown> = { version: 2 };
  if (fs.existsSync(o.containerdConfig)) main = parseToml(fs.readFileSync(o.containerdConfig, 'utf8')) as Record<string, unknown>;
  const imports = Array.isArray(main['imports']) ? (main['imports'] as string[]) : [];
  const pattern = path.join(o.dropInDir, '*.toml');
  if (!imports.includes(pattern) && !imports.includes(dropInPath)) {
    if (fs.existsSync(o.containerdConfig)) fs.copyFileSync(o.containerdConfig, `${o.containerdConfig}.katats-backup`);
    main['imports'] = [...imports, pattern];
    if (main['version'] === undefined) main['version'] = 2;
    fs.mkdirSync(path.dirname(o.containerdConfig), { recursive: true });
    fs.writeFileSync(o.containerdConfig, toToml(main) + '\n');
    say(`added ${pattern} to imports in ${o.containerdConfig} (backup: ${o.containerdConfig}.katats-backup)`);
  }
  say('restart containerd to load the runtime; then `ctr run --runtime io.containerd.katats.v2 ...` works,');
  say('and Kubernetes pods can use it with this RuntimeClass:\n');
  say(runtimeClassYaml());
}
