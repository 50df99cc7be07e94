// Host cgroup primitives for the shim: which hierarchies the host mounts, where an OCI cgroupsPath
// lands in them, and making, joining and removing a cgroup in all of them at once. cgroup v1
// (one hierarchy per controller), hybrid (v1 plus an empty unified tree, as this project's CI
// hosts) and pure v2 alike: like runc's cgroupfs driver, a cgroup exists in every hierarchy.
import fs from 'node:fs';
import path from 'node:path';
import { parseMountInfo } from '../sys/mount.js';

export interface Hierarchy {
  /** Where it is mounted, e.g. /sys/fs/cgroup/memory or /sys/fs/cgroup (pure v2). */
  mount: string;
  version: 1 | 2;
  /** v1: its controllers ("cpu", "memory", "name=systemd"); v2: none listed. */
  controllers: string[];
}

export class CgroupError extends Error {
  override readonly name = 'CgroupError';
}

const V1_NON_CONTROLLER_OPTS = new Set(['rw', 'ro', 'noprefix', 'clone_children', 'xattr', 'nsdelegate', 'memory_recursiveprot', 'memory_localevents', 'favordynmods']);

/** The cgroup hierarchies in a /proc/<pid>/mountinfo text, each once (a tree mounted twice counts once). */
export function parseCgroupMounts(mountinfo: string): Hierarchy[] {
  const seen = new Set<string>();
  const out: Hierarchy[] = [];
  for (const m of parseMountInfo(mountinfo)) {
    if (m.fstype !== 'cgroup' && m.fstype !== 'cgroup2') continue;
    // A subtree bind of a hierarchy (root other than /) would put our paths somewhere else.
    if (m.root !== '/') continue;
    if (seen.has(m.device)) continue;
    seen.add(m.device);
    const v1 = m.fstype === 'cgroup';
    const controllers = v1 ? m.superOptions.filter((o) => !V1_NON_CONTROLLER_OPTS.has(o) && (!o.includes('=') || o.startsWith('name='))) : [];
    out.push({ mount: m.mountPoint, version: v1 ? 1 : 2, controllers });
  }
  return out;
}

