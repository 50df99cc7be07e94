// Host mounts the shim makes for a container (its rootfs, shared bind sources), through sys/mount.
// Everything below the shared dir is the guest's to write into: every such mount is nosuid and
// nodev on the host (submounts of a recursive bind too), so a file the guest plants there can
// never act as a setuid binary or a device node for the host.
import fs from 'node:fs';
import path from 'node:path';
import { MOUNT_TIMEOUT, MOUNT_TIMEOUT_MS, mount as sysMount, mountInfo } from '../sys/mount.js';
import { runToolOk } from '../sys/exec.js';

export interface MountSpec {
  type: string;
  source: string;
  options: string[];
}

/** Per-mount flags every shim mount carries on the host. */
export const HOST_MOUNT_FLAGS = ['nosuid', 'nodev'];
/** Options that would undo them. */
const UNSAFE = new Set(['suid', 'dev']);

/** Host paths that are the host's own system (devices, proc, sys): whole first segment, not a prefix. */
export function isHostSystemPath(p: string): boolean {
  const first = path.posix.resolve('/', p).split('/')[1] ?? '';
  return first === 'dev' || first === 'proc' || first === 'sys';
}

export async function mount(m: MountSpec, target: string): Promise<void> {
  // A file bind mount's target is a file (made by bindMount): only a missing target becomes a dir.
  if (!fs.existsSync(target)) fs.mkdirSync(target, { recursive: true, mode: 0o700 });
  const options = [...m.options.filter((o) => !UNSAFE.has(o) && !HOST_MOUNT_FLAGS.includes(o)), ...HOST_MOUNT_FLAGS];
  try {
    await sysMount(m.source || 'none', target, m.type || 'none', options);
    if (m.type === 'rbind' || m.options.includes('rbind')) await hardenSubmounts(target);
  } catch (e) {
    throw new Error(`mount ${m.type} ${m.source} on ${target}: ${(e as Error).message}`);
  }
}

/** Binds `source` at `target`; `recursive` (a container mount's rbind) takes its submounts along. */
export async function bindMount(source: string, target: string, o: { readonly?: boolean; recursive?: boolean } = {}): Promise<void> {
  if (fs.statSync(source).isDirectory()) fs.mkdirSync(target, { recursive: true, mode: 0o700 });
  else {
    fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
    if (!fs.existsSync(target)) fs.writeFileSync(target, '', { mode: 0o600 });
  }
  await mount({ type: 'none', source, options: [o.recursive ? 'rbind' : 'bind', ...(o.readonly ? ['ro'] : [])] }, target);
}

/**
 * A recursive bind copies each submount with its own flags, and a remount changes only the top:
 * every submount below `target` is remounted nosuid,nodev too, keeping its ro and noexec.
 */
async function hardenSubmounts(target: string): Promise<void> {
  const root = fs.realpathSync(target);
  const seen = new Set<string>();
  for (const mi of mountInfo()) {
    const mp = mi.mountPoint;
    if (!mp.startsWith(`${root}/`) || seen.has(mp)) continue;
    seen.add(mp);
    if (HOST_MOUNT_FLAGS.every((f) => mi.options.includes(f))) continue;
    const keep = mi.options.filter((x) => x === 'ro' || x === 'noexec');
    await runToolOk('mount', ['-o', ['remount', 'bind', ...keep, ...HOST_MOUNT_FLAGS].join(','), mp], { timeoutMs: MOUNT_TIMEOUT_MS, timeoutCode: MOUNT_TIMEOUT });
  }
}
