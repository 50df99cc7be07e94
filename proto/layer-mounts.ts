// The mounts the tardev snapshotter hands containerd for a container's snapshot, and what the shim
// reads back from them: the contract between snapshotter/ and shim/.
//
// A snapshot over image layers comes as one or more descriptive bind mounts followed by the mount
// the host really uses (an overlay of the layers the snapshotter keeps mounted read-only). A
// descriptive mount lists layers in the style of Kata's tardev snapshotter:
//   io.katacontainers.fs-opt.layer-src-prefix=<dir holding the layer files>
//   io.katacontainers.fs-opt.layer=<base64 of "<name>,erofs,ro,io.katacontainers.fs-opt.block_device=file,
//                                   io.katacontainers.fs-opt.is-layer,io.katacontainers.fs-opt.root-hash=<hex>">
//   io.katacontainers.fs-opt.overlay-rw   (an active snapshot: the guest adds a writable layer)
// topmost layer first, the layer file being <layer-src-prefix>/<name>. It is a read-only bind of an
// empty directory: the kernel ignores a bind mount's data, so containerd (1.6, 1.7, 2.x), runc and
// CRI mount the list as it is, the overlay landing on top. containerd refuses mount data over a page,
// so the layers are spread over as many descriptive mounts as needed, in order.

export const FS_OPT = 'io.katacontainers.fs-opt';
export const LAYER_SRC_PREFIX = `${FS_OPT}.layer-src-prefix=`;
export const LAYER = `${FS_OPT}.layer=`;
export const OVERLAY_RW = `${FS_OPT}.overlay-rw`;
export const ROOT_HASH = `${FS_OPT}.root-hash=`;
/** The label a committed layer snapshot carries its root hash in (tardev's name). */
export const ROOT_HASH_LABEL = 'io.katacontainers.dm-verity.root-hash';
/** The filesystem inside a layer file. */
export const LAYER_FSTYPE = 'erofs';

export interface MountSpec {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface LayerRef {
  /** sha256 of the layer's chain id, hex: the layer file's name. */
  name: string;
  rootHash: string;
  fstype: string;
  /** The options after the fstype (ro and the fs-opt flags). */
  options: string[];
}

export interface LayerMounts {
  srcPrefix: string;
  /** Topmost first. */
  layers: LayerRef[];
  writable: boolean;
}

/** containerd refuses mount data longer than a page (minus its 512-byte margin for overlay). */
const DATA_BUDGET = 4096 - 512;

export function layerOption(name: string, rootHash: string): string {
  const info = [name, LAYER_FSTYPE, 'ro', `${FS_OPT}.block_device=file`, `${FS_OPT}.is-layer`, `${ROOT_HASH}${rootHash}`].join(',');
  return LAYER + Buffer.from(info).toString('base64');
}

/** The descriptive mounts for layers (topmost first); none for no layers. */
export function describeLayers(srcPrefix: string, emptyDir: string, layers: { name: string; rootHash: string }[], writable: boolean): MountSpec[] {
  const out: MountSpec[] = [];
  if (!layers.length) return out;
  const head = `${LAYER_SRC_PREFIX}${srcPrefix}`;
  let cur: string[] = [];
  let size = head.length;
  const flush = () => {
    out.push({ type: 'bind', source: emptyDir, target: '', options: ['ro', 'rbind', head, ...cur] });
    cur = [];
    size = head.length;
  };
  for (const l of layers) {
    const o = layerOption(l.name, l.rootHash);
    if (cur.length && size + 1 + o.length > DATA_BUDGET) flush();
    cur.push(o);
    size += 1 + o.length;
  }
  if (writable) {
    if (size + 1 + OVERLAY_RW.length > DATA_BUDGET) flush();
    cur.push(OVERLAY_RW);
  }
  if (cur.length) flush();
  return out;
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * The layers a mount list describes, or null when it describes none. Throws on a malformed
 * description (a mount list from the host is not trusted to be well formed).
 */
export function parseLayerMounts(mounts: Pick<MountSpec, 'type' | 'options'>[]): LayerMounts | null {
  let srcPrefix: string | undefined;
  const layers: LayerRef[] = [];
  let writable = false;
  let described = false;
  for (const m of mounts) {
    if (!m.options.some((o) => o.startsWith(`${FS_OPT}.`))) continue;
    described = true;
    if (m.type !== 'bind') throw new Error(`layer mounts: ${FS_OPT} options on a ${m.type} mount`);
    for (const o of m.options) {
      if (o.startsWith(LAYER_SRC_PREFIX)) {
        const p = o.slice(LAYER_SRC_PREFIX.length);
        if (!p.startsWith('/') || (srcPrefix !== undefined && srcPrefix !== p)) throw new Error(`layer mounts: bad or inconsistent ${LAYER_SRC_PREFIX}${p}`);
        srcPrefix = p;
      } else if (o.startsWith(LAYER)) {
        const info = Buffer.from(o.slice(LAYER.length), 'base64').toString('utf8').split(',');
        const [name, fstype, ...options] = info;
        const rh = options.find((x) => x.startsWith(ROOT_HASH))?.slice(ROOT_HASH.length);
        if (!name || !HEX64.test(name) || !fstype || !rh || !HEX64.test(rh)) throw new Error(`layer mounts: malformed layer option ${o.slice(0, 100)}`);
        layers.push({ name, fstype, rootHash: rh, options });
      } else if (o === OVERLAY_RW) writable = true;
    }
  }
  if (!described) return null;
  if (srcPrefix === undefined || !layers.length) throw new Error('layer mounts: no layer source prefix or no layers');
  return { srcPrefix, layers, writable };
}
