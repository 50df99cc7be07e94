// Where a shim keeps things on the host, derived from ids alone so that `start`, the daemon and
// `delete` (which may run after the daemon died) agree without talking to each other.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { checkId } from '../sys/ids.js';

const GROUP_ANNOTATIONS = ['io.kubernetes.cri.sandbox-id', 'io.containerd.runc.v2.group'];

/**
 * The pod a container belongs to: the CRI sandbox id annotation, else the container itself. The
 * annotation is the pod's word, and it becomes the sandbox's state dir, socket and log names: an
 * invalid one throws InvalidIdError naming the annotation.
 */
export function groupingId(bundle: string, id: string): string {
  let annotations: Record<string, string> | undefined;
  try {
    annotations = (JSON.parse(fs.readFileSync(path.join(bundle, 'config.json'), 'utf8')) as { annotations?: Record<string, string> }).annotations;
  } catch {
    // No readable spec: the container is its own group.
  }
  for (const k of GROUP_ANNOTATIONS) {
    const v = annotations?.[k];
    if (v) return checkId(v, `annotation ${k}`);
  }
  return checkId(id, 'shim id');
}

/**
 * Every dir the shim makes on the host (state root, sockets, sandboxes, shared, logs) is 0700 from
 * its mkdir: the mode is asked for at creation, and a umask can only take bits away. QEMU and
 * virtiofsd run as root here, so nothing needs the 0711 traversal bit.
 */
export function privateDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

export function socketPath(stateDir: string, containerdAddress: string, namespace: string, grouping: string): string {
  const h = crypto.createHash('sha256').update(path.join(containerdAddress, namespace, grouping)).digest('hex');
  return path.join(stateDir, 's', h.slice(0, 32));
}

export function sandboxDir(stateDir: string, sandboxId: string): string {
  return path.join(stateDir, 'sandboxes', checkId(sandboxId, 'sandbox id'));
}

/** What `shim delete` needs to clean up after a daemon that died. */
export interface SandboxRecord {
  sandboxId: string;
  namespace: string;
  shimPid: number;
  vmmPid?: number;
  virtiofsdPid?: number;
  sharedDir?: string;
  /** Host cgroup directories made for the sandbox (see sandbox-cgroups.ts). */
  cgroupDirs?: string[];
  socket: string;
}

export function writeRecord(stateDir: string, rec: SandboxRecord): void {
  const dir = privateDir(sandboxDir(stateDir, rec.sandboxId));
  const tmp = path.join(dir, '.shim.json');
  fs.writeFileSync(tmp, JSON.stringify(rec), { mode: 0o600 });
  fs.renameSync(tmp, path.join(dir, 'shim.json'));
}

export function readRecord(stateDir: string, sandboxId: string): SandboxRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(sandboxDir(stateDir, sandboxId), 'shim.json'), 'utf8')) as SandboxRecord;
  } catch {
    return undefined;
  }
}

/** The pid still runs a process of this sandbox (not a recycled pid): its command line names the sandbox dir. */
export function isSandboxProcess(pid: number, dir: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir);
  } catch {
    return false;
  }
}
