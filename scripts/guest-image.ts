// Builds the complete guest image: the agent bundle and its native helper (agent/build.ts), then
// the measured image around them (guest/). Prints the manifest path; `--link DIR` points
// DIR/manifest.json and its files at the result, e.g. /usr/share/katats/guest, the shim's default.
//   tsx scripts/guest-image.ts [--link DIR] [--json]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildAgent } from '../agent/build.js';
import { buildGuestImage, type GuestImage } from '../guest/build.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export async function buildFullGuestImage(
  onProgress: (m: string) => void = (m) => process.stderr.write(`guest: ${m}\n`),
  opts: { force?: boolean } = {},
): Promise<GuestImage> {
  onProgress('bundling the agent');
  const { bundle, runner } = await buildAgent(path.join(root, 'agent', 'dist'));
  return buildGuestImage({
    agentBundle: bundle,
    extraFiles: [{ guestPath: '/agent/katats-runner', hostPath: runner, mode: 0o755 }],
    onProgress,
    ...(opts.force ? { force: true } : {}),
  });
}

/** Makes DIR hold manifest.json and the three files it names (as symlinks into the cache). */
export function linkImage(img: GuestImage, dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of [img.manifest.kernel.file, img.manifest.initrd.file, img.manifest.rootfs.file, 'manifest.json']) {
    const dst = path.join(dir, f);
    fs.rmSync(dst, { force: true });
    fs.symlinkSync(path.join(img.dir, f), dst);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { link: { type: 'string' }, json: { type: 'boolean', default: false } } });
  const img = await buildFullGuestImage();
  if (values.link) linkImage(img, values.link);
  console.log(values.json ? JSON.stringify({ manifest: img.manifestPath, measurement: img.manifest.measurement }) : img.manifestPath);
}
