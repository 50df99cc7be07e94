// The snapshotter's metadata: one JSON file per snapshot (named by the sha256 of its key, so a key
// never becomes a path) and one per layer file, each written whole under a temporary name, synced
// and renamed, so a crash leaves the old record or the new one, never half of one. Everything is
// read into memory at start; the files are the truth across restarts.
//
// Layout under the root:
//   snapshots/<sha256(key)>.json   a snapshot record
//   layers/<name>                  a layer file (EROFS + verity tree); <name> = sha256(chain id)
//   layers/<name>.json             what the layer file holds (root hash, digests, sizes)
//   mnt/<name>                     where the layer is mounted read-only on the host
//   active/<id>/fs, work           upper and work dirs of an active snapshot
//   unpack/<id>                    where containerd applies a layer while it is unpacked
//   tmp/                           layer files being built (emptied at start)
//   empty/                         an empty directory (the source of descriptive bind mounts)
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export type Kind = 'active' | 'view' | 'committed';

export interface UnpackInfo {
  /** The chain id this unpack commits ("sha256:<hex>"). */
  chainId: string;
  /** containerd namespace of the unpack (from the key). */
  namespace: string;
  /** The compressed layer's digest when a label named it (CRI). */
  digest?: string;
}

export interface SnapshotRecord {
  key: string;
  kind: Kind;
  parent: string;
  labels: Record<string, string>;
  /** ms since the epoch */
  created: number;
  updated: number;
  /** Names the snapshot's directories (never reused, unlike keys). */
  id: string;
  /** Committed image layers: the layer file's name. */
  layer?: string;
  /** Active snapshots containerd unpacks a layer into. */
  unpack?: UnpackInfo;
}

export interface LayerRecord {
  name: string;
  chainId: string;
  rootHash: string;
  salt: string;
  diffId: string;
  digest: string;
  erofsBytes: number;
  fileBytes: number;
  inodes: number;
  built: number;
}

const HEX64 = /^[0-9a-f]{64}$/;

export function layerName(chainId: string): string {
  return createHash('sha256').update(chainId).digest('hex');
}

function recordFile(key: string): string {
  return `${createHash('sha256').update(key).digest('hex')}.json`;
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `file` whole or not at all: temp name, fsync, rename, fsync of the directory. */
export function writeFileAtomic(file: string, data: string | Buffer): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

function removeSynced(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return;
  }
  fsyncDir(path.dirname(file));
}

function isRecord(x: unknown): x is SnapshotRecord {
  const r = x as SnapshotRecord;
  return (
    typeof r === 'object' &&
    r !== null &&
    typeof r.key === 'string' &&
    (r.kind === 'active' || r.kind === 'view' || r.kind === 'committed') &&
    typeof r.parent === 'string' &&
    typeof r.labels === 'object' &&
    typeof r.id === 'string' &&
    /^[0-9a-f]{32}$/.test(r.id) &&
    (r.layer === undefined || HEX64.test(r.layer))
  );
}

function isLayer(x: unknown): x is LayerRecord {
  const l = x as LayerRecord;
  return typeof l === 'object' && l !== null && HEX64.test(l.name) && HEX64.test(l.rootHash) && typeof l.chainId === 'string' && Number.isSafeInteger(l.erofsBytes);
}

export class Store {
  private readonly snapshots = new Map<string, SnapshotRecord>();
  private readonly layers = new Map<string, LayerRecord>();
  /** Records that could not be read at start (named in the log, left in place). */
  readonly unreadable: string[] = [];

  constructor(readonly root: string) {}

  dir(...p: string[]): string {
    return path.join(this.root, ...p);
  }
  layerFile(name: string): string {
    return this.dir('layers', name);
  }
  layerMount(name: string): string {
    return this.dir('mnt', name);
  }
  activeDir(id: string): string {
    return this.dir('active', id);
  }
  unpackDir(id: string): string {
    return this.dir('unpack', id);
  }
  get emptyDir(): string {
    return this.dir('empty');
  }
  get tmpDir(): string {
    return this.dir('tmp');
  }

