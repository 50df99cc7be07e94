// What the pod's first Create does before its own container: resolve the sandbox's configuration,
// launch the VM (through the launcher: QEMU or cloud-hypervisor in the daemon, a local agent in tests) and create the
// sandbox in the guest with the storages every container needs (the shared directory, the pod's
// /dev/shm).
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { CallContext } from '../proto/ttrpc/index.js';
import type { containerd, grpc } from '../proto/gen/types.js';
import { parseLayerMounts } from '../proto/layer-mounts.js';
import { hypervisorKind, hypervisorSection, sandboxConfig, type KatatsConfig } from './config.js';
import type { GuestHandle, GuestLauncher } from './guest.js';
import { planSandboxCgroups } from './sandbox-cgroups.js';
import { sandboxDir } from './layout.js';
import { podShmBytes } from './container-spec.js';
import { sharedStorage } from './rootfs-share.js';
import { invalid } from './errdefs.js';
import { setupCall } from './agent-calls.js';
import { decodeRuntimeOptions } from './runtime-options.js';
import type { PodPolicy } from './pod-policy.js';
import type { Initdata } from '../attestation/initdata.js';
import { configureGuestNetwork } from './network/pod-network.js';

/** resolv.conf is a few lines; more is not a resolv.conf. */
const MAX_RESOLV_CONF = 64 * 1024;

/** The lines of the resolv.conf the sandbox spec mounts (CreateSandboxRequest.dns, as Kata sends it); none without one. */
export function sandboxDns(spec: grpc.Spec, log: Logger): string[] {
  const m = spec.Mounts.find((x) => x.destination === '/etc/resolv.conf' && x.source);
  if (!m) return [];
  try {
    const fd = fs.openSync(m.source, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const buf = Buffer.alloc(MAX_RESOLV_CONF);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      return buf.subarray(0, n).toString('utf8').split('\n').filter((l) => l.trim() !== '');
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    log.warn({ err: e, source: m.source }, 'the sandbox resolv.conf could not be read: the guest gets no DNS settings from it');
    return [];
  }
}

export interface SandboxBootOptions {
  sandboxId: string;
  /** The shim's own configuration (runtime options and annotations apply on top). */
  config: KatatsConfig;
  stateDir: string;
  launcher: GuestLauncher;
  log: Logger;
}

function describesLayers(rootfs: containerd.types.Mount[]): boolean {
  try {
    return parseLayerMounts(rootfs.map((m) => ({ type: m.type, options: m.options }))) !== null;
  } catch {
    return false;
  }
}

export async function launchSandboxVm(
  o: SandboxBootOptions,
  spec: grpc.Spec,
  /** CRI's runtime options for the handler (runtimeoptions.v1.Options). */
  options: { type_url: string; value: Uint8Array } | null | undefined,
  policy: PodPolicy | undefined,
  /** The sandbox container's rootfs mounts. */
  rootfs: containerd.types.Mount[],
  /** The pod's initdata: its digest is the launch data instead of the policy's. */
  initdata?: Initdata,
): Promise<GuestHandle> {
  const cfg = sandboxConfig(o.config, decodeRuntimeOptions(options), spec.Annotations ?? {}, { warn: (f, msg) => o.log.warn(f, msg) });
  if (hypervisorSection(cfg).shared_fs === 'none' && !describesLayers(rootfs)) {
    // Refused before booting: without a shared filesystem only verified layers reach the guest.
    const kind = hypervisorKind(cfg);
    throw invalid(`shared_fs = none: sandbox ${o.sandboxId}'s rootfs is not made of verified layers (the tardev snapshotter's), and nothing else reaches the guest without a shared filesystem; use the tardev snapshotter or set [hypervisor.${kind}] shared_fs to ${kind === 'clh' ? '"virtio-fs"' : '"virtio-9p" or "virtio-fs"'}`);
  }
  // CRI's pod network namespace, CNI's veths in it; host-network pods have none.
  const podNetns = spec.Linux?.Namespaces.find((n) => n.Type === 'network' && n.Path)?.Path;
  const cgroups = planSandboxCgroups(spec.Linux?.CgroupsPath, o.sandboxId, cfg.runtime.sandbox_cgroup_only);
  if (initdata) o.log.info({ initdata_algorithm: initdata.algorithm, initdata_digest: initdata.digest.toString('hex'), host_data: initdata.hostData.toString('hex') }, 'pod initdata: its digest is the launch data');
  const guest = await o.launcher({
    sandboxId: o.sandboxId,
    config: cfg,
    // Bound to the VM (an SEV-SNP host puts it in HOST_DATA): initdata's digest (which covers its
    // policy and KBS), else the policy's digest; zeros: none.
    launchData: initdata?.hostData ?? policy?.digest ?? Buffer.alloc(32),
    ...(initdata ? { initdata: initdata.text } : {}),
    stateDir: sandboxDir(o.stateDir, o.sandboxId),
    log: o.log,
    ...(podNetns ? { podNetns } : {}),
    ...(cgroups ? { cgroups } : {}),
  });
  o.log.info({ accel: guest.accel, vmmPid: guest.vmmPid, bootPath: guest.bootPath }, 'sandbox VM ready');
  return guest;
}

/** SetPolicy, before anything else reaches the agent: the agent takes only the policy the launch data binds. */
export async function setGuestPolicy(o: SandboxBootOptions, guest: GuestHandle, policy: PodPolicy, ctx: CallContext): Promise<void> {
  const digest = policy.digest.toString('hex');
  try {
    await guest.agent.SetPolicy({ policy: policy.text }, setupCall(ctx));
  } catch (e) {
    o.log.error({ err: e, policy_sha256: digest }, 'the guest refused the pod policy');
    throw e;
  }
  o.log.info({ policy_sha256: digest }, 'pod policy set in the guest');
}

/**
 * The pod's interfaces, routes and neighbours in the guest, or undefined for a pod without a network.
 * Not awaited by the boot: most of it is the guest probing a hot-plugged NIC, time in which
 * CreateSandbox and the sandbox container's create go on (neither reads the network); the sandbox
 * container's Create waits for it before it answers, so nothing of the pod runs before its network.
 * The promise is handled from the start: a failure is thrown where it is awaited, never unhandled.
 */
export function startGuestNetwork(o: SandboxBootOptions, guest: GuestHandle, ctx: CallContext): Promise<void> | undefined {
  if (!guest.podNetwork) return undefined;
  const done = configureGuestNetwork(guest.agent, guest.podNetwork, setupCall(ctx), o.log);
  done.catch(() => {});
  return done;
}

/** CreateSandbox in the guest. Returns whether the guest now holds the pod's own /dev/shm. */
export async function createGuestSandbox(o: SandboxBootOptions, guest: GuestHandle, spec: grpc.Spec, ctx: CallContext): Promise<boolean> {
  const shmBytes = podShmBytes(spec);
  const dns = sandboxDns(spec, o.log);
  await guest.agent.CreateSandbox(
    {
      hostname: spec.Hostname,
      dns,
      sandbox_id: o.sandboxId,
      storages: [
        ...sharedStorage(guest),
        // A host tmpfs seen through the shared filesystem would share files but not memory: the pod's shm lives in the guest.
        ...(shmBytes
          ? [{ driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['noexec', 'nosuid', 'nodev', 'mode=1777', `size=${shmBytes}`], mount_point: guest.guestDirs.sandboxShm }]
          : []),
      ],
    },
    setupCall(ctx),
  );
  o.log.info({ podShmBytes: shmBytes || undefined }, 'sandbox created in the guest');
  return shmBytes > 0;
}
