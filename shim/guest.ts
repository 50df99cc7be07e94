// What the Task service needs from a running sandbox VM: an agent to call, a host directory the
// guest sees as its shared filesystem, and word when the VMM dies. shim/vm.ts makes one with
// QEMU or cloud-hypervisor; the Task service does not care how.
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import type { KatatsConfig } from './config.js';
import type { SandboxCgroupPlan } from './sandbox-cgroups.js';
import type { Hypervisor } from '../vmm/hypervisor.js';
import type { PodLayers } from './layer-disks.js';
import type { GuestNic, PodNetwork } from './network/pod-network.js';

/** Where the guest mounts the shared filesystem, as Kata lays it out. */
export const GUEST_SHARED_DIR = '/run/kata-containers/shared/containers';
/** The mount tag the shared directory is exported under (9p and virtio-fs alike). */
export const SHARED_FS_TAG = 'kataShared';

/** Where the agent finds what the pod shares: paths in the guest's filesystem. */
export interface GuestDirs {
  /** The shared directory (the host's sharedDir) as the guest sees it. */
  shared: string;
  /** The pod's /dev/shm: a tmpfs of the guest's own that every container binds. */
  sandboxShm: string;
}

/** Kata's layout in a VM guest (its kataGuestSharedDir() and kataGuestSandboxDir()/shm). */
export const KATA_GUEST_DIRS: GuestDirs = { shared: GUEST_SHARED_DIR, sandboxShm: '/run/kata-containers/sandbox/shm' };

export interface VmExit {
  code: number | null;
  signal: string | null;
  /** A human reason: "powered off", "killed by SIGKILL", with the last console lines when it crashed. */
  reason: string;
}

export interface GuestHandle {
  agent: ServiceClient<'grpc.AgentService'>;
  health: ServiceClient<'grpc.Health'>;
  /** Host directory exported to the guest (mounted there at guestDirs.shared). */
  sharedDir: string;
  /**
   * How sharedDir reaches the guest: decides the storage the agent mounts. 'host': the agent runs
   * on this host (local mode) and sees sharedDir where it is, so nothing is mounted. 'none':
   * nothing reaches the guest through it (rootfs come as verified layers).
   */
  sharedFs: 'virtio-9p' | 'virtio-fs' | 'host' | 'none';
  /** Image layers hot-plugged as read-only disks (a VMM with hotplug); without it, rootfs are shared. */
  layers?: PodLayers;
  guestDirs: GuestDirs;
  accel: 'kvm' | 'tcg';
  /** Whether the VM is a clone of a factory template or booted cold; none for a guest that is no VM. */
  bootPath?: 'template' | 'cold';
  /** The VM's driver (hotplug, pause, info); none for a guest that is no VM (the local agent of tests). */
  hypervisor?: Hypervisor;
  /** The VMM's pid, recorded so `shim delete` can clean up after a dead shim. */
  vmmPid: number;
  /** The virtiofsd serving sharedDir (shared_fs = virtio-fs), recorded for the same reason. */
  virtiofsdPid?: number;
  /** Settles when the VMM process ends, for whatever reason. */
  exited: Promise<VmExit>;
  /** Host cgroup directories made for the sandbox (empty when it asked for none). */
  cgroupDirs: string[];
  /** The pod's network wired to the VM's NICs (withPodNetwork): the agent is given it before CreateSandbox. */
  podNetwork?: PodNetwork;
  /** Powers the VM off (gracefully, then by force) and removes what it made on the host. */
  stop(): Promise<void>;
}

export interface LaunchRequest {
  sandboxId: string;
  config: KatatsConfig;
  /** 32 bytes bound to the VM at launch (the policy digest; zeros when there is no policy). */
  launchData: Buffer;
  /** The pod's initdata document (its digest is launchData), served to the guest. */
  initdata?: string;
  stateDir: string;
  log: Logger;
  /** Where the host processes go (see sandbox-cgroups.ts); none when undefined. */
  cgroups?: SandboxCgroupPlan;
  /** The pod's network namespace (CNI's), from the sandbox spec; none for host-network pods. */
  podNetns?: string;
  /** The pod's network: TAPs wired in its namespace, one guest NIC each (shim/network/). */
  network?: { netns: string; nics: GuestNic[] };
  /**
   * Called as soon as something exists that a killed shim would leave behind (a helper process, host
   * cgroups), before the boot: `shim delete` must be able to find it.
   */
  onHostResources?: (r: HostResources) => void;
}

export interface HostResources {
  virtiofsdPid?: number;
  /** Host cgroup directories made for the sandbox, removed once its processes are gone. */
  cgroupDirs?: string[];
}

export type GuestLauncher = (req: LaunchRequest) => Promise<GuestHandle>;
