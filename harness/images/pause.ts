// The pod sandbox image for CRI (containerd's `sandbox_image`): one layer holding /pause, a static
// binary built here from pause/pause.c with gcc, so that no registry is needed. Built as an OCI
// archive by oci.ts and cached by content (source, compiler, builder) under .cache/images/.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { runOk } from '../exec.js';
import { CACHE_DIR } from '../paths.js';
import { buildOciImage, type Descriptor } from './oci.js';
import { writeTar } from './tar.js';

/** Bump when the layout of the image changes: it is part of the cache key. */
const BUILDER_VERSION = 1;

export const PAUSE_SOURCE = path.join(import.meta.dirname, 'pause', 'pause.c');
export const PAUSE_IMAGE = 'katats.local/pause:latest';
/** The name to import the index under: it must differ from the manifest's (see BUSYBOX_INDEX). */
export const PAUSE_INDEX = 'katats.local/pause:index';

export interface PauseImage {
  archive: string;
  name: string;
  manifest: Descriptor;
  config: Descriptor;
  layer: Descriptor;
  /** sha256 of the /pause binary in the layer. */
  binarySha256: string;
}

/** Builds (or finds in the cache) the pause OCI archive. */
export async function pauseImage(opts: { name?: string; cacheDir?: string; onProgress?: (line: string) => void } = {}): Promise<PauseImage> {
  const name = opts.name ?? PAUSE_IMAGE;
  const source = fs.readFileSync(PAUSE_SOURCE);
  const gcc = (await runOk('gcc', ['--version'], { timeoutMs: 20_000 })).stdout.split('\n')[0] ?? '';
  const key = createHash('sha256').update(JSON.stringify({ v: BUILDER_VERSION, name, gcc })).update(source).digest('hex').slice(0, 24);
  const dir = opts.cacheDir ?? path.join(CACHE_DIR, 'images');
  const archive = path.join(dir, `pause-${key}.oci.tar`);
  const metaFile = path.join(dir, `pause-${key}.json`);
  if (fs.existsSync(archive) && fs.existsSync(metaFile)) return JSON.parse(fs.readFileSync(metaFile, 'utf8')) as PauseImage;
  opts.onProgress?.(`images: building ${name} from ${path.basename(PAUSE_SOURCE)} with ${gcc}`);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `.tmp-${process.pid}`;
  const binary = path.join(dir, `pause-${key}.bin${tmp}`);
  try {
    await runOk('gcc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', binary, PAUSE_SOURCE], { timeoutMs: 120_000 });
    const data = fs.readFileSync(binary);
    const layer = writeTar([
      { type: 'file', path: 'pause', data, mode: 0o755 },
      // Mount points crun expects to exist in a rootfs it cannot write to.
      ...['dev', 'proc', 'sys', 'etc'].map((p) => ({ type: 'dir' as const, path: p })),
    ]);
    const img = buildOciImage({ name, layers: [layer], gzip: true, config: { entrypoint: ['/pause'], cmd: [], env: [], history: ['katats test/images: pause (gcc -static)'] } });
    const meta: PauseImage = {
      archive,
      name,
      manifest: img.manifest,
      config: img.config,
      layer: img.layers[0]!,
      binarySha256: createHash('sha256').update(data).digest('hex'),
    };
    // Written under temporary names and renamed: a concurrent builder produces the same bytes.
    fs.writeFileSync(archive + tmp, img.archive);
    fs.renameSync(archive + tmp, archive);
    fs.writeFileSync(metaFile + tmp, JSON.stringify(meta, null, 2));
    fs.renameSync(metaFile + tmp, metaFile);
    return meta;
  } finally {
    fs.rmSync(binary, { force: true });
  }
}