  /** Creates the layout and reads every record. */
  open(): void {
    fs.mkdirSync(this.root, { recursive: true, mode: 0o700 });
    fs.chmodSync(this.root, 0o700);
    for (const d of ['snapshots', 'layers', 'mnt', 'active', 'unpack', 'tmp', 'empty']) fs.mkdirSync(this.dir(d), { recursive: true, mode: 0o700 });
    fs.chmodSync(this.emptyDir, 0o555);
    // Half-built layer files of a previous run.
    for (const f of fs.readdirSync(this.tmpDir)) fs.rmSync(path.join(this.tmpDir, f), { recursive: true, force: true });
    for (const f of fs.readdirSync(this.dir('snapshots'))) {
      const p = this.dir('snapshots', f);
      if (f.startsWith('.') && f.endsWith('.tmp')) {
        fs.rmSync(p, { force: true });
        continue;
      }
      try {
        const r: unknown = JSON.parse(fs.readFileSync(p, 'utf8'));
        if (!isRecord(r) || recordFile(r.key) !== f) throw new Error('not a snapshot record');
        this.snapshots.set(r.key, r);
      } catch {
        this.unreadable.push(p);
      }
    }
    for (const f of fs.readdirSync(this.dir('layers'))) {
      const p = this.dir('layers', f);
      if (f.startsWith('.')) {
        fs.rmSync(p, { force: true }); // a record's temp file
        continue;
      }
      if (!f.endsWith('.json')) continue;
      try {
        const l: unknown = JSON.parse(fs.readFileSync(p, 'utf8'));
        if (!isLayer(l) || `${l.name}.json` !== f) throw new Error('not a layer record');
        this.layers.set(l.name, l);
      } catch {
        this.unreadable.push(p);
      }
    }
  }

  newId(): string {
    return randomBytes(16).toString('hex');
  }

  get(key: string): SnapshotRecord | undefined {
    return this.snapshots.get(key);
  }
  all(): SnapshotRecord[] {
    return [...this.snapshots.values()];
  }
  children(key: string): SnapshotRecord[] {
    return this.all().filter((r) => r.parent === key);
  }

  put(r: SnapshotRecord): void {
    writeFileAtomic(this.dir('snapshots', recordFile(r.key)), JSON.stringify(r));
    this.snapshots.set(r.key, r);
  }

  delete(key: string): void {
    removeSynced(this.dir('snapshots', recordFile(key)));
    this.snapshots.delete(key);
  }

  layer(name: string): LayerRecord | undefined {
    return this.layers.get(name);
  }
  allLayers(): LayerRecord[] {
    return [...this.layers.values()];
  }
  putLayer(l: LayerRecord): void {
    writeFileAtomic(this.dir('layers', `${l.name}.json`), JSON.stringify(l));
    this.layers.set(l.name, l);
  }
  /** Removes the layer's record first, then its file: a record never names a missing file. */
  deleteLayer(name: string): void {
    removeSynced(this.dir('layers', `${name}.json`));
    this.layers.delete(name);
    removeSynced(this.layerFile(name));
  }

  /** The committed layer chain under a parent, top first. */
  chain(parent: string): { record: SnapshotRecord; layer: LayerRecord }[] {
    const out: { record: SnapshotRecord; layer: LayerRecord }[] = [];
    const seen = new Set<string>();
    for (let k = parent; k; ) {
      if (seen.has(k)) throw new Error(`snapshot ${k}: its parents form a loop`);
      seen.add(k);
      const r = this.snapshots.get(k);
      if (!r) throw new Error(`snapshot ${k}: missing parent in the chain`);
      const l = r.layer ? this.layers.get(r.layer) : undefined;
      if (!l) throw new Error(`snapshot ${k}: not an image layer`);
      out.push({ record: r, layer: l });
      k = r.parent;
    }
    return out;
  }
}
