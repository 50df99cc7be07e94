// An OCI image layout (oci-layout, index.json, blobs/sha256/*) for a one-or-more-layer image, packed
// as a deterministic tar archive that `ctr images import` reads.
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { writeTar, type TarEntry } from './tar.js';

export const MEDIA = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

/** A fixed creation time: the image bytes depend on their inputs only. */
export const FIXED_CREATED = '1970-01-01T00:00:00Z';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface ImageConfigInput {
  env?: string[];
  entrypoint?: string[];
  cmd?: string[];
  workingDir?: string;
  /** The image's user ("uid", "name", "uid:gid", ...). */
  user?: string;
  /** Directories declared as volumes. */
  volumes?: string[];
  /** Lines for the config's history, one per layer. */
  history?: string[];
}

export interface OciImage {
  /** The archive: oci-layout, index.json and blobs. */
  archive: Buffer;
  /** `io.containerd.image.name` of the manifest in index.json, e.g. `katats.local/busybox:latest`. */
  name: string;
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  /** sha256 of each uncompressed layer tar (config rootfs.diff_ids). */
  diffIds: string[];
}

export function sha256(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

export function ociArch(arch: string = process.arch): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[arch] ?? arch;
}

/**
 * Builds an image from layer tars (uncompressed bytes). `name` is a full reference
 * (`host/repo:tag`); its tag becomes `org.opencontainers.image.ref.name`.
 */
export function buildOciImage(opts: { name: string; layers: Buffer[]; config?: ImageConfigInput; gzip?: boolean }): OciImage {
  const blobs = new Map<string, Buffer>();
  const put = (data: Buffer, mediaType: string): Descriptor => {
    const digest = sha256(data);
    blobs.set(digest, data);
    return { mediaType, digest, size: data.length };
  };
  const gzip = opts.gzip ?? true;
  const diffIds = opts.layers.map((l) => sha256(l));
  const layers = opts.layers.map((l) => (gzip ? put(gzipSync(l, { level: 9 }), MEDIA.layerGzip) : put(l, MEDIA.layer)));
  const c = opts.config ?? {};
  const imageConfig: Record<string, unknown> = {
    Env: c.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
    ...(c.entrypoint ? { Entrypoint: c.entrypoint } : {}),
    Cmd: c.cmd ?? ['sh'],
    WorkingDir: c.workingDir ?? '/',
    ...(c.user ? { User: c.user } : {}),
    ...(c.volumes ? { Volumes: Object.fromEntries(c.volumes.map((v) => [v, {}])) } : {}),
  };
  const config = put(
    Buffer.from(
      JSON.stringify({
        created: FIXED_CREATED,
        architecture: ociArch(),
        os: 'linux',
        config: imageConfig,
        rootfs: { type: 'layers', diff_ids: diffIds },
        history: opts.layers.map((_, i) => ({ created: FIXED_CREATED, created_by: c.history?.[i] ?? `layer ${i}` })),
      }),
    ),
    MEDIA.config,
  );
  const manifest = put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.manifest, config, layers })), MEDIA.manifest);
  const tag = /:([^:/]+)$/.exec(opts.name)?.[1] ?? 'latest';
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.index,
    manifests: [
      {
        ...manifest,
        platform: { architecture: ociArch(), os: 'linux' },
        annotations: { 'io.containerd.image.name': opts.name, 'org.opencontainers.image.ref.name': tag },
      },
    ],
  };
  const entries: TarEntry[] = [
    { type: 'file', path: 'oci-layout', data: Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })) },
    { type: 'file', path: 'index.json', data: Buffer.from(JSON.stringify(index)) },
    ...[...blobs].map(([digest, data]): TarEntry => ({ type: 'file', path: `blobs/sha256/${digest.slice('sha256:'.length)}`, data })),
  ];
  return { archive: writeTar(entries), name: opts.name, manifest, config, layers, diffIds };
}
