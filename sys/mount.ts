// Mounting through mount(8)/umount(8) (util-linux on a host, busybox applets in the guest): node
// has no mount(2), and mount(8) handles overlay's long option strings. Every call has a time limit
// (a hung NFS or FUSE source must not hang a shim or the agent) and /proc/self/mountinfo says what
// is mounted.
import fs from 'node:fs';
import path from 'node:path';
import { runTool, runToolOk } from './exec.js';

/** How long one mount(8) or umount(8) may take. */
export const MOUNT_TIMEOUT_MS = 60_000;
export const MOUNT_TIMEOUT = 'KATATS_MOUNT_TIMEOUT';

function tool(cmd: string, args: string[]): Promise<unknown> {
  return runToolOk(cmd, args, { timeoutMs: MOUNT_TIMEOUT_MS, timeoutCode: MOUNT_TIMEOUT });
}

function isBind(fstype: string, options: string[]): boolean {
  return fstype === 'bind' || fstype === 'rbind' || options.includes('bind') || options.includes('rbind');
}

/**
 * A mount target its caller resolved itself (the agent walks below its own directories without
 * following symlinks): mount(8) is given `ref`, a /proc/PID/fd/N name of an open file descriptor
 * on the directory or file to mount onto, so no path is looked up again by name in between.
 * `root` names the mount's root once it is there (the name looked up in the pinned parent
 * directory), for the read-only remount and an undo.
 */
export interface PinnedTarget {
  /** the path, for messages */
  path: string;
  ref: string;
  root: string;
}

let canonicalizes: Promise<boolean> | undefined;

/**
 * util-linux mount(8) resolves its arguments to canonical paths unless told not to (-c), which
 * would turn a pinned /proc/PID/fd/N back into a path looked up by name; busybox's does not
 * canonicalize and has no -c.
 */
function mountCanonicalizes(): Promise<boolean> {
  canonicalizes ??= runTool('mount', ['-V'], { timeoutMs: MOUNT_TIMEOUT_MS, timeoutCode: MOUNT_TIMEOUT }).then(
    (r) => r.code === 0 && `${r.stdout}${r.stderr}`.includes('util-linux'),
    () => false,
  );
  return canonicalizes;
}

const PROPAGATION = new Set(['private', 'rprivate', 'shared', 'rshared', 'slave', 'rslave', 'unbindable', 'runbindable']);

/**
 * mount -t FSTYPE -o OPTIONS SOURCE TARGET. fstype "bind"/"rbind" (or a bind option) bind-mounts.
 * A read-only bind takes a second step (the kernel ignores ro on the bind itself); when that
 * remount fails the bind is undone and the error is thrown: a mount asked to be read-only is
 * never left writable. `ro` is left out of the bind itself, since util-linux then does the
 * remount on its own and, when that fails, exits non-zero with the bind left in place.
 *
 * A pinned target (and a source named /proc/PID/fd/N) reaches mount(8) as given. mount(8)'s own
 * follow-up steps (a bind's flags, propagation) would go to that name, which is the directory
 * mounted on, not the new mount: so those steps are taken here, on `root`, each undoing the
 * mount when it fails.
 */
export async function mount(source: string, target: string | PinnedTarget, fstype: string, options: string[] = [], syscall?: MountSyscall): Promise<void> {
  const opts = options.filter((o) => o.length > 0);
  let type = fstype;
  if (type === 'bind' || type === 'rbind') {
    if (!opts.includes('bind') && !opts.includes('rbind')) opts.unshift(type);
    type = 'none';
  }
  const bind = isBind(fstype, opts);
  if (typeof target !== 'string') return mountPinned(source, target, type, opts, bind, syscall);
  const readOnly = bind && opts.includes('ro');
  const first = readOnly ? opts.filter((o) => o !== 'ro') : opts;
  const args: string[] = [];
  if (type) args.push('-t', type);
  if (first.length) args.push('-o', first.join(','));
  args.push(source, target);
  await tool('mount', args);
  if (readOnly) {
    // Flags that must survive the remount (the remount replaces the per-mount flags).
    const keep = opts.filter((o) => ['nosuid', 'nodev', 'noexec'].includes(o));
    try {
      await tool('mount', ['-o', ['remount', 'bind', 'ro', ...keep].join(','), target]);
    } catch (e) {
      await umount(target).catch(() => umount(target, true));
      throw e;
    }
  }
}

/** mount(8)'s option names that are mount(2) flags: [set, clear]. Every other option is data. */
const MS_REC = 0x4000;
const MOUNT_FLAGS: Record<string, [number, number]> = {
  ro: [0x1, 0], rw: [0, 0x1], nosuid: [0x2, 0], suid: [0, 0x2], nodev: [0x4, 0], dev: [0, 0x4], noexec: [0x8, 0], exec: [0, 0x8],
  sync: [0x10, 0], async: [0, 0x10], remount: [0x20, 0], mand: [0x40, 0], nomand: [0, 0x40], dirsync: [0x80, 0],
  noatime: [0x400, 0], atime: [0, 0x400], nodiratime: [0x800, 0], diratime: [0, 0x800], bind: [0x1000, 0], rbind: [0x1000 | MS_REC, 0],
  silent: [0x8000, 0], loud: [0, 0x8000], unbindable: [0x20000, 0], runbindable: [0x20000 | MS_REC, 0],
  private: [0x40000, 0], rprivate: [0x40000 | MS_REC, 0], slave: [0x80000, 0], rslave: [0x80000 | MS_REC, 0],
  shared: [0x100000, 0], rshared: [0x100000 | MS_REC, 0], relatime: [0x200000, 0], norelatime: [0, 0x200000],
  strictatime: [0x1000000, 0], nostrictatime: [0, 0x1000000], lazytime: [0x2000000, 0], nolazytime: [0, 0x2000000], defaults: [0, 0],
};

