// Mounting through the mount(8)/umount(8) programs (util-linux on a host, busybox applets in
// the guest): node has no mount syscall. mountinfo tells what is mounted.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { internal } from './errors.js';

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 60_000 }, (err, _out, stderr) => {
      if (err) reject(internal(`${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`));
      else resolve();
    });
  });
}

/** mount -t FSTYPE -o OPTIONS SOURCE TARGET; fstype "bind" (or a bind option) bind-mounts. */
export async function mount(source: string, target: string, fstype: string, options: string[] = []): Promise<void> {
  const opts = [...options];
  let type = fstype;
  if (type === 'bind' || type === 'rbind') {
    if (!opts.includes('bind') && !opts.includes('rbind')) opts.unshift(type);
    type = 'none';
  }
  const args: string[] = [];
  if (type) args.push('-t', type);
  if (opts.length) args.push('-o', opts.join(','));
  args.push(source, target);
  await run('mount', args);
  // A read-only bind needs a remount to take effect on older mount(8)s.
  if ((opts.includes('bind') || opts.includes('rbind')) && opts.includes('ro')) {
    await run('mount', ['-o', 'remount,bind,ro', target]).catch(() => undefined);
  }
}

export async function umount(target: string, lazy = false): Promise<void> {
  await run('umount', lazy ? ['-l', target] : [target]);
}

/** Mount points from /proc/self/mountinfo (octal escapes decoded). */
export function mountPoints(): string[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 4) out.push(f[4]!.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

export function isMounted(target: string): boolean {
  return mountPoints().includes(target);
}

/** Unmounts everything at and below `dir`, deepest first. */
export async function umountAll(dir: string): Promise<void> {
  const under = mountPoints()
    .filter((m) => m === dir || m.startsWith(dir.endsWith('/') ? dir : `${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of under) await umount(m).catch(() => umount(m, true));
}
