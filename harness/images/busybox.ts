// The test image: one layer holding Debian's busybox-static (/bin/busybox, a symlink per applet at
// the path `busybox --list-full` names, /etc/passwd, /etc/group, /tmp, /root, and the mount points
// /dev, /proc, /sys), built as an OCI archive. Cached by content under .cache/images/.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { run, runOk } from '../exec.js';
import { unpackDeb } from '../debs.js';
import { CACHE_DIR } from '../paths.js';
import { buildOciImage, type Descriptor, type ImageConfigInput } from './oci.js';
import { writeTar, type TarEntry } from './tar.js';

/** Bump when the layout of the image changes: it is part of the cache key. */
const BUILDER_VERSION = 1;

export const BUSYBOX_IMAGE = 'katats.local/busybox:latest';
/**
 * The name to import the index under (`ctr images import --index-name`). It must differ from the
 * manifest's name: with the same name, containerd 1.6's import fails ("content digest ... not found").
 */
export const BUSYBOX_INDEX = 'katats.local/busybox:index';

export interface BusyboxImage {
  /** The OCI archive (tar) to import. */
  archive: string;
  name: string;
  busyboxVersion: string;
  manifest: Descriptor;
  config: Descriptor;
  layer: Descriptor;
  diffId: string;
}

export interface BusyboxImageOptions {
  name?: string;
  config?: ImageConfigInput;
  /** gzip the layer (default true; then the layer digest differs from its diffID). */
  gzip?: boolean;
  cacheDir?: string;
  onProgress?: (line: string) => void;
}

/** /bin/busybox of the installed busybox-static, else the package fetched and unpacked (not installed). */
export async function busyboxBinary(onProgress?: (line: string) => void): Promise<{ file: string; version: string }> {
  const q = await run('dpkg-query', ['-W', '-f=${Status}\t${Version}', 'busybox-static']);
  const [status, version] = q.stdout.split('\t');
  if (q.code === 0 && status === 'install ok installed' && version && fs.existsSync('/bin/busybox')) {
    return { file: '/bin/busybox', version };
  }
  const deb = await unpackDeb('busybox-static', { suite: 'system', onProgress });
  return { file: path.join(deb.dir, 'bin', 'busybox'), version: deb.version };
}

/** The layer's entries: busybox, its applet links, and the few files and directories a container expects. */
export async function busyboxLayer(busybox: string): Promise<Buffer> {
  const list = (await runOk(busybox, ['--list-full'])).stdout.split('\n').filter(Boolean);
  const entries: TarEntry[] = [
    { type: 'file', path: 'bin/busybox', data: fs.readFileSync(busybox), mode: 0o755 },
    { type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n') },
    { type: 'file', path: 'etc/group', data: Buffer.from('root:x:0:\nnogroup:x:65534:\n') },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'root', mode: 0o700 },
    ...['dev', 'proc', 'sys', 'etc', 'var', 'usr/bin', 'usr/sbin', 'sbin'].map((p): TarEntry => ({ type: 'dir', path: p })),
  ];
  for (const applet of list) {
    if (applet === 'bin/busybox') continue;
    entries.push({ type: 'symlink', path: applet, target: '/bin/busybox' });
  }
  return writeTar(entries);
}

/** Builds (or finds in the cache) the busybox OCI archive; the cache key covers the binary, the options and the builder. */
export async function busyboxImage(opts: BusyboxImageOptions = {}): Promise<BusyboxImage> {
  const name = opts.name ?? BUSYBOX_IMAGE;
  const bb = await busyboxBinary(opts.onProgress);
  const key = createHash('sha256')
    .update(JSON.stringify({ v: BUILDER_VERSION, name, config: opts.config ?? {}, gzip: opts.gzip ?? true }))
    .update(fs.readFileSync(bb.file))
    .digest('hex')
    .slice(0, 24);
  const dir = opts.cacheDir ?? path.join(CACHE_DIR, 'images');
  const archive = path.join(dir, `busybox-${key}.oci.tar`);
  const metaFile = path.join(dir, `busybox-${key}.json`);
  if (fs.existsSync(archive) && fs.existsSync(metaFile)) return JSON.parse(fs.readFileSync(metaFile, 'utf8')) as BusyboxImage;
  opts.onProgress?.(`images: building ${name} from busybox-static ${bb.version}`);
  const layer = await busyboxLayer(bb.file);
  const img = buildOciImage({
    name,
    layers: [layer],
    gzip: opts.gzip ?? true,
    config: { ...opts.config, history: opts.config?.history ?? [`katats test/images: busybox-static ${bb.version}`] },
  });
  const meta: BusyboxImage = {
    archive,
    name,
    busyboxVersion: bb.version,
    manifest: img.manifest,
    config: img.config,
    layer: img.layers[0]!,
    diffId: img.diffIds[0]!,
  };
  fs.mkdirSync(dir, { recursive: true });
  // Written under temporary names and renamed: a concurrent builder produces the same bytes.
  const tmp = `.tmp-${process.pid}`;
  fs.writeFileSync(archive + tmp, img.archive);
  fs.renameSync(archive + tmp, archive);
  fs.writeFileSync(metaFile + tmp, JSON.stringify(meta, null, 2));
  fs.renameSync(metaFile + tmp, metaFile);
  return meta;
}
