// Which blob in containerd's content store holds the layer of a chain id. CRI names it in a label
// (containerd.io/snapshot/cri.layer-digest); `ctr images import` and `ctr run` on containerd 1.6
// and 1.7 unpack without labels, naming only the chain id in the unpack key. Then the image
// manifests in the namespace (content carrying the `containerd.io/gc.ref.content.config` label
// that import and pull put on them) and their configs' diff_ids say which layer has that chain id.
import { createHash } from 'node:crypto';
import type { ContentClient } from './content.js';

export const DIGEST = /^sha256:[0-9a-f]{64}$/;
const MAX_MANIFEST = 4 * 1024 * 1024;
const MAX_CONFIG = 16 * 1024 * 1024;

export interface LayerBlob {
  digest: string;
  diffId: string;
  /** The chain id below it ("" for a base layer). */
  parentChain: string;
}

/** The OCI chain id after `diffId` on top of `parentChain` (a base layer's is its diff_id). */
export function chainIdOf(parentChain: string, diffId: string): string {
  return parentChain ? 'sha256:' + createHash('sha256').update(`${parentChain} ${diffId}`).digest('hex') : diffId;
}

interface ManifestChains {
  layers: LayerBlob[];
  chains: string[];
}

export class LayerResolver {
  /** Manifest digest -> what its layers are (manifests never change under a digest). */
  private readonly cache = new Map<string, ManifestChains | null>();

  constructor(private readonly content: ContentClient) {}

  private async manifest(namespace: string, digest: string): Promise<ManifestChains | null> {
    const have = this.cache.get(digest);
    if (have !== undefined) return have;
    let out: ManifestChains | null = null;
    try {
      const m = JSON.parse((await this.content.readAll(namespace, digest, MAX_MANIFEST)).toString('utf8')) as {
        config?: { digest?: unknown };
        layers?: { digest?: unknown }[];
      };
      const configDigest = m.config?.digest;
      if (typeof configDigest === 'string' && DIGEST.test(configDigest) && Array.isArray(m.layers)) {
        const c = JSON.parse((await this.content.readAll(namespace, configDigest, MAX_CONFIG)).toString('utf8')) as { rootfs?: { diff_ids?: unknown } };
        const diffIds = c.rootfs?.diff_ids;
        if (Array.isArray(diffIds) && diffIds.length === m.layers.length && diffIds.every((d) => typeof d === 'string' && DIGEST.test(d))) {
          const layers: LayerBlob[] = [];
          const chains: string[] = [];
          let chain = '';
          for (const [i, l] of m.layers.entries()) {
            if (typeof l.digest !== 'string' || !DIGEST.test(l.digest)) throw new Error('bad layer digest');
            layers.push({ digest: l.digest, diffId: diffIds[i] as string, parentChain: chain });
            chain = chainIdOf(chain, diffIds[i] as string);
            chains.push(chain);
          }
          out = { layers, chains };
        }
      }
    } catch {
      out = null; // not a manifest we can read: not the one we look for
    }
    this.cache.set(digest, out);
    return out;
  }

  /** The layer blob whose chain id is `chainId` in `namespace`, or null. */
  async byChainId(namespace: string, chainId: string): Promise<LayerBlob | null> {
    const manifests = await this.content.list(namespace, ['labels."containerd.io/gc.ref.content.config"']);
    for (const m of manifests.sort((a, b) => (a.digest < b.digest ? -1 : 1))) {
      if (!DIGEST.test(m.digest)) continue;
      const mc = await this.manifest(namespace, m.digest);
      const i = mc?.chains.indexOf(chainId) ?? -1;
      if (mc && i >= 0) return mc.layers[i]!;
    }
    return null;
  }
}
