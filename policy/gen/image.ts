// Images for policy generation: an image's config (user, env, entrypoint, command, working dir,
// volumes) and, per layer, what the policy needs from its files (/etc/passwd and /etc/group for
// user and group ids). Images come from OCI archives (oci-layout, index.json, blobs/), read in
// place. Each layer is decompressed and hashed once: its sha256 must equal the config's diff_id
// (the image is what its config says), and the result is cached by diff_id, in memory and
// optionally in a file, so a layer shared by many images or runs is never read again.
// With `verity` asked for (a policy for pods on verified layers), each layer is also built as the
// tardev snapshotter builds it (snapshotter/layer.ts: the same deterministic EROFS writer and
// dm-verity tree) into a temporary file, for its root hash and data size, and the file removed.
// TODO(content store): a containerd.services.content.v1 source (the snapshotter work adds that
// schema to proto/); the ImageSource interface is where it plugs in.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { indexTarFile, scanLayer, type ArchiveEntry } from './tar.js';

export class ImageError extends Error {
  override readonly name = 'ImageError';
  readonly code = 'KATATS_POLICY_IMAGE';
}

/** The parts of an image config (OCI image-spec `config`) a policy depends on. */
export interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
  Volumes?: Record<string, unknown> | null;
}

export interface LayerInfo {
  diffId: string;
  /** /etc/passwd as of this layer: text, "" when absent, null when deleted (whiteout). */
  passwd: string | null | undefined;
  group: string | null | undefined;
  /** dm-verity root hash of the layer file the tardev snapshotter builds from it (when asked for). */
  rootHash?: string;
  /** Bytes of that file's EROFS image: the verity hash offset. */
  dataBytes?: number;
}

/** What to learn from each layer beyond its users and groups. */
export interface ResolveOptions {
  /** The root hash and data size of the layer file the tardev snapshotter builds. */
  verity?: boolean;
}

export interface ResolvedImage {
  /** The reference as the manifest named it. */
  name: string;
  /** sha256 of the manifest. */
  manifestDigest: string;
  config: ImageConfig;
  layers: LayerInfo[];
  /** /etc/passwd and /etc/group of the whole image (the top-most layer that has them). */
  passwd: string;
  group: string;
}

export interface ImageSource {
  /** The image by reference, or undefined when this source does not have it. */
  resolve(ref: string, cache: LayerCache, o?: ResolveOptions): Promise<ResolvedImage | undefined>;
}

const WANT = new Set(['etc/passwd', 'etc/group']);
const MAX_JSON = 4 * 1024 * 1024;

/** docker's reference normalisation: busybox -> docker.io/library/busybox:latest. */
export function normalizeRef(ref: string): string {
  let r = ref.trim();
  const at = r.indexOf('@');
  let digest = '';
  if (at >= 0) {
    digest = r.slice(at);
    r = r.slice(0, at);
  }
  const first = r.split('/')[0]!;
  const hasDomain = r.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  if (!hasDomain) r = `docker.io/${r.includes('/') ? r : `library/${r}`}`;
  const lastPart = r.slice(r.lastIndexOf('/') + 1);
  if (!lastPart.includes(':') && !digest) r += ':latest';
  return r + digest;
}

export interface LayerCacheFile {
  version: 1;
  layers: Record<string, { passwd: string | null; group: string | null; rootHash?: string; dataBytes?: number }>;
}

/** What was learned from each layer, keyed by diff_id; optionally kept in a JSON file across runs. */
export class LayerCache {
  private readonly mem = new Map<string, LayerInfo>();
  /** Layers read (decompressed and hashed) by this process: the cache's misses. */
  readonly misses: string[] = [];
  /** Layers built as layer files by this process, for their root hashes. */
  readonly built: string[] = [];
  private dirty = false;

  constructor(private readonly file?: string) {
    if (!file || !fs.existsSync(file)) return;
    let doc: LayerCacheFile;
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8')) as LayerCacheFile;
    } catch (e) {
      throw new ImageError(`layer cache ${file}: ${(e as Error).message}`);
    }
    if (doc.version !== 1 || typeof doc.layers !== 'object') throw new ImageError(`layer cache ${file}: not a version 1 cache`);
    for (const [diffId, l] of Object.entries(doc.layers)) {
      this.mem.set(diffId, { diffId, passwd: l.passwd, group: l.group, ...verityOf(l) });
    }
  }

  get(diffId: string): LayerInfo | undefined {
    return this.mem.get(diffId);
  }

  put(l: LayerInfo): void {
    this.mem.set(l.diffId, l);
    this.dirty = true;
  }

  /** Writes the cache file (under a temporary name, then renamed) if anything was added. */
  save(): void {
    if (!this.file || !this.dirty) return;
    const doc: LayerCacheFile = { version: 1, layers: {} };
    for (const [k, l] of [...this.mem].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      doc.layers[k] = { passwd: l.passwd ?? null, group: l.group ?? null, ...verityOf(l) };
    }
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(doc));
    fs.renameSync(tmp, this.file);
    this.dirty = false;
  }
}

