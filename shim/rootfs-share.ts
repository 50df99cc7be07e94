// A container's files on their way into the guest: its rootfs and the sources of its bind mounts
// are mounted below the pod's shared directory, and the spec is rewritten to the paths the guest
// sees them at. Without a shared filesystem (shared_fs = none) the rootfs comes as verified layers
// and bind-mount sources are copied into the guest instead (guest-copy.ts).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { containerd, grpc } from '../proto/gen/types.js';
import { removeTree, unmountAll } from '../sys/mount.js';
import { bindMount, isHostSystemPath, mount } from './mounts.js';
import { SHARED_FS_TAG, type GuestHandle } from './guest.js';
import { isBindMount, isPodShm } from './container-spec.js';
import { invalid } from './errdefs.js';
import { copyIntoGuest, planCopy, type CopyPlan } from './guest-copy.js';
import type { CallOptions } from '../proto/ttrpc/index.js';

/** The agent storage that mounts the pod's shared directory, as upstream Kata names it (none for a local agent). */
export function sharedStorage(g: Pick<GuestHandle, 'sharedFs' | 'guestDirs'>) {
  const mount_point = g.guestDirs.shared;
  if (g.sharedFs === 'host' || g.sharedFs === 'none') return [];
  if (g.sharedFs === 'virtio-fs') return [{ driver: 'virtio-fs', source: SHARED_FS_TAG, fstype: 'virtiofs', options: [], mount_point }];
  return [{ driver: '9p', source: SHARED_FS_TAG, fstype: '9p', options: ['trans=virtio', 'version=9p2000.L', 'msize=512000', 'cache=mmap'], mount_point }];
}

export interface ShareRequest {
  id: string;
  bundle: string;
  rootfs: containerd.types.Mount[];
  spec: grpc.Spec;
  guest: Pick<GuestHandle, 'agent' | 'sharedDir' | 'sharedFs' | 'guestDirs'>;
  /** The guest holds the pod's /dev/shm (the sandbox had a private one): binds of it go there. */
  podShm: boolean;
  /** The guest assembles the rootfs from verified layers (spec.Root set already): only binds are shared. */
  rootfsInGuest?: boolean;
  /** The agent calls that copy bind-mount sources into a guest without a shared filesystem. */
  call: CallOptions;
}

/**
 * Makes the container's rootfs and bind-mount sources visible in the shared directory and
 * rewrites the spec to the guest's paths. Returns the container's host dir in the share; on
 * failure nothing of it is left mounted.
 */
export async function shareContainerFiles(r: ShareRequest): Promise<string> {
  const dir = path.join(r.guest.sharedDir, r.id);
  try {
    await share(r, dir);
  } catch (e) {
    await unmountAll(dir);
    throw e;
  }
  return dir;
}

async function share({ id, bundle, rootfs, spec, guest, podShm, rootfsInGuest, call }: ShareRequest, dir: string): Promise<void> {
  const guestDir = `${guest.guestDirs.shared}/${id}`;
  if (!rootfsInGuest) {
    if (guest.sharedFs === 'none') throw invalid(`container ${id}: shared_fs = none and its rootfs is not made of verified layers (run it with the tardev snapshotter, or set [hypervisor.qemu] shared_fs to "virtio-9p" or "virtio-fs")`);
    const target = path.join(dir, 'rootfs');
    fs.mkdirSync(target, { recursive: true, mode: 0o700 });
    if (rootfs.length > 0) {
      for (const m of rootfs) await mount({ type: m.type, source: m.source, options: m.options }, target);
    } else {
      const root = spec.Root?.Path ?? 'rootfs';
      await bindMount(path.resolve(bundle, root), target);
    }
    spec.Root = { Path: `${guestDir}/rootfs`, Readonly: spec.Root?.Readonly ?? false };
  }
  const copies: { m: grpc.Mount; target: string; plan: CopyPlan }[] = [];
  for (const m of spec.Mounts ?? []) {
    if (!isBindMount(m) || !m.source.startsWith('/')) continue;
    if (isPodShm(m) && podShm) {
      m.source = guest.guestDirs.sandboxShm;
      continue;
    }
    if (isHostSystemPath(m.source)) continue;
    if (!fs.existsSync(m.source)) throw invalid(`container ${id}: bind mount source ${m.source} does not exist`);
    const name = `${crypto.createHash('sha256').update(m.destination).digest('hex').slice(0, 12)}-${path.basename(m.source)}`;
    if (guest.sharedFs === 'none') {
      const target = `${guestDir}/mounts/${name}`;
      copies.push({ m, target, plan: planCopy(m.source, target, `container ${id}: bind mount of ${m.source} at ${m.destination}`) });
      continue;
    }
    await bindMount(m.source, path.join(dir, 'mounts', name), { readonly: m.options.includes('ro'), recursive: m.type === 'rbind' || m.options.includes('rbind') });
    m.source = `${guestDir}/mounts/${name}`;
  }
  // Every mount is planned, and refused if it must be, before the first byte goes into the guest.
  for (const c of copies) {
    await copyIntoGuest(c.plan, { agent: guest.agent, call });
    c.m.source = c.target;
  }
}

/** Undoes shareContainerFiles once the guest let go of the files. */
export async function unshareContainerFiles(dir: string): Promise<void> {
  await removeTree(dir);
}
