// A three-layer test image for the snapshotter: busybox (the base layer of busybox.ts), a layer
// adding files and directories with modes, owners and xattrs, and a layer deleting some of them
// with OCI whiteouts (`.wh.NAME`) and replacing a directory's contents with an opaque marker
// (`.wh..wh..opq`). What a container must see is in LAYERED_EXPECT. Cached by content under
// .cache/images/, like the busybox image.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { CACHE_DIR } from '../paths.js';
import { busyboxBinary, busyboxLayer } from './busybox.js';
import { buildOciImage, type Descriptor } from './oci.js';
import { writeTar } from './tar.js';

const BUILDER_VERSION = 2;

export const LAYERED_IMAGE = 'katats.local/layered:latest';
/** The index name for `ctr images import --index-name` (must differ from the manifest's name). */
export const LAYERED_INDEX = 'katats.local/layered:index';

export interface LayeredImage {
  archive: string;
  name: string;
  manifest: Descriptor;
  config: Descriptor;
  /** The compressed blobs, base first. */
  layers: Descriptor[];
  diffIds: string[];
  /** The uncompressed layer tars, base first (.cache files). */
  layerTars: string[];
}

/**
 * A file of whole blocks in layer 2 (EROFS keeps it in the layer file's data area, not inline):
 * the tamper tests flip a byte in one of its blocks. Line i is `big-block line <i>` padded to 32
 * bytes; `/data/big` is 64 KiB.
 */
export const LAYERED_BIG = {
  path: '/data/big',
  bytes: 64 * 1024,
  content(): Buffer {
    const lines: string[] = [];
    for (let i = 0; i < (64 * 1024) / 32; i++) lines.push(`big-block line ${String(i).padStart(5, '0')}`.padEnd(31, '.') + '\n');
    return Buffer.from(lines.join(''));
  },
};

/** What `ls`/`stat`/`cat` in a container of this image must show. */
export const LAYERED_EXPECT = {
  /** Present, with these contents. */
  files: { '/data/kept': 'kept from layer 2\n', '/opq/new': 'only the upper layer\n', '/etc/motd': 'layered image\n' },
  /** Deleted by whiteouts, or hidden by the opaque directory. */
  absent: ['/data/deleted', '/data/subdir-deleted', '/opq/old-1', '/opq/old-2'],
  /** `stat -c '%a %u:%g'` */
  modes: { '/data/kept': '640 1000:1000', '/data/setuid': '4755 0:0', '/opq': '750 0:0' },
};

const upper = (): Buffer =>
  writeTar([
    { type: 'dir', path: 'data', mode: 0o755 },
    { type: 'file', path: 'data/kept', data: Buffer.from(LAYERED_EXPECT.files['/data/kept']), mode: 0o640, uid: 1000, gid: 1000, xattrs: { 'user.origin': 'layer 2' } },
    { type: 'file', path: 'data/deleted', data: Buffer.from('deleted by layer 3\n') },
    { type: 'file', path: 'data/setuid', data: Buffer.from('#!/bin/sh\necho setuid\n'), mode: 0o4755 },
    { type: 'file', path: 'data/big', data: LAYERED_BIG.content() },
    { type: 'dir', path: 'data/subdir-deleted' },
    { type: 'file', path: 'data/subdir-deleted/inner', data: Buffer.from('gone with its dir\n') },
    { type: 'dir', path: 'opq', mode: 0o750 },
    { type: 'file', path: 'opq/old-1', data: Buffer.from('hidden by the opaque dir\n') },
    { type: 'file', path: 'opq/old-2', data: Buffer.from('hidden by the opaque dir\n') },
    { type: 'file', path: 'etc/motd', data: Buffer.from('replaced by layer 3\n') },
  ]);

const top = (): Buffer =>
  writeTar([
    { type: 'dir', path: 'data', mode: 0o755 },
    { type: 'file', path: 'data/.wh.deleted', data: Buffer.alloc(0) },
    { type: 'file', path: 'data/.wh.subdir-deleted', data: Buffer.alloc(0) },
    { type: 'dir', path: 'opq', mode: 0o750 },
    { type: 'file', path: 'opq/.wh..wh..opq', data: Buffer.alloc(0) },
    { type: 'file', path: 'opq/new', data: Buffer.from(LAYERED_EXPECT.files['/opq/new']) },
    { type: 'file', path: 'etc/motd', data: Buffer.from(LAYERED_EXPECT.files['/etc/motd']) },
  ]);

/** Builds (or finds in the cache) the image. */
export async function layeredImage(o: { cacheDir?: string; onProgress?: (line: string) => void } = {}): Promise<LayeredImage> {
  const base = await busyboxLayer((await busyboxBinary(o.onProgress)).file);
  const layers = [base, upper(), top()];
  const key = createHash('sha256').update(JSON.stringify({ v: BUILDER_VERSION, name: LAYERED_IMAGE })).update(Buffer.concat(layers)).digest('hex').slice(0, 24);
  const dir = o.cacheDir ?? path.join(CACHE_DIR, 'images');
  const archive = path.join(dir, `layered-${key}.oci.tar`);
  const metaFile = path.join(dir, `layered-${key}.json`);
  if (fs.existsSync(archive) && fs.existsSync(metaFile)) return JSON.parse(fs.readFileSync(metaFile, 'utf8')) as LayeredImage;
  o.onProgress?.(`images: building ${LAYERED_IMAGE}`);
  const img = buildOciImage({ name: LAYERED_IMAGE, layers, gzip: true, config: { history: ['busybox', 'files', 'whiteouts and an opaque dir'] } });
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `.tmp-${process.pid}`;
  const layerTars = layers.map((l, i) => {
    const f = path.join(dir, `layered-${key}-layer${i}.tar`);
    fs.writeFileSync(f + tmp, l);
    fs.renameSync(f + tmp, f);
    return f;
  });
  const meta: LayeredImage = { archive, name: LAYERED_IMAGE, manifest: img.manifest, config: img.config, layers: img.layers, diffIds: img.diffIds, layerTars };
  fs.writeFileSync(archive + tmp, img.archive);
  fs.renameSync(archive + tmp, archive);
  fs.writeFileSync(metaFile + tmp, JSON.stringify(meta, null, 2));
  fs.renameSync(metaFile + tmp, metaFile);
  return meta;
}
