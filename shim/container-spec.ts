// A container's OCI spec on its way from containerd's bundle to the agent: read and converted,
// its role in the pod read from CRI's annotation, and host-only parts taken out (Kata's
// constrainGRPCSpec).
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import { ociToGrpcSpec, OciSpecError } from '../proto/oci.js';
import { invalid } from './errdefs.js';

export const CONTAINER_TYPE_ANNOTATION = 'io.kubernetes.cri.container-type';
/** containerd's CRI default for the sandbox's shm size, used when the host's cannot be read. */
const DEFAULT_SHM_BYTES = 64 * 1024 * 1024;

/** config.json of a bundle in the agent API's form. */
export function readBundleSpec(bundle: string): grpc.Spec {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8'));
  } catch (e) {
    throw invalid(`bundle ${bundle}: cannot read config.json: ${(e as Error).message}`);
  }
  try {
    return ociToGrpcSpec(json);
  } catch (e) {
    if (e instanceof OciSpecError) throw invalid(`bundle ${bundle}: ${e.message}`);
    throw e;
  }
}

/** CRI's word for the container's role ('sandbox' or 'container'); undefined without CRI. */
export function containerType(spec: grpc.Spec): string | undefined {
  return spec.Annotations?.[CONTAINER_TYPE_ANNOTATION] || undefined;
}

export function isBindMount(m: grpc.Mount): boolean {
  return m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');
}

/** A bind of a private /dev/shm (CRI's sandbox shm dir on the host); the host's own /dev/shm is not one. */
export function isPodShm(m: grpc.Mount): boolean {
  return m.destination === '/dev/shm' && m.source !== '/dev/shm';
}

/**
 * Size of the pod's /dev/shm from a CRI sandbox container's spec: 0 when the pod has none of its
 * own. Only CRI's pause container says that its /dev/shm is the pod's: elsewhere a bind onto
 * /dev/shm is the user's directory and goes through the share like any other.
 */
export function podShmBytes(spec: grpc.Spec): number {
  if (containerType(spec) !== 'sandbox') return 0;
  const m = (spec.Mounts ?? []).find((x) => isPodShm(x) && isBindMount(x));
  if (!m) return 0;
  try {
    const st = fs.statfsSync(m.source);
    return st.blocks * st.bsize || DEFAULT_SHM_BYTES;
  } catch {
    return DEFAULT_SHM_BYTES;
  }
}

/**
 * Host namespace paths mean nothing in the guest (Kata's constrainGRPCSpec and handlePidNamespace):
 * the network stack is the VM's and cgroup namespaces are the guest's own, so both go; a pid
 * namespace with a path asks to join the pod's (returned, for sandbox_pidns); other paths are
 * cleared, and the agent puts ipc and uts into the pod's shared namespaces.
 */
export function constrainNamespaces(spec: grpc.Spec): boolean {
  if (!spec.Linux) return false;
  let sandboxPidns = false;
  spec.Linux.Namespaces = spec.Linux.Namespaces.filter((n) => n.Type !== 'network' && n.Type !== 'cgroup').map((n) => {
    if (n.Type === 'pid' && n.Path) sandboxPidns = true;
    return { ...n, Path: '' };
  });
  return sandboxPidns;
}
