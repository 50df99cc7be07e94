// katats: the operator's command line.
//   katats doctor  [--config FILE] [--address SOCK]   what works on this host and what is missing
//   katats env     [--config FILE]                    the effective configuration, as TOML sections
//   katats install [--prefix DIR] [--containerd-config FILE] [--drop-in-dir DIR]
//                  [--katats-config FILE] [--bin-dir DIR]      wire katats into containerd
//   katats demo [--tamper]                            runc, gVisor and katats side by side (the
//                                                     demo of the checkout this binary was built from);
//                                                     --tamper: a flipped byte in a layer file refused
//   katats policy eval|test|gen|explain ...           the Rego engine (opa eval / opa test), policy generation, denial replay
//                                                     (policy/cli.ts has the flags)
//   katats verity format DATA [HASH] [--salt HEX] [--hash-offset N]
//                                                     a dm-verity tree (format 1, sha256, 4096) as
//                                                     veritysetup --no-superblock prints it
//   katats layer build LAYER.tar[.gz|.zst] OUT [--salt HEX]
//                                                     a layer file (EROFS + verity tree); its root hash
//   katats factory init|status [--json]|destroy [--config FILE]
//                                                     the VM template ([factory] enable_template)
//   katats monitor [--listen HOST:PORT] [--config FILE]
//                                                     Prometheus metrics of this node's pods (as kata-monitor)
//   katats snapshotter serve [--root DIR] [--address SOCK] [--containerd SOCK] [--log FILE]
//                                                     the tardev snapshotter (containerd proxy plugin)
//   katats snp serve|report ...                       the node's emulated SEV-SNP firmware (attestation/cli.ts)
//   katats attest verify REPORT [--chain DIR] [--trusted-ark FILE]
//                                                     decode and check an SNP attestation report
//   katats kbs serve ...                              the key broker service (attestation/kbs/cli.ts)
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as toToml } from 'smol-toml';
import { policyCommand } from '../../policy/cli.js';
import { loadConfig } from '../config.js';
import { doctor } from './doctor.js';
import { factoryCommand } from './factory.js';
import { monitorCommand } from './monitor.js';
import { install } from './install.js';
import { layerCommand, verityCommand } from './layer.js';
import { snapshotterCommand } from '../../snapshotter/main.js';
import { attestCommand, snpCommand } from '../../attestation/cli.js';
import { kbsCommand } from '../../attestation/kbs/cli.js';

function flag(args: string[], name: string, def: string): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

const USAGE = [
  'usage: katats doctor [--config FILE] [--address SOCK]',
  '       katats env [--config FILE]',
  '       katats install [--prefix DIR] [--containerd-config FILE] [--drop-in-dir DIR] [--katats-config FILE] [--bin-dir DIR]',
  '       katats demo [--tamper]',
  '       katats policy eval|test|gen|explain ...',
  '       katats verity format DATA [HASH] [--salt HEX] [--hash-offset BYTES]',
  '       katats layer build LAYER.tar[.gz|.zst] OUT [--salt HEX]',
  '       katats factory init|status [--json]|destroy [--config FILE]',
  '       katats monitor [--listen HOST:PORT] [--config FILE]',
  '       katats snapshotter serve [--root DIR] [--address SOCK] [--containerd SOCK] [--log FILE] [--log-level LEVEL]',
  '       katats snp serve [--state-dir DIR] [--run-dir DIR] [--socket SOCK] [--log FILE]',
  '       katats snp report --port SOCK [--data HEX] [--out FILE] [--chain-out DIR]',
  '       katats attest verify REPORT [--chain DIR] [--trusted-ark FILE]',
  '       katats kbs serve --trusted-ark FILE --admin-key FILE --resources DIR [--listen HOST:PORT] [--policy FILE] [--session-timeout S] [--log FILE]',
  '       katats kbs admin-token --key FILE [--ttl SECONDS]',
].join('\n');

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  // The policy engine and the layer tools need no host configuration.
  if (cmd === 'policy') return policyCommand(args);
  if (cmd === 'verity') return verityCommand(args, USAGE);
  if (cmd === 'layer') return layerCommand(args, USAGE);
  if (cmd === 'snapshotter') return snapshotterCommand(args, USAGE);
  if (cmd === 'snp') return snpCommand(args, USAGE);
  if (cmd === 'attest') return attestCommand(args, USAGE);
  if (cmd === 'kbs') return kbsCommand(args, USAGE);
  const cfg = loadConfig(flag(args, '--config', '') || undefined);
  switch (cmd) {
    case 'doctor': {
      const checks = await doctor(cfg, { containerdSocket: flag(args, '--address', '/run/containerd/containerd.sock') });
      for (const c of checks) {
        console.log(`${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}${!c.ok && c.fix ? `\n     fix: ${c.fix}` : ''}`);
      }
      return checks.every((c) => c.ok) ? 0 : 1;
    }
    case 'env': {
      const { source, ...rest } = cfg;
      console.log(`# configuration from ${source}\n${toToml(rest)}`);
      return 0;
    }
    case 'install': {
      const here = path.dirname(fileURLToPath(import.meta.url));
      install(
        {
          binDir: flag(args, '--bin-dir', path.basename(here) === 'cli' ? path.resolve(here, '../../dist/bin') : path.join(here, 'bin')),
          pathDir: flag(args, '--prefix', '/usr/local/bin'),
          containerdConfig: flag(args, '--containerd-config', '/etc/containerd/config.toml'),
          dropInDir: flag(args, '--drop-in-dir', '/etc/containerd/conf.d'),
          katatsConfig: flag(args, '--katats-config', '/etc/katats/configuration.toml'),
        },
        (s) => console.log(s),
      );
      return 0;
    }
    case 'factory':
      return factoryCommand(cfg, args, USAGE);
    case 'monitor':
      return monitorCommand(cfg, args, USAGE);
    case 'demo': {
      // The demo needs the checkout's harness, image builders and npm packages: it runs there.
      const here = path.dirname(fileURLToPath(import.meta.url));
      const root = [path.resolve(here, '..'), path.resolve(here, '../..')].find((d) => fs.existsSync(path.join(d, 'scripts', 'demo.sh')));
      if (!root) {
        console.error(`katats demo runs the demo of the katats checkout this binary was built from; none found next to ${here} (run \`npm run demo\` in a katats checkout)`);
        return 1;
      }
      return spawnSync('bash', [path.join(root, 'scripts', 'demo.sh'), ...args.filter((a) => a === '--tamper')], { stdio: 'inherit' }).status ?? 1;
    }
    default:
      console.error(USAGE);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`katats: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
