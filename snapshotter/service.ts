// The tardev snapshotter: containerd's Snapshots semantics over layer files.
//
// containerd unpacks an image layer by Prepare-ing an "extract" snapshot, applying the layer's tar
// into the mounts it gets back, and Committing it under the layer's chain id. Here the Prepare
// gets a scratch directory (containerd's apply lands there and is thrown away) and the Commit reads
// the compressed layer from containerd's content store and builds the layer file (EROFS + verity
// tree) from it, once per chain id: the file's root hash depends on the layer's bytes only, never
// on what happened on the host. An unpack is recognised by CRI's
// `containerd.io/snapshot/cri.layer-digest` label, the unpacker's `containerd.io/snapshot.ref`
// label, or the unpack key itself ("extract-<n> <chain id>", all `ctr` gives on 1.6 and 1.7).
//
// A container's snapshot (Prepare/View over committed layers) gets mounts the host can use (an
// overlay of the layers the snapshotter keeps mounted read-only, with an upper directory for an
// active snapshot) after descriptive mounts listing the layer files and root hashes for the shim
// (proto/layer-mounts.ts).
//
// Keys arrive as containerd's metadata layer names them, "<namespace>/<n>/<key>"; the namespace
// is where the content store is read. Committing a container's own changes is not supported
// (NotImplemented): only image layers become layer files.
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { describeLayers, ROOT_HASH_LABEL, type MountSpec } from '../proto/layer-mounts.js';
import { ContentError, type ContentClient } from './content.js';
import { LayerFormatError } from './erofs/tree.js';
import { SnapshotError, alreadyExists, failedPrecondition, invalidArgument, notFound, notImplemented } from './errors.js';
import { matches, parseFilters } from './filters.js';
import { HostMounts } from './hostmounts.js';
import { buildLayerFile, LayerDigestError } from './layer.js';
import { chainIdOf, DIGEST, LayerResolver } from './resolve.js';
import { layerName, Store, type Kind, type LayerRecord, type SnapshotRecord } from './store.js';
import { LayerSourceError } from './tar/source.js';
import { TarError } from './tar/reader.js';
import { ZERO_SALT } from './verity.js';
import { isTimeout } from '../sys/timeout.js';

export const LABEL_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
const UNPACK_KEY = /^extract-\S+ (sha256:[0-9a-f]{64})$/;
const NAMESPACED = /^([^/]+)\/\d+\/(.+)$/s;
const MAX_LABEL_BYTES = 64 * 1024;

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  created: number;
  updated: number;
  labels: Record<string, string>;
}

export interface Usage {
  size: number;
  inodes: number;
}

export interface SnapshotterOptions {
  root: string;
  log: Logger;
  /** containerd's content service; without it unpacks fail with Unavailable. */
  content?: ContentClient;
  /** Layer builds at once (default 2). */
  maxBuilds?: number;
}

/** The last path component of a metadata-layer key, and its namespace. */
function splitKey(key: string): { namespace?: string; base: string } {
  const m = NAMESPACED.exec(key);
  return m ? { namespace: m[1]!, base: m[2]! } : { base: key };
}

function checkLabels(labels: Record<string, string>): void {
  let n = 0;
  for (const [k, v] of Object.entries(labels)) n += k.length + v.length;
  if (n > MAX_LABEL_BYTES) throw invalidArgument(`labels of ${n} bytes (limit ${MAX_LABEL_BYTES})`);
}

/** Maps a failure of a layer build to containerd's error kinds. */
function buildError(e: unknown, what: string): SnapshotError {
  if (e instanceof SnapshotError) return e;
  const msg = `${what}: ${(e as Error).message}`;
  if (e instanceof TarError || e instanceof LayerFormatError) return invalidArgument(msg);
  if (e instanceof LayerDigestError || e instanceof LayerSourceError) return failedPrecondition(msg);
  if (e instanceof ContentError) {
    if (e.code === 5) return notFound(msg);
    if (e.code === 14 || e.code === 4) return new SnapshotError('Unavailable', msg);
    return new SnapshotError('Internal', msg);
  }
  if (isTimeout(e)) return new SnapshotError('Unavailable', msg);
  return new SnapshotError('Internal', msg);
}

