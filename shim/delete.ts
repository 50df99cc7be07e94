// `delete`: containerd runs this when a shim is gone (crashed, killed) to clean up what it left:
// the VMM, the rootfs mounts in the shared directory, the socket and the state. It prints a
// DeleteResponse; a task that died with its shim is reported as killed (137), as runc's shim does.
import fs from 'node:fs';
import path from 'node:path';
import type { ShimArgs } from './args.js';
import { loadConfig } from './config.js';
import { groupingId, isSandboxProcess, readRecord, sandboxDir } from './layout.js';
import { unmountAll } from './mounts.js';
import { encode } from '../proto/registry.js';

/** Whether pid runs: a zombie (dead, not yet reaped by whoever inherited it) counts as gone. */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function killAndWait(pid: number): Promise<void> {
  if (!alive(pid)) return;
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
}

export async function deleteShim(args: ShimArgs): Promise<Uint8Array> {
  const cfg = loadConfig();
  const grouping = groupingId(args.bundle, args.id);
  const rec = readRecord(cfg.runtime.state_dir, grouping);
  if (rec) {
    if (rec.sharedDir) {
      const mine = path.join(rec.sharedDir, args.id);
      await unmountAll(mine);
      fs.rmSync(mine, { recursive: true, force: true });
    }
    const shimGone = !alive(rec.shimPid);
    if (grouping === args.id || shimGone) {
      // The pod's VM cannot outlive its sandbox container or its shim.
      if (shimGone) {
        if (rec.vmmPid) await killAndWait(rec.vmmPid);
        // virtiofsd leaves when QEMU disconnects, but one that never saw QEMU (shim killed mid-boot) waits forever.
        if (rec.virtiofsdPid && isSandboxProcess(rec.virtiofsdPid, sandboxDir(cfg.runtime.state_dir, grouping))) await killAndWait(rec.virtiofsdPid);
        await unmountAll(sandboxDir(cfg.runtime.state_dir, grouping));
        fs.rmSync(sandboxDir(cfg.runtime.state_dir, grouping), { recursive: true, force: true });
        fs.rmSync(rec.socket, { force: true });
      }
    }
  }
  const now = Date.now();
  return encode('containerd.task.v2.DeleteResponse', { pid: 0, exit_status: 128 + 9, exited_at: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 } });
}
