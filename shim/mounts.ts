// Host mounts the shim makes for a container (its rootfs, shared bind sources), through sys/mount.
import fs from 'node:fs';
import path from 'node:path';
import { mount as sysMount } from '../sys/mount.js';

export interface MountSpec {
  type: string;
  source: string;
  options: string[];
}

export async function mount(m: MountSpec, target: string): Promise<void> {
  // A file bind mount's target is a file (made by bindMount): only a missing target becomes a dir.
  if (!fs.existsSync(target)) fs.mkdirSync(target, { recursive: true });
  try {
    await sysMount(m.source || 'none', target, m.type || 'none', m.options);
  } catch (e) {
    throw new Error(`mount ${m.type} ${m.source} on ${target}: ${(e as Error).message}`);
  }
}

export async function bindMount(source: string, target: string, readonly = false): Promise<void> {
  if (fs.statSync(source).isDirectory()) fs.mkdirSync(target, { recursive: true });
  else {
    fs.mkdirSync(path.dirname(target), { recursive: true });
    if (!fs.existsSync(target)) fs.writeFileSync(target, '');
  }
  await mount({ type: 'none', source, options: readonly ? ['bind', 'ro'] : ['bind'] }, target);
}