/** A counting semaphore. */
class Slots {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await f();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

export class TardevSnapshotter {
  readonly store: Store;
  readonly hostMounts: HostMounts;
  private readonly log: Logger;
  private readonly content?: ContentClient;
  private readonly resolver?: LayerResolver;
  private readonly slots: Slots;
  /** Layer builds under way, by layer name: a second unpack of the same chain waits for the first. */
  private readonly building = new Map<string, Promise<LayerRecord>>();
  /** Keys whose Commit is under way. */
  private readonly committing = new Set<string>();

  constructor(o: SnapshotterOptions) {
    this.store = new Store(o.root);
    this.log = o.log;
    this.content = o.content;
    this.resolver = o.content ? new LayerResolver(o.content) : undefined;
    this.hostMounts = new HostMounts(this.store, o.log);
    this.slots = new Slots(o.maxBuilds ?? 2);
  }

  open(): void {
    this.store.open();
    for (const p of this.store.unreadable) this.log.error({ file: p }, 'unreadable metadata record left in place');
    this.log.info({ root: this.store.root, snapshots: this.store.all().length, layers: this.store.allLayers().length }, 'snapshotter state loaded');
  }

  private info(r: SnapshotRecord): Info {
    const labels = { ...r.labels };
    const l = r.layer ? this.store.layer(r.layer) : undefined;
    if (l) labels[ROOT_HASH_LABEL] = l.rootHash;
    return { name: r.key, parent: r.parent, kind: r.kind, created: r.created, updated: r.updated, labels };
  }

  private get(key: string): SnapshotRecord {
    const r = this.store.get(key);
    if (!r) throw notFound(`snapshot ${key} does not exist`);
    return r;
  }

  stat(key: string): Info {
    return this.info(this.get(key));
  }

  update(info: { name: string; labels: Record<string, string> }, paths: string[]): Info {
    const r = this.get(info.name);
    const labels = { ...r.labels };
    if (paths.length) {
      for (const p of paths) {
        if (p === 'labels') {
          for (const k of Object.keys(labels)) delete labels[k];
          Object.assign(labels, info.labels);
        } else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (Object.hasOwn(info.labels, k)) labels[k] = info.labels[k]!;
          else delete labels[k];
        } else throw invalidArgument(`cannot update ${JSON.stringify(p)} of snapshot ${info.name}`);
      }
    } else {
      for (const k of Object.keys(labels)) delete labels[k];
      Object.assign(labels, info.labels);
    }
    // The root hash is the layer's, not a label anyone may set.
    delete labels[ROOT_HASH_LABEL];
    checkLabels(labels);
    const next = { ...r, labels, updated: Date.now() };
    this.store.put(next);
    return this.info(next);
  }

