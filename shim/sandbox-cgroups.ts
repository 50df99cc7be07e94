// Which host cgroups a sandbox's processes (the shim, QEMU, virtiofsd) run in, in Kata's two modes
// (its design/host-cgroups.md), keyed on the sandbox container's linux.cgroupsPath:
// - sandbox_cgroup_only = true: everything in <pod cgroup>/katats_<sandbox>, so the pod cgroup the
//   kubelet sized (with the RuntimeClass overhead) accounts for and limits the whole VM;
// - false (default): only QEMU's vCPU threads in the sandbox container's cgroup, the rest in
//   katats_overhead/<sandbox>, outside the pod: the VMM's own memory cannot OOM-kill the pod.
// The shim moves itself first, so that what it starts next is born where it belongs.
import path from 'node:path';
import type { Logger } from 'pino';
import { CgroupError, cgroupsOf, createCgroup, hostHierarchies, joinCgroup, moveThreads, removeCgroupDirs, resolveCgroupsPath, vcpuThreads, type Hierarchy } from './cgroups.js';

export const OVERHEAD_ROOT = 'katats_overhead';

/**
 * katats_overhead in every hierarchy: katats' own parent, shared by every sandbox's overhead
 * cgroup. Whichever shim leaves it empty removes it, whoever made it (a shim making its child at
 * that moment remakes the chain).
 */
export function overheadRoots(hierarchies: Hierarchy[] = hostHierarchies()): string[] {
  return hierarchies.map((h) => path.join(h.mount, OVERHEAD_ROOT));
}

export interface SandboxCgroupPlan {
  /** sandbox_cgroup_only: the shim, all of QEMU and virtiofsd; otherwise QEMU's vCPU threads only. */
  sandbox: string;
  /** Without sandbox_cgroup_only: everything but the vCPU threads. */
  overhead?: string;
}

/** Undefined when the sandbox container names no cgroup (nothing asks for host placement then). */
export function planSandboxCgroups(cgroupsPath: string | undefined, sandboxId: string, sandboxCgroupOnly: boolean): SandboxCgroupPlan | undefined {
  if (!cgroupsPath) return undefined;
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(sandboxId)) throw new CgroupError(`sandbox id "${sandboxId}" cannot name a cgroup`);
  const rel = resolveCgroupsPath(cgroupsPath);
  if (!sandboxCgroupOnly) return { sandbox: rel, overhead: `${OVERHEAD_ROOT}/${sandboxId}` };
  const pod = path.posix.dirname(rel);
  return { sandbox: pod === '.' ? `katats_${sandboxId}` : `${pod}/katats_${sandboxId}` };
}

export class SandboxCgroups {
  private constructor(
    readonly plan: SandboxCgroupPlan,
    private readonly hierarchies: Hierarchy[],
    private readonly origin: Map<Hierarchy, string>,
    /** The directories made here, which are the only ones removed at the end. */
    readonly made: string[],
    private readonly log: Logger,
  ) {}

  /** Makes the cgroups and moves the shim into the one QEMU and virtiofsd must start in. */
  static async enter(plan: SandboxCgroupPlan, log: Logger, hierarchies: Hierarchy[] = hostHierarchies()): Promise<SandboxCgroups> {
    const origin = cgroupsOf('self', hierarchies);
    const made: string[] = [];
    try {
      made.push(...createCgroup(hierarchies, plan.sandbox));
      if (plan.overhead) made.push(...createCgroup(hierarchies, plan.overhead));
      joinCgroup(hierarchies, plan.overhead ?? plan.sandbox, process.pid);
    } catch (e) {
      const cg = new SandboxCgroups(plan, hierarchies, origin, made, log);
      await cg.leave();
      throw e;
    }
    log.info({ cgroups: plan, hierarchies: hierarchies.length }, 'shim moved into the sandbox host cgroups');
    return new SandboxCgroups(plan, hierarchies, origin, made, log);
  }

  /** Without sandbox_cgroup_only the vCPU threads, the guest's actual work, go to the pod's cgroup. */
  placeVcpus(vmmPid: number): void {
    if (!this.plan.overhead) return;
    const tids = vcpuThreads(vmmPid);
    if (tids.length === 0) {
      this.log.warn({ vmmPid }, 'no vCPU threads found in the VMM (is -name debug-threads=on set?); the VM stays in the overhead cgroup');
      return;
    }
    const skipped = moveThreads(this.hierarchies, this.plan.sandbox, tids);
    if (skipped.length) this.log.info({ hierarchies: skipped.map((h) => h.mount) }, 'cgroup v2 cannot hold single threads apart: the vCPU threads stay in the overhead cgroup there');
    this.log.info({ tids, cgroup: this.plan.sandbox }, 'vCPU threads moved into the sandbox cgroup');
  }

  /** The shim goes back where it came from, and what was made here is removed (once empty). */
  async leave(): Promise<void> {
    for (const [h, rel] of this.origin) {
      try {
        joinCgroup([h], rel, process.pid);
      } catch (e) {
        this.log.warn({ err: e }, 'cannot move the shim back to its cgroup');
      }
    }
    const left = await removeCgroupDirs([...this.made, ...(this.plan.overhead ? overheadRoots(this.hierarchies) : [])]);
    // A parent made here may hold other sandboxes' cgroups by now: only a leaf left behind is news.
    const leaves = left.filter((d) => d.endsWith(`/${this.plan.sandbox}`) || (this.plan.overhead && d.endsWith(`/${this.plan.overhead}`)));
    if (leaves.length) this.log.warn({ left: leaves }, 'sandbox cgroups still in use: left in place');
  }
}
