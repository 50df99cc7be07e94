// Host mounts the shim makes for a container (its rootfs, shared bind sources), done with
// util-linux's mount(8): Node has no mount(2), and mount(8) handles overlay's long option strings.
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface MountSpec {
  type: string;
  source: string;
  options: string[];
}

export async function mount(m: MountSpec, target: string): Promise<void> {
  // A file bind mount's target is a file (made by bindMount): only a missing target becomes a dir.
  if (!fs.existsSync(target)) fs.mkdirSync(target, { recursive: true });
  const args = ['-t', m.type || 'none'];
  const opts = m.options.filter((o) => o.length > 0);
  if (opts.length) args.push('-o', opts.join(','));
  args.push(m.source || 'none', target);
  try {
    await run('mount', args);
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`mount ${m.type} ${m.source} on ${target}: ${(err.stderr || err.message).trim()}`);
  }
}

export async function bindMount(source: string, target: string, readonly = false): Promise<void> {
  if (fs.statSync(source).isDirectory()) fs.mkdirSync(target, { recursive: true });
  else {
    fs.mkdirSync(path.dirname(target), { recursive: true });
    if (!fs.existsSync(target)) fs.writeFileSync(target, '');
  }
  await mount({ type: 'none', source, options: ['bind'] }, target);
  if (readonly) await mount({ type: 'none', source: 'none', options: ['remount', 'bind', 'ro'] }, target);
}

/** A mountinfo path field as the path it names (mountinfo escapes space, tab, newline, backslash in octal). */
export function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points at or below dir (symlinks resolved), deepest first, each once. */
export function mountsUnder(dir: string): string[] {
  const root = fs.existsSync(dir) ? fs.realpathSync(dir) : path.resolve(dir);
  const points = new Set<string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const mp = unescapeMountPath(field);
    if (mp === root || mp.startsWith(root + '/')) points.add(mp);
  }
  return [...points].sort((a, b) => b.length - a.length);
}

/** Unmounts everything at and below `root`, deepest first; lazily when busy, so cleanup never hangs. */
export async function unmountAll(root: string): Promise<void> {
  for (const t of mountsUnder(root)) {
    try {
      await run('umount', [t]);
    } catch {
      await run('umount', ['-l', t]).catch(() => undefined);
    }
  }
}

/**
 * Unmounts everything below dir, then removes it. Other processes may be unmounting or removing
 * parts of the same tree at that moment (containerd runs `shim delete` as each task's connection
 * closes), so the removal retries briefly on EBUSY/ENOTEMPTY instead of failing the first time.
 */
export async function removeTree(dir: string): Promise<void> {
  await unmountAll(dir);
  fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}