  list(filters: string[]): Info[] {
    const f = parseFilters(filters);
    return this.store
      .all()
      .map((r) => this.info(r))
      .filter((i) => matches(f, i))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async usage(key: string): Promise<Usage> {
    const r = this.get(key);
    if (r.kind === 'committed') {
      const l = r.layer ? this.store.layer(r.layer) : undefined;
      return l ? { size: l.fileBytes, inodes: l.inodes } : { size: 0, inodes: 0 };
    }
    if (r.kind === 'view') return { size: 0, inodes: 0 };
    return diskUsage(r.unpack ? this.store.unpackDir(r.id) : path.join(this.store.activeDir(r.id), 'fs'));
  }

  /** Checks the parent of a new snapshot; its layer chain, topmost first. */
  private parentChain(parent: string): LayerRecord[] {
    if (!parent) return [];
    const p = this.store.get(parent);
    if (!p) throw notFound(`parent snapshot ${parent} does not exist`);
    if (p.kind !== 'committed') throw invalidArgument(`parent ${parent} is not a committed snapshot`);
    try {
      return this.store.chain(parent).map((c) => c.layer);
    } catch (e) {
      throw failedPrecondition(`parent ${parent}: ${(e as Error).message}`);
    }
  }

  /** What a new snapshot unpacks, or undefined when it is a container's. */
  private unpackOf(key: string, labels: Record<string, string>): SnapshotRecord['unpack'] {
    const { namespace, base } = splitKey(key);
    const fromKey = UNPACK_KEY.exec(base)?.[1];
    const ref = labels[LABEL_SNAPSHOT_REF];
    const digest = labels[LABEL_LAYER_DIGEST];
    const chainId = fromKey ?? (ref && DIGEST.test(ref) ? ref : undefined);
    if (!chainId && !digest) return undefined;
    if (!chainId) throw invalidArgument(`snapshot ${key}: ${LABEL_LAYER_DIGEST} without a chain id (no ${LABEL_SNAPSHOT_REF} label, not an unpack key)`);
    if (digest !== undefined && !DIGEST.test(digest)) throw invalidArgument(`snapshot ${key}: ${LABEL_LAYER_DIGEST}=${digest} is not a sha256 digest`);
    if (!namespace) throw invalidArgument(`snapshot ${key}: an unpack key without a containerd namespace`);
    return { chainId, namespace, ...(digest ? { digest } : {}) };
  }

  private async create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    if (!key) throw invalidArgument('empty snapshot key');
    checkLabels(labels);
    if (this.store.get(key)) throw alreadyExists(`snapshot ${key} already exists`);
    const chain = this.parentChain(parent);
    const unpack = kind === 'active' ? this.unpackOf(key, labels) : undefined;
    const now = Date.now();
    const r: SnapshotRecord = { key, kind, parent, labels, created: now, updated: now, id: this.store.newId(), ...(unpack ? { unpack } : {}) };
    // Directories first, then the record: a crash leaves an orphan directory (Cleanup removes
    // it), never a record without its directories.
    if (unpack) fs.mkdirSync(this.store.unpackDir(r.id), { mode: 0o755 });
    else if (kind === 'active') {
      fs.mkdirSync(path.join(this.store.activeDir(r.id), 'fs'), { recursive: true, mode: 0o755 });
      fs.mkdirSync(path.join(this.store.activeDir(r.id), 'work'), { mode: 0o700 });
    }
    this.store.put(r);
    this.log.info({ key, parent, kind, unpack: unpack?.chainId, layers: chain.length }, kind === 'view' ? 'view' : 'prepare');
    return this.mountsOf(r, chain);
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.create('active', key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.create('view', key, parent, labels);
  }

  async mounts(key: string): Promise<MountSpec[]> {
    const r = this.get(key);
    if (r.kind === 'committed') throw failedPrecondition(`snapshot ${key} is committed: it has no mounts (only active and view snapshots do)`);
    return this.mountsOf(r, this.parentChain(r.parent));
  }

  private async mountsOf(r: SnapshotRecord, chain: LayerRecord[]): Promise<MountSpec[]> {
    if (r.unpack) return [{ type: 'bind', source: this.store.unpackDir(r.id), target: '', options: ['rw', 'rbind'] }];
    const lowers: string[] = [];
    for (const l of chain) lowers.push(await this.hostMounts.ensure(l.name));
    const active = r.kind === 'active';
    const fsDir = path.join(this.store.activeDir(r.id), 'fs');
    let host: MountSpec;
    if (!chain.length) host = { type: 'bind', source: active ? fsDir : this.store.emptyDir, target: '', options: [active ? 'rw' : 'ro', 'rbind'] };
    else if (!active && chain.length === 1) host = { type: 'bind', source: lowers[0]!, target: '', options: ['ro', 'rbind'] };
    else if (!active) host = { type: 'overlay', source: 'overlay', target: '', options: [`lowerdir=${lowers.join(':')}`] };
    else {
      host = {
        type: 'overlay',
        source: 'overlay',
        target: '',
        options: ['index=off', `workdir=${path.join(this.store.activeDir(r.id), 'work')}`, `upperdir=${fsDir}`, `lowerdir=${lowers.join(':')}`],
      };
    }
    const described = describeLayers(this.store.dir('layers'), this.store.emptyDir, chain, active);
    return [...described, host];
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    if (!name) throw invalidArgument('empty snapshot name');
    checkLabels(labels);
    const r = this.get(key);
    if (r.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
    if (this.store.get(name)) throw alreadyExists(`snapshot ${name} already exists`);
    if (!r.unpack) throw notImplemented(`snapshot ${key}: tardev commits image layers only, not a container's changes`);
    if (this.committing.has(key)) throw failedPrecondition(`snapshot ${key} is being committed`);
    const { base } = splitKey(name);
    if (base !== r.unpack.chainId) throw invalidArgument(`commit of ${key} as ${name}: the unpack was for chain ${r.unpack.chainId}`);
    this.committing.add(key);
    try {
      const parentChain = r.parent ? (this.store.chain(r.parent)[0]?.layer.chainId ?? '') : '';
      const layer = await this.layerFor(r.unpack.chainId, parentChain, r.unpack.namespace, r.unpack.digest);
      // The layer file is whole and synced by now; the record naming it goes in last but one.
      const again = this.store.get(key);
      if (!again || again.kind !== 'active') throw failedPrecondition(`snapshot ${key} was removed while it was committed`);
      if (this.store.get(name)) throw alreadyExists(`snapshot ${name} already exists`);
      const now = Date.now();
      this.store.put({ key: name, kind: 'committed', parent: r.parent, labels, created: now, updated: now, id: r.id, layer: layer.name });
      this.store.delete(key);
      fs.rmSync(this.store.unpackDir(r.id), { recursive: true, force: true });
      this.log.info({ key, name, layer: layer.name, rootHash: layer.rootHash }, 'committed an image layer');
    } finally {
      this.committing.delete(key);
    }
  }

  /** The layer file of a chain id: the one there is, or one built now (once, however many ask). */
  private layerFor(chainId: string, parentChain: string, namespace: string, digest?: string): Promise<LayerRecord> {
    const name = layerName(chainId);
    const have = this.store.layer(name);
    if (have && fs.existsSync(this.store.layerFile(name))) return Promise.resolve(have);
    const busy = this.building.get(name);
    if (busy) return busy;
    const p = this.slots.run(() => this.build(name, chainId, parentChain, namespace, digest)).finally(() => this.building.delete(name));
    this.building.set(name, p);
    return p;
  }

  private async build(name: string, chainId: string, parentChain: string, namespace: string, digest?: string): Promise<LayerRecord> {
    if (!this.content || !this.resolver) throw new SnapshotError('Unavailable', `cannot unpack ${chainId}: the snapshotter was started without containerd's socket (--containerd)`);
    let blob: { digest: string; diffId?: string };
    if (digest) blob = { digest };
    else {
      let found;
      try {
        found = await this.resolver.byChainId(namespace, chainId);
      } catch (e) {
        throw buildError(e, `looking up the layer of ${chainId} in namespace ${namespace}`);
      }
      if (!found) throw notFound(`no image in namespace ${namespace} has a layer with chain id ${chainId}`);
      if (found.parentChain !== parentChain) throw failedPrecondition(`chain ${chainId} sits on ${found.parentChain || 'nothing'} in its image, on ${parentChain || 'nothing'} here`);
      blob = found;
    }
    const tmp = path.join(this.store.tmpDir, `${name}.${randomBytes(4).toString('hex')}`);
    const started = Date.now();
    let built;
    try {
      built = await buildLayerFile(this.content.read(namespace, blob.digest), tmp, { expectDigest: blob.digest, expectDiffId: blob.diffId });
      const got = chainIdOf(parentChain, built.diffId);
      if (got !== chainId) throw new LayerDigestError(`the layer ${blob.digest} gives chain id ${got} on ${parentChain || 'nothing'}, not ${chainId}`);
      fs.renameSync(tmp, this.store.layerFile(name));
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw buildError(e, `layer ${blob.digest} (chain ${chainId})`);
    }
    const rec: LayerRecord = {
      name,
      chainId,
      rootHash: built.rootHash,
      salt: ZERO_SALT.toString('hex'),
      diffId: built.diffId,
      digest: built.digest,
      erofsBytes: built.erofsBytes,
      fileBytes: built.fileBytes,
      inodes: built.inodes,
      built: Date.now(),
    };
    this.store.putLayer(rec);
    this.log.info(
      { layer: name, chainId, digest: built.digest, rootHash: built.rootHash, tarBytes: built.uncompressedBytes, fileBytes: built.fileBytes },
      `built a layer file in ${Date.now() - started} ms`,
    );
    return rec;
  }

  async remove(key: string): Promise<void> {
    const r = this.get(key);
    if (this.committing.has(key)) throw failedPrecondition(`snapshot ${key} is being committed`);
    if (this.store.children(key).length) throw failedPrecondition(`cannot remove snapshot ${key} with children`);
    // The record goes first: a crash leaves orphan directories or files, which Cleanup removes.
    this.store.delete(key);
    if (r.unpack) fs.rmSync(this.store.unpackDir(r.id), { recursive: true, force: true });
    else if (r.kind === 'active') fs.rmSync(this.store.activeDir(r.id), { recursive: true, force: true });
    if (r.layer && !this.store.all().some((x) => x.layer === r.layer)) {
      await this.hostMounts.releaseUnneeded(this.neededLayers());
      if (!this.hostMounts.mounted(r.layer)) this.store.deleteLayer(r.layer);
    } else if (r.kind !== 'committed') await this.hostMounts.releaseUnneeded(this.neededLayers());
    this.log.info({ key, kind: r.kind }, 'removed');
  }

  /** Layers some active or view snapshot stands on. */
  private neededLayers(): Set<string> {
    const needed = new Set<string>();
    for (const r of this.store.all()) {
      if (r.kind === 'committed' || r.unpack || !r.parent) continue;
      try {
        for (const c of this.store.chain(r.parent)) needed.add(c.layer.name);
      } catch {
        /* a broken chain needs nothing */
      }
    }
    return needed;
  }

  /** Removes what no record names: directories, layer files, host mounts, temp files. */
  async cleanup(): Promise<{ removed: string[] }> {
    const removed: string[] = [];
    const ids = new Set(this.store.all().map((r) => r.id));
    for (const d of ['active', 'unpack']) {
      for (const id of fs.readdirSync(this.store.dir(d))) {
        if (ids.has(id)) continue;
        fs.rmSync(this.store.dir(d, id), { recursive: true, force: true });
        removed.push(`${d}/${id}`);
      }
    }
    for (const r of await this.hostMounts.releaseUnneeded(this.neededLayers())) removed.push(`mnt/${r}`);
    const used = new Set(this.store.all().flatMap((r) => (r.layer ? [r.layer] : [])));
    for (const l of this.store.allLayers()) {
      if (used.has(l.name) || this.building.has(l.name) || this.hostMounts.mounted(l.name)) continue;
      this.store.deleteLayer(l.name);
      removed.push(`layers/${l.name}`);
    }
    for (const f of fs.readdirSync(this.store.dir('layers'))) {
      const name = f.replace(/\.json$/, '');
      if (f.startsWith('.') || this.store.layer(name) || this.building.has(name)) continue;
      fs.rmSync(this.store.dir('layers', f), { force: true });
      removed.push(`layers/${f}`);
    }
    if (!this.building.size) {
      for (const f of fs.readdirSync(this.store.tmpDir)) {
        fs.rmSync(path.join(this.store.tmpDir, f), { recursive: true, force: true });
        removed.push(`tmp/${f}`);
      }
    }
    if (removed.length) this.log.info({ removed }, 'cleanup');
    return { removed };
  }
}

/** Bytes (allocated blocks) and inodes below a directory, each hard-linked inode once. */
async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<bigint>();
  let size = 0;
  let inodes = 0;
  const walk = async (d: string) => {
    let entries: fs.Dirent[];
    try {
      entries = await fs.promises.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      const st = await fs.promises.lstat(p, { bigint: true });
      if (!seen.has(st.ino)) {
        seen.add(st.ino);
        inodes++;
        size += Number(st.blocks) * 512;
      }
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return { size, inodes };
}
