// A container's Create once its pod's VM is ready: its files shared with the guest, the
// container created there with its init's output open, or, on any failure, nothing of it left
// in the guest or in the share.
import type { Logger } from 'pino';
import type { CallContext } from '../proto/ttrpc/index.js';
import type { containerd, grpc } from '../proto/gen/types.js';
import type { GuestHandle } from './guest.js';
import type { ShimProcess, StdioPaths } from './process.js';
import { constrainNamespaces } from './container-spec.js';
import { shareContainerFiles, unshareContainerFiles } from './rootfs-share.js';
import { invalid } from './errdefs.js';
import { AGENT_TEARDOWN_TIMEOUT_MS, setupCall } from './agent-calls.js';
import { parseLayerMounts, type LayerMounts } from '../proto/layer-mounts.js';
import { guestRootfs } from './layer-disks.js';

/** The verified layers the snapshotter's mounts describe, or null for any other rootfs. */
function layersOf(id: string, rootfs: containerd.types.Mount[]): LayerMounts | null {
  try {
    return parseLayerMounts(rootfs.map((m) => ({ type: m.type, options: m.options })));
  } catch (e) {
    throw invalid(`container ${id}: ${(e as Error).message}`);
  }
}

export interface ContainerCreate {
  id: string;
  bundle: string;
  rootfs: containerd.types.Mount[];
  stdio: StdioPaths;
  spec: grpc.Spec;
  guest: GuestHandle;
  /** The guest holds the pod's /dev/shm. */
  podShm: boolean;
  ctx: CallContext;
  log: Logger;
  /** The init process object for this container (not started). */
  newInit: () => ShimProcess;
}

export interface CreatedContainer {
  init: ShimProcess;
  sharedDir: string;
  sandboxPidns: boolean;
}

export async function createContainerInGuest(r: ContainerCreate): Promise<CreatedContainer> {
  const { id, spec, guest, log } = r;
  const sandboxPidns = constrainNamespaces(spec);
  const layers = guest.layers ? layersOf(id, r.rootfs) : null;
  let storages: grpc.Storage[] = [];
  if (layers) {
    storages = await guest.layers!.storagesFor(id, layers);
    spec.Root = { Path: guestRootfs(id), Readonly: spec.Root?.Readonly ?? false };
    log.info({ layers: layers.layers.map((l) => l.name), writable: layers.writable }, 'rootfs as verified layers on hot-plugged disks');
  }
  let sharedDir: string;
  try {
    const call = setupCall(r.ctx);
    sharedDir = await shareContainerFiles({ id, bundle: r.bundle, rootfs: r.rootfs, spec, guest, podShm: r.podShm, rootfsInGuest: !!layers, call });
  } catch (e) {
    if (layers) await guest.layers!.release(id);
    throw e;
  }
  if (!layers) log.debug({ rootfs: spec.Root?.Path }, 'rootfs shared with the guest');
  if (spec.Process) spec.Process.Terminal = r.stdio.terminal;
  const init = r.newInit();
  let inGuest = false;
  try {
    await guest.agent.CreateContainer({ container_id: id, exec_id: id, OCI: spec, storages, devices: [], sandbox_pidns: sandboxPidns }, setupCall(r.ctx));
    inGuest = true;
    await init.openOutput();
  } catch (e) {
    // Also after a timeout: the guest may have finished the create the shim gave up on.
    await guest.agent
      .RemoveContainer({ container_id: id, timeout: 10 }, { timeoutMs: AGENT_TEARDOWN_TIMEOUT_MS })
      .catch((err) => log.debug({ err }, 'RemoveContainer after a failed create failed'));
    await unshareContainerFiles(sharedDir);
    if (layers) await guest.layers!.release(id);
    throw inGuest ? invalid((e as Error).message) : e;
  }
  return { init, sharedDir, sandboxPidns };
}
