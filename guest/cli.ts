// tsx guest/cli.ts build --agent FILE [--cache DIR] [--force] [--rootfs erofs|ext4]
//                       [--initrd-compression gzip|lz4|zstd|none] [--json]
import { parseArgs } from 'node:util';
import { buildGuestImage } from './build.js';
import type { InitrdCompression } from './initrd.js';
import type { RootfsType } from './rootfs.js';

const usage = `usage: tsx guest/cli.ts build --agent FILE [--cache DIR] [--force] [--rootfs erofs|ext4]
                          [--initrd-compression gzip|lz4|zstd|none] [--json]`;

async function main(): Promise<number> {
  const [cmd, ...rest] = process.argv.slice(2);
  if (cmd !== 'build') {
    console.error(usage);
    return 2;
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      agent: { type: 'string' },
      cache: { type: 'string' },
      force: { type: 'boolean', default: false },
      rootfs: { type: 'string', default: 'erofs' },
      'initrd-compression': { type: 'string', default: 'gzip' },
      json: { type: 'boolean', default: false },
    },
  });
  if (!values.agent) {
    console.error(usage);
    return 2;
  }
  const img = await buildGuestImage({
    agentBundle: values.agent,
    cacheDir: values.cache,
    force: values.force,
    rootfsType: values.rootfs as RootfsType,
    initrdCompression: values['initrd-compression'] as InitrdCompression,
    onProgress: (m) => console.error(`guest: ${m}`),
  });
  if (values.json) {
    const summary = { kernel: img.kernel, initrd: img.initrd, rootfs: img.rootfs, manifest: img.manifestPath, measurement: img.manifest.measurement };
    console.log(JSON.stringify(summary, null, 2));
  } else {
    const m = img.manifest;
    console.log(`kernel  ${img.kernel}  ${m.kernel.size} B  ${m.kernel.sha256}`);
    console.log(`initrd  ${img.initrd}  ${m.initrd.size} B  ${m.initrd.sha256}`);
    console.log(`rootfs  ${img.rootfs}  ${m.rootfs.size} B  ${m.rootfs.sha256}`);
    console.log(`cmdline ${m.cmdline}`);
    console.log(`measurement ${m.measurement}${img.cached ? ' (cached)' : ''}`);
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`guest: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
