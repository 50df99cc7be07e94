// Runs the virtiofsd that serves a sandbox's shared directory to QEMU's vhost-user-fs device.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Logger } from 'pino';
import { terminate } from '../sys/proc.js';

/** Debian's QEMU 7.2 ships the C virtiofsd here (qemu-system-common). */
export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export interface VirtiofsdOptions {
  binary: string;
  /** the directory the guest sees */
  source: string;
  /** vhost-user socket; QEMU connects to it */
  socket: string;
  /** virtiofsd's stderr goes here (appended) */
  logFile: string;
  log: Logger;
  readyTimeoutMs?: number;
}

export interface Virtiofsd {
  pid: number;
  /** settles when the process ends, for whatever reason */
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** SIGTERM, then SIGKILL after a grace period; resolves once the process is gone */
  stop(): Promise<void>;
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '';
  }
}

export async function startVirtiofsd(o: VirtiofsdOptions): Promise<Virtiofsd> {
  if (!fs.existsSync(o.binary)) throw new Error(`virtiofsd ${o.binary} does not exist (hypervisor.qemu.virtio_fs_daemon; Debian ships it in qemu-system-common)`);
  fs.rmSync(o.socket, { force: true });
  const args = [
    `--socket-path=${o.socket}`,
    '-o', `source=${o.source}`,
    // chroot, not the default namespace sandbox: container rootfs are mounted into the shared dir
    // after virtiofsd starts, and a private mount namespace would not see them unless the host's
    // mounts propagate, which they do not everywhere (containers, private /run).
    '-o', 'sandbox=chroot',
    '-o', 'cache=auto',
    // No announce_submounts: with it each host mount in the share (every rootfs, every file bind)
    // is automounted in the guest as a virtiofs superblock of its own, and the guest's 6.1 kernel
    // hits BUG() at fs/super.c:503 ("Busy inodes after unmount of virtiofs") when a container's
    // exit drops the last reference to one: the pause process never exits, StopPodSandbox hangs
    // and the rootfs mounts stay on the host (2 of 6 CRI pod stops on clh; none in the cycles run
    // without it). The price: inode numbers of files on different host mounts may coincide in the
    // guest, where the share is one filesystem.
    // No device nodes from the guest on the host (mknod(2) of a char/block device needs CAP_MKNOD).
    '-o', 'modcaps=-mknod',
  ];
  const errFd = fs.openSync(o.logFile, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(o.binary, args, { stdio: ['ignore', 'ignore', errFd] });
  } finally {
    fs.closeSync(errFd);
  }
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (err) => {
      o.log.error({ err }, 'virtiofsd failed to start');
      resolve({ code: null, signal: null });
    });
  });
  let gone = false;
  const markGone = () => {
    gone = true;
  };
  exited.then(markGone, markGone);
  const stop = async (): Promise<void> => {
    if (gone) return;
    await terminate(child, exited, { graceMs: 2000 });
    fs.rmSync(o.socket, { force: true });
  };
  const deadline = Date.now() + (o.readyTimeoutMs ?? 10_000);
  while (!fs.existsSync(o.socket)) {
    if (gone) {
      const x = await exited;
      throw new Error(`virtiofsd exited before listening (code ${x.code}, signal ${x.signal}): ${tail(o.logFile)}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`virtiofsd did not create ${o.socket} within ${o.readyTimeoutMs ?? 10_000} ms: ${tail(o.logFile)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  o.log.info({ pid: child.pid, socket: o.socket, source: o.source }, 'virtiofsd listening');
  return { pid: child.pid!, exited, stop };
}