/** mount(8)'s options as mount(2) takes them: flags from the names it knows, the rest as data. */
export function mountFlags(options: string[]): { flags: number; data: string } {
  let flags = 0;
  const data: string[] = [];
  for (const o of options) {
    const f = MOUNT_FLAGS[o];
    if (f) flags = (flags | f[0]) & ~f[1];
    else data.push(o);
  }
  return { flags, data: data.join(',') };
}

/**
 * One mount(2) made for the caller without mount(8) (the agent's keeper: a fork+exec costs ~0.5 s
 * under TCG); false when it cannot take this one, and mount(8) does it.
 */
export type MountSyscall = (source: string, target: string, fstype: string | undefined, flags: number, data: string) => Promise<boolean>;

async function mountPinned(source: string, t: PinnedTarget, type: string, opts: string[], bind: boolean, syscall?: MountSyscall): Promise<void> {
  /** `mount [-c] [-t TYPE] -o OPTIONS SRC TARGET`, through the syscall when there is one that takes it. */
  const run = async (src: string, target: string, fstype: string | undefined, options: string[]): Promise<void> => {
    const m = mountFlags(options);
    if (syscall && (await syscall(src, target, fstype, m.flags, m.data))) return;
    const c = (await mountCanonicalizes()) ? ['-c'] : [];
    await tool('mount', [...c, ...(fstype ? ['-t', fstype] : []), ...(options.length ? ['-o', options.join(',')] : []), src, target]);
  };
  const propagation = opts.filter((o) => PROPAGATION.has(o));
  const rest = opts.filter((o) => !PROPAGATION.has(o));
  const first = bind ? [rest.includes('rbind') ? 'rbind' : 'bind'] : rest;
  // A bind's per-mount flags (ro, nosuid, ...) in one remount, which replaces them all.
  const flags = bind ? rest.filter((o) => o !== 'bind' && o !== 'rbind') : [];
  await run(source, t.ref, type || undefined, first);
  try {
    // busybox looks a one-argument remount's target up in /proc/mounts by name, where a pinned
    // one is not: the (ignored) source "none" makes it two arguments.
    if (flags.length) await run('none', t.root, undefined, ['remount', 'bind', ...flags]);
    for (const p of propagation) await run('none', t.root, undefined, [p]);
  } catch (e) {
    await umount(t.root).catch(() => umount(t.root, true));
    throw e;
  }
}

export async function umount(target: string, lazy = false): Promise<void> {
  await tool('umount', lazy ? ['-l', target] : [target]);
}

/** A mountinfo path field as the path it names (mountinfo escapes space, tab, newline, backslash in octal). */
export function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface MountInfo {
  /** major:minor of the filesystem (field 3). */
  device: string;
  /** The root of the mount within its filesystem (field 4): not "/" for a subtree bind. */
  root: string;
  mountPoint: string;
  /** Per-mount options (field 6), e.g. rw,nosuid,nodev,relatime. */
  options: string[];
  fstype: string;
  source: string;
  /** Per-superblock options (the last field), e.g. a v1 cgroup's controllers. */
  superOptions: string[];
}

/** A mountinfo text (/proc/<pid>/mountinfo), one entry per line, in the kernel's order. */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 4) continue;
    out.push({
      device: f[2]!,
      root: unescapeMountPath(f[3]!),
      mountPoint: unescapeMountPath(f[4]!),
      options: f[5]!.split(','),
      fstype: f[sep + 1]!,
      source: unescapeMountPath(f[sep + 2]!),
      superOptions: f[sep + 3]!.split(','),
    });
  }
  return out;
}

/** This process's mounts (a stacked mount comes later than the one it hides). */
export function mountInfo(): MountInfo[] {
  return parseMountInfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
}

export function mountPoints(): string[] {
  return mountInfo().map((m) => m.mountPoint);
}

export function isMounted(target: string): boolean {
  return mountPoints().includes(target);
}

/** Mount points at or below dir (symlinks resolved), deepest first, each once. */
export function mountsUnder(dir: string): string[] {
  const root = fs.existsSync(dir) ? fs.realpathSync(dir) : path.resolve(dir);
  const points = new Set<string>();
  for (const mp of mountPoints()) if (mp === root || mp.startsWith(root === '/' ? '/' : `${root}/`)) points.add(mp);
  return [...points].sort((a, b) => b.length - a.length);
}

/** Unmounts everything at and below `dir`, deepest first; lazily when busy, so cleanup never hangs. */
export async function unmountAll(dir: string): Promise<string[]> {
  const done: string[] = [];
  // A mount can be stacked several times on one point: repeat until nothing is left (bounded).
  for (let round = 0; round < 5; round++) {
    const points = mountsUnder(dir);
    if (!points.length) break;
    for (const mp of points) {
      const r = await runTool('umount', [mp], { timeoutMs: MOUNT_TIMEOUT_MS, timeoutCode: MOUNT_TIMEOUT }).catch(() => undefined);
      if (r?.code !== 0) await runTool('umount', ['-l', mp], { timeoutMs: MOUNT_TIMEOUT_MS, timeoutCode: MOUNT_TIMEOUT }).catch(() => undefined);
      done.push(mp);
    }
  }
  return done;
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