/** A cached root hash and data size, only when both are well formed. */
function verityOf(l: { rootHash?: string; dataBytes?: number }): { rootHash?: string; dataBytes?: number } {
  if (typeof l.rootHash !== 'string' || !/^[0-9a-f]{64}$/.test(l.rootHash)) return {};
  if (!Number.isSafeInteger(l.dataBytes) || l.dataBytes! <= 0 || l.dataBytes! % 4096 !== 0) return {};
  return { rootHash: l.rootHash, dataBytes: l.dataBytes! };
}

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  annotations?: Record<string, string>;
  platform?: { architecture?: string; os?: string };
}

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);

function goArch(): string {
  return ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;
}

/** An OCI image layout packed in a tar (what `ctr images export` writes and `ctr images import` reads). */
export class OciArchive implements ImageSource {
  private readonly entries: Map<string, ArchiveEntry>;

  constructor(readonly file: string) {
    this.entries = indexTarFile(file);
    if (!this.entries.has('index.json')) throw new ImageError(`${file}: not an OCI archive (no index.json)`);
  }

  private read(name: string, max = MAX_JSON): Buffer {
    const e = this.entries.get(name);
    if (!e) throw new ImageError(`${this.file}: no ${name}`);
    if (e.size > max) throw new ImageError(`${this.file}: ${name} is ${e.size} bytes (limit ${max})`);
    const fd = fs.openSync(this.file, 'r');
    try {
      const b = Buffer.alloc(e.size);
      fs.readSync(fd, b, 0, e.size, e.offset);
      return b;
    } finally {
      fs.closeSync(fd);
    }
  }

  private blobName(digest: string): string {
    const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(digest);
    if (!m) throw new ImageError(`${this.file}: bad digest ${JSON.stringify(digest)}`);
    return `blobs/${m[1]}/${m[2]}`;
  }

  /** A JSON blob, its digest checked. */
  private blobJSON<T>(digest: string): T {
    const data = this.read(this.blobName(digest));
    const got = 'sha256:' + createHash('sha256').update(data).digest('hex');
    if (digest.startsWith('sha256:') && got !== digest) throw new ImageError(`${this.file}: blob ${digest} has digest ${got}`);
    try {
      return JSON.parse(data.toString('utf8')) as T;
    } catch (e) {
      throw new ImageError(`${this.file}: blob ${digest}: ${(e as Error).message}`);
    }
  }

  /** Every image name the archive's index carries. */
  names(): string[] {
    const index = JSON.parse(this.read('index.json').toString('utf8')) as { manifests?: Descriptor[] };
    return (index.manifests ?? []).flatMap((m) => nameOf(m) ?? []);
  }

  private findManifest(ref: string): Descriptor | undefined {
    const want = normalizeRef(ref);
    const index = JSON.parse(this.read('index.json').toString('utf8')) as { manifests?: Descriptor[] };
    const hit = (index.manifests ?? []).find((m) => {
      const n = nameOf(m);
      return n !== undefined && normalizeRef(n) === want;
    });
    if (!hit) return undefined;
    if (hit.mediaType && INDEX_TYPES.has(hit.mediaType)) {
      const inner = this.blobJSON<{ manifests?: Descriptor[] }>(hit.digest);
      const m = (inner.manifests ?? []).find((d) => d.platform?.os === 'linux' && d.platform.architecture === goArch());
      if (!m) throw new ImageError(`${this.file}: ${ref} has no linux/${goArch()} manifest`);
      return m;
    }
    return hit;
  }

