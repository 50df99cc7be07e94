// Warming a template before it is saved: one throwaway sandbox and container lifecycle, so that
// every clone starts with the agent's pod path compiled by V8 and crun, the runner and their
// libraries in the guest's page cache (all of which a clone shares with the template). The
// container's rootfs is the host's static busybox when there is one; without it only the sandbox
// half runs. Everything is torn down again (the 9p share must be unmounted: QEMU cannot migrate a
// mounted 9p device).
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Client } from '../proto/ttrpc/index.js';
import { serviceClient } from '../proto/rpc.js';
import { withTimeout } from '../sys/timeout.js';
import { KATA_GUEST_DIRS } from './guest.js';
import { sharedStorage } from './rootfs-share.js';

export const TEMPLATE_WARM_TIMEOUT = 'KATATS_TEMPLATE_WARM_TIMEOUT';
const WARM_TIMEOUT_MS = 120_000;
const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];
const WARM_SANDBOX = 'katats-template-warm';
const WARM_CONTAINER = 'warm';

/** Whether `file` is an ELF executable without a program interpreter (PT_INTERP): runnable in any rootfs. */
export function isStaticElf(file: string): boolean {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch {
    return false;
  }
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return false; // ELF64 little-endian
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  if (phoff + phentsize * phnum > b.length) return false;
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

function warmRootfs(sharedHostDir: string): string | undefined {
  const busybox = BUSYBOX_CANDIDATES.find(isStaticElf);
  if (!busybox) return undefined;
  const root = path.join(sharedHostDir, WARM_CONTAINER, 'rootfs');
  for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync(busybox, path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(root, 'bin', 'sh'));
  return `${KATA_GUEST_DIRS.shared}/${WARM_CONTAINER}/rootfs`;
}

/** Runs the throwaway lifecycle; returns what it covered. Any failure fails the template build. */
export async function warmTemplate(client: Client, sharedHostDir: string | undefined, log: Logger): Promise<{ container: boolean }> {
  const agent = serviceClient(client, 'grpc.AgentService');
  const work = async (): Promise<{ container: boolean }> => {
    await agent.CreateSandbox({
      hostname: 'warm',
      sandbox_id: WARM_SANDBOX,
      storages: [
        ...(sharedHostDir ? sharedStorage({ sharedFs: 'virtio-9p', guestDirs: KATA_GUEST_DIRS }) : []),
        { driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['noexec', 'nosuid', 'nodev', 'mode=1777', 'size=1048576'], mount_point: KATA_GUEST_DIRS.sandboxShm },
      ],
    });
    // Without a shared directory (verified layers only) there is no way in for a rootfs: sandbox only.
    const rootfs = sharedHostDir ? warmRootfs(sharedHostDir) : undefined;
    if (rootfs) {
      const ids = { container_id: WARM_CONTAINER, exec_id: WARM_CONTAINER };
      await agent.CreateContainer({
        ...ids,
        storages: [],
        devices: [],
        sandbox_pidns: false,
        OCI: {
          Version: '1.0.2',
          Process: { Terminal: false, User: { UID: 0, GID: 0 }, Args: ['sh', '-c', 'echo warm'], Env: ['PATH=/bin'], Cwd: '/', NoNewPrivileges: true },
          Root: { Path: rootfs, Readonly: true },
          Hostname: 'warm',
          Mounts: [
            { destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
            { destination: '/dev', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
            { destination: '/sys', source: 'sysfs', type: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
            { destination: '/tmp', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
          ],
          Linux: { Namespaces: [{ Type: 'ipc' }, { Type: 'uts' }, { Type: 'mount' }, { Type: 'pid' }] },
        },
      });
      await agent.StartContainer({ container_id: WARM_CONTAINER });
      const out = await agent.ReadStdout({ ...ids, len: 1024 });
      const { status } = await agent.WaitProcess(ids);
      if (Buffer.from(out.data).toString() !== 'warm\n' || status !== 0) throw new Error(`warm container printed ${JSON.stringify(Buffer.from(out.data).toString())}, exit ${status}`);
      // The agent's own bound on the removal; the whole warm-up has WARM_TIMEOUT_MS (a loaded host has seen > 10 s).
      await agent.RemoveContainer({ container_id: WARM_CONTAINER, timeout: 60 });
    } else {
      log.warn({ looked: BUSYBOX_CANDIDATES }, 'factory: no static busybox on this host: the template is warmed without a container');
    }
    await agent.DestroySandbox({});
    return { container: !!rootfs };
  };
  return withTimeout(work(), WARM_TIMEOUT_MS, { code: TEMPLATE_WARM_TIMEOUT, what: 'warming the template (a throwaway sandbox and container)' });
}