export function hostHierarchies(): Hierarchy[] {
  return parseCgroupMounts(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** "a-b-c.slice" → "a.slice/a-b.slice/a-b-c.slice", as systemd nests slices; "-.slice" is the root. */
function expandSlice(slice: string): string {
  if (!slice.endsWith('.slice') || slice.includes('/')) throw new CgroupError(`invalid systemd slice "${slice}"`);
  const name = slice.slice(0, -'.slice'.length);
  if (name === '-') return '';
  const parts = name.split('-');
  if (parts.some((p) => p === '')) throw new CgroupError(`invalid systemd slice "${slice}"`);
  return parts.map((_, i) => `${parts.slice(0, i + 1).join('-')}.slice`).join('/');
}

/**
 * An OCI linux.cgroupsPath as a path relative to every hierarchy's root. Both forms runc accepts:
 * cgroupfs ("/kubepods/pod1/ctr", "/k8s.io/ctr") and systemd ("kubepods-pod1.slice:cri-containerd:ctr",
 * which is the scope cri-containerd-ctr.scope in that slice). Refuses paths that climb out.
 */
export function resolveCgroupsPath(cgroupsPath: string): string {
  let rel: string;
  const sd = /^([^/:]*):([^:]*):([^:]+)$/.exec(cgroupsPath);
  if (sd) {
    const slice = expandSlice(sd[1] || 'system.slice');
    rel = path.posix.join(slice, sd[2] ? `${sd[2]}-${sd[3]}.scope` : `${sd[3]}`);
  } else {
    rel = cgroupsPath;
  }
  const parts = rel.split('/').filter(Boolean);
  if (parts.length === 0) throw new CgroupError(`cgroupsPath "${cgroupsPath}" names the root cgroup`);
  if (parts.some((p) => p === '..' || p === '.')) throw new CgroupError(`cgroupsPath "${cgroupsPath}" may not contain "." or ".." components`);
  return parts.join('/');
}

function hierarchyKey(h: Hierarchy): string {
  return h.version === 2 ? '' : [...h.controllers].sort().join(',');
}

/** Where pid (or its thread tid) sits in each hierarchy (paths relative to the roots), from /proc. */
export function cgroupsOf(pid: number | 'self', hierarchies: Hierarchy[], tid?: number): Map<Hierarchy, string> {
  const byKey = new Map<string, string>();
  for (const line of fs.readFileSync(tid ? `/proc/${pid}/task/${tid}/cgroup` : `/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (m) byKey.set(m[1] === '0' && m[2] === '' ? '' : m[2]!.split(',').sort().join(','), m[3]!);
  }
  const out = new Map<Hierarchy, string>();
  for (const h of hierarchies) {
    const p = byKey.get(hierarchyKey(h));
    if (p !== undefined) out.set(h, p.replace(/^\/+/, ''));
  }
  return out;
}

function isCpuset(h: Hierarchy): boolean {
  return h.version === 1 && h.controllers.includes('cpuset');
}

/**
 * Makes rel in every hierarchy (parents as needed) and returns the directories it made, parents
 * first: only those are ours to remove later. A v1 cpuset cgroup starts with no CPUs and no memory
 * nodes, and nothing can join it until they are copied down from the parent.
 */
export function createCgroup(hierarchies: Hierarchy[], rel: string): string[] {
  const made: string[] = [];
  for (const h of hierarchies) {
    // Another shim removing a parent it made (once empty) can race with us; the chain is remade.
    for (let attempt = 1; ; attempt++) {
      try {
        made.push(...createChain(h, rel));
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt === 3) throw new CgroupError(`cannot create cgroup ${path.join(h.mount, rel)}: ${(e as Error).message}`);
      }
    }
  }
  return made;
}

function createChain(h: Hierarchy, rel: string): string[] {
  const made: string[] = [];
  let dir = h.mount;
  for (const part of rel.split('/')) {
    const parent = dir;
    dir = path.join(dir, part);
    try {
      fs.mkdirSync(dir);
      made.push(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (isCpuset(h)) {
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if (fs.readFileSync(path.join(dir, f), 'utf8').trim() === '') fs.writeFileSync(path.join(dir, f), fs.readFileSync(path.join(parent, f), 'utf8'));
      }
    }
  }
  return made;
}

/** Moves the whole process (all its threads) into rel in every hierarchy. */
export function joinCgroup(hierarchies: Hierarchy[], rel: string, pid: number): void {
  for (const h of hierarchies) {
    const file = path.join(h.mount, rel, 'cgroup.procs');
    try {
      fs.writeFileSync(file, String(pid));
    } catch (e) {
      throw new CgroupError(`cannot move process ${pid} into ${path.join(h.mount, rel)}: ${(e as Error).message}`);
    }
  }
}

/**
 * Moves single threads into rel. Only cgroup v1 places threads apart from their process (v2 needs a
 * threaded subtree, which a pod cgroup is not): v2 hierarchies are left as they are, and returned.
 */
export function moveThreads(hierarchies: Hierarchy[], rel: string, tids: number[]): Hierarchy[] {
  const skipped: Hierarchy[] = [];
  for (const h of hierarchies) {
    if (h.version === 2) {
      skipped.push(h);
      continue;
    }
    for (const tid of tids) {
      try {
        fs.writeFileSync(path.join(h.mount, rel, 'tasks'), String(tid));
      } catch (e) {
        // A thread that ended meanwhile is not an error.
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw new CgroupError(`cannot move thread ${tid} into ${path.join(h.mount, rel)}: ${(e as Error).message}`);
      }
    }
  }
  return skipped;
}

/**
 * Removes cgroup directories, deepest first. A cgroup empties a little after its last process
 * exits, so EBUSY is retried for a while; one with child cgroups (someone else's, the kernel also
 * says EBUSY then) is left at once, and so is one still busy at the end. Returns the directories
 * that could not be removed.
 */
export async function removeCgroupDirs(dirs: string[], waitMs = 2000): Promise<string[]> {
  const left: string[] = [];
  const ordered = [...new Set(dirs)].sort((a, b) => b.split('/').length - a.split('/').length);
  for (const dir of ordered) {
    if (hasChildCgroups(dir)) {
      left.push(dir);
      continue;
    }
    for (let waited = 0; ; waited += 50) {
      try {
        fs.rmdirSync(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code === 'EBUSY' && waited < waitMs) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        left.push(dir);
        break;
      }
    }
  }
  return left;
}

function hasChildCgroups(dir: string): boolean {
  try {
    return fs.readdirSync(dir, { withFileTypes: true }).some((e) => e.isDirectory());
  } catch {
    return false;
  }
}

/**
 * The vCPU threads of a QEMU started with -name …,debug-threads=on: "CPU 0/KVM", "CPU 1/TCG", or
 * the one "ALL CPUs/TCG" of single-threaded TCG.
 */
export function vcpuThreads(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      if (/^(CPU \d+|ALL CPUs)\/(KVM|TCG)$/.test(fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim())) out.push(Number(tid));
    } catch {
      // The thread ended.
    }
  }
  return out;
}