  async resolve(ref: string, cache: LayerCache, o: ResolveOptions = {}): Promise<ResolvedImage | undefined> {
    const md = this.findManifest(ref);
    if (!md) return undefined;
    const manifest = this.blobJSON<{ config: Descriptor; layers: Descriptor[] }>(md.digest);
    const configDoc = this.blobJSON<{ config?: ImageConfig; rootfs?: { diff_ids?: string[] } }>(manifest.config.digest);
    const diffIds = configDoc.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length) {
      throw new ImageError(`${this.file}: ${ref}: ${manifest.layers.length} layers but ${diffIds.length} diff_ids`);
    }
    const layers: LayerInfo[] = [];
    for (let i = 0; i < diffIds.length; i++) {
      const diffId = diffIds[i]!;
      let info = cache.get(diffId);
      if (!info) {
        info = await this.readLayer(manifest.layers[i]!, diffId);
        cache.put(info);
        cache.misses.push(diffId);
      }
      if (o.verity && !info.rootHash) {
        info = { ...info, ...(await this.layerVerity(manifest.layers[i]!, diffId)) };
        cache.put(info);
        cache.built.push(diffId);
      }
      layers.push(info);
    }
    let passwd = '';
    let group = '';
    for (const l of layers) {
      if (l.passwd === null) passwd = '';
      else if (l.passwd) passwd = l.passwd;
      if (l.group === null) group = '';
      else if (l.group) group = l.group;
    }
    return { name: nameOf(md) ?? ref, manifestDigest: md.digest, config: configDoc.config ?? {}, layers, passwd, group };
  }

  /** Decompresses and hashes one layer blob, keeping /etc/passwd and /etc/group. */
  private async readLayer(d: Descriptor, diffId: string): Promise<LayerInfo> {
    const e = this.entries.get(this.blobName(d.digest));
    if (!e) throw new ImageError(`${this.file}: layer blob ${d.digest} missing`);
    const media = d.mediaType ?? '';
    if (/zstd/.test(media)) throw new ImageError(`${this.file}: layer ${d.digest} is zstd-compressed (${media}): not supported here`);
    const raw = e.size === 0 ? null : fs.createReadStream(this.file, { start: e.offset, end: e.offset + e.size - 1, highWaterMark: 1 << 20 });
    if (!raw) throw new ImageError(`${this.file}: layer ${d.digest} is empty`);
    const blobHash = createHash('sha256');
    const tarHash = createHash('sha256');
    const gzip = /gzip/.test(media) || (media === '' && (await startsWithGzip(this.file, e.offset)));
    raw.on('data', (c) => blobHash.update(c as Buffer));
    const tar = gzip ? raw.pipe(createGunzip({ chunkSize: 1 << 20 })) : raw;
    raw.on('error', (err) => tar.destroy(err));
    async function* hashed(): AsyncGenerator<Buffer> {
      for await (const c of tar) {
        tarHash.update(c as Buffer);
        yield c as Buffer;
      }
    }
    let scan;
    try {
      scan = await scanLayer(hashed(), WANT);
    } catch (err) {
      raw.destroy();
      throw new ImageError(`${this.file}: layer ${d.digest}: ${(err as Error).message}`);
    }
    const blob = 'sha256:' + blobHash.digest('hex');
    if (d.digest.startsWith('sha256:') && blob !== d.digest) throw new ImageError(`${this.file}: layer blob ${d.digest} has digest ${blob}`);
    const got = 'sha256:' + tarHash.digest('hex');
    if (got !== diffId) throw new ImageError(`${this.file}: layer ${d.digest}: uncompressed digest ${got}, but the config says ${diffId}`);
    const text = (name: string) => (scan.files.has(name) ? scan.files.get(name)!.toString('utf8') : scan.whiteouts.has(name) ? null : undefined);
    return { diffId, passwd: text('etc/passwd'), group: text('etc/group') };
  }

  /** The layer file the snapshotter would build from this blob, built in a temporary dir: its root hash and data size. */
  private async layerVerity(d: Descriptor, diffId: string): Promise<{ rootHash: string; dataBytes: number }> {
    const e = this.entries.get(this.blobName(d.digest));
    if (!e || e.size === 0) throw new ImageError(`${this.file}: layer blob ${d.digest} missing or empty`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-policy-layer-'));
    try {
      const blob = fs.createReadStream(this.file, { start: e.offset, end: e.offset + e.size - 1, highWaterMark: 1 << 20 });
      try {
        const f = await buildLayerFile(blob, path.join(dir, 'layer'), { expectDiffId: diffId, ...(d.digest.startsWith('sha256:') ? { expectDigest: d.digest } : {}) });
        return { rootHash: f.rootHash, dataBytes: f.erofsBytes };
      } finally {
        blob.destroy();
      }
    } catch (err) {
      throw new ImageError(`${this.file}: layer ${d.digest}: building its layer file: ${(err as Error).message}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

async function startsWithGzip(file: string, offset: number): Promise<boolean> {
  const fh = await fs.promises.open(file, 'r');
  try {
    const b = Buffer.alloc(2);
    await fh.read(b, 0, 2, offset);
    return b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

function nameOf(m: Descriptor): string | undefined {
  return m.annotations?.['io.containerd.image.name'] ?? m.annotations?.['org.opencontainers.image.ref.name'];
}

/** Several sources, asked in order; every image a manifest names must be found in one. */
export class ImageResolver {
  private readonly seen = new Map<string, Promise<ResolvedImage | undefined>>();
  constructor(
    private readonly sources: ImageSource[],
    readonly cache: LayerCache = new LayerCache(),
  ) {}

  /** The image, or undefined when no source has it (a broken source is still an error). */
  find(ref: string, o: ResolveOptions = {}): Promise<ResolvedImage | undefined> {
    const key = `${o.verity ? 'verity ' : ''}${normalizeRef(ref)}`;
    let p = this.seen.get(key);
    if (!p) {
      p = (async () => {
        for (const s of this.sources) {
          const img = await s.resolve(ref, this.cache, o);
          if (img) return img;
        }
        return undefined;
      })();
      this.seen.set(key, p);
    }
    return p;
  }

  async resolve(ref: string, o: ResolveOptions = {}): Promise<ResolvedImage> {
    const img = await this.find(ref, o);
    if (!img) throw new ImageError(`image ${ref}: not in any of the given image sources`);
    return img;
  }
}

// ---- users and groups, as containerd resolves them (oci.WithUser, WithAdditionalGIDs) ----

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (Number.isInteger(uid) && Number.isInteger(gid)) out.push({ name: f[0]!, uid, gid });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 3 || line.startsWith('#')) continue;
    const gid = Number(f[2]);
    if (Number.isInteger(gid)) out.push({ name: f[0]!, gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}
