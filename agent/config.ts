// What an agent instance needs to know about its machine. Guest mode and local mode differ
// only in these values (see main.ts).
import type { Logger } from './log.js';
import type { CgroupLayout } from './cgroups.js';
import type { Limits } from '../policy/index.js';
import type { NetworkTools } from './network.js';
import type { Keeper } from './keeper.js';
import type { ResourceSource } from './unseal.js';

export interface AgentConfig {
  /** bundles, stdio FIFOs and sandbox files; upstream's /run/kata-containers in the guest */
  stateDir: string;
  /** CopyFile writes only below this directory: <stateDir>/shared/containers unless configured (upstream's) */
  copyRoot: string;
  /** the katats-runner helper */
  runner: string;
  /** the crun binary */
  crun: string;
  /** crun --root; crun's default (/run/crun) when unset */
  crunRoot?: string;
  /** sysfs for devices, CPUs and memory blocks (a fake tree in tests) */
  sysfsRoot: string;
  cgroups: CgroupLayout;
  /** where containers without a usable cgroupsPath go, e.g. /katats */
  cgroupParent: string;
  /**
   * the VM's launch data (hex): a policy's sha256 binds that policy, zeros or none bind nothing
   * (policy-hook.ts). A function is asked at each decision: in the guest it reads fw_cfg, which a VM
   * restored from a template holds for itself (a copy made at boot would be the template's).
   */
  launchDigest?: string | (() => string | undefined);
  /** the policy in force until a SetPolicy; the built-in allow-all when unset */
  defaultPolicy?: { text: string; source: string };
  /** limits of every policy evaluation (steps above all: a hostile policy must not hold the agent) */
  policyLimits?: Partial<Limits>;
  /** The VM's initdata does not match its launch data (or cannot be read): every request is refused with this. */
  launchProblem?: string;
  /** SetGuestDateTime changes the clock and ReseedRandomDev the kernel's CRNG (guest) or only validate (local mode) */
  setClock: boolean;
  /** the runner's keeper: clock, entropy, mounts (guest), namespaces and container processes' runners without node spawning a process */
  keeper?: Keeper;
  /**
   * the keeper forks the runners (container processes' monitors, one-shot crun commands): the
   * default; false (the guest's kernel parameter katats.runner_spawn=node) spawns them from node,
   * for comparing the two in one guest image
   */
  runnersByKeeper?: boolean;
  /**
   * crun's one-shot commands that start no process run without ASLR (the guest's kernel parameter
   * katats.crun_aslr=off, which the host sets under TCG): see CrunOptions.fixedAddresses
   */
  crunFixedAddresses?: boolean;
  /** rescan the PCI bus before looking for hot-plugged disks (guest only) */
  pciRescan: boolean;
  /** how UpdateInterface/UpdateRoutes/AddARPNeighbors reach the network; none: refused (local mode) */
  network?: NetworkTools;
  /** the network namespace every container joins (the guest's own; local mode: --netns); none: as the spec says */
  netnsPath?: string;
  /** bytes buffered per output stream before the agent stops reading the pipe */
  outputBufferBytes: number;
  /** the pod's attestation endpoint (attestation/cdh.ts), when the VM has an SNP report port */
  cdh?: { setKbsUrl(url: string): void; resourceSource(): ResourceSource | undefined };
  log: Logger;
}

export const DEFAULT_OUTPUT_BUFFER = 1 << 20;
