// `delete`: containerd runs this when a shim is gone (crashed, killed) to clean up what it left:
// the VMM, the rootfs mounts in the shared directory, the socket and the state. It prints a
// DeleteResponse; a task that died with its shim is reported as killed (137), as runc's shim does.
import path from 'node:path';
import type { ShimArgs } from './args.js';
import { loadConfig } from './config.js';
import { groupingId, isSandboxProcess, readRecord, sandboxDir } from './layout.js';
import { removeTree } from '../sys/mount.js';
import { hasExited, signalWithGroup } from '../sys/proc.js';
import { sleep } from '../sys/timeout.js';
import { removeCgroupDirs } from './cgroups.js';
import { overheadRoots } from './sandbox-cgroups.js';
import { encode, timestamp } from '../proto/registry.js';
import { removeStaleSocket } from '../proto/ttrpc/index.js';
import { removeRecordedNetwork } from './network/pod-network.js';
import { releaseSnpVm } from './snp-launch.js';

async function killAndWait(pid: number): Promise<void> {
  if (hasExited(pid)) return;
  signalWithGroup(pid, 'SIGKILL');
  for (let i = 0; i < 100 && !hasExited(pid); i++) await sleep(50);
}

export async function deleteShim(args: ShimArgs): Promise<Uint8Array> {
  const cfg = loadConfig();
  const grouping = groupingId(args.bundle, args.id);
  const rec = readRecord(cfg.runtime.state_dir, grouping);
  if (rec) {
    if (rec.sharedDir) {
      const mine = path.join(rec.sharedDir, args.id);
      await removeTree(mine);
    }
    // The pod's VM cannot outlive its shim; while the shim lives, it stops the VM itself.
    if (hasExited(rec.shimPid)) {
      const dir = sandboxDir(cfg.runtime.state_dir, grouping);
      // Only processes that still name this sandbox: a recorded pid may have been reused since.
      // virtiofsd leaves when QEMU disconnects, but one that never saw QEMU (shim killed mid-boot) waits forever.
      for (const pid of [rec.vmmPid, rec.virtiofsdPid]) if (pid && isSandboxProcess(pid, dir)) await killAndWait(pid);
      // Only a socket nothing listens on: a new daemon of the pod may be serving there already.
      await removeStaleSocket(rec.socket).catch((e: unknown) => process.stderr.write(`shim delete: keeping ${rec.socket}: ${(e as Error).message}\n`));
      // The VMM is gone: the TAPs and tc filters it used in the pod's namespace go too.
      await removeRecordedNetwork(dir).catch((e: unknown) => process.stderr.write(`shim delete: pod network: ${(e as Error).message}\n`));
      // The SNP firmware forgets the dead VM and removes its report socket.
      if (cfg.attestation.snp_socket) {
        await releaseSnpVm(cfg.attestation.snp_socket, rec.sandboxId).catch((e: unknown) => process.stderr.write(`shim delete: SNP firmware: ${(e as Error).message}\n`));
      }
      await removeTree(dir);
      // Empty now (the shim that sat in one is dead): a cgroup someone else still uses stays.
      if (rec.cgroupDirs?.length) await removeCgroupDirs([...rec.cgroupDirs, ...overheadRoots()]);
    }
  }
  return encode('containerd.task.v2.DeleteResponse', { pid: 0, exit_status: 128 + 9, exited_at: timestamp() });
}
