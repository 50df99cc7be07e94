// Layer files mounted read-only on the host (mount(8): file-backed EROFS where the kernel has it,
// a loop device, released with the mount, otherwise), so that the overlay containerd mounts for a
// container (CRI reading /etc/passwd, runc's rootfs, `ctr`) finds its lower directories. These
// mounts are for host-side readers only: the guest never sees them, it gets the layer files and
// checks them with dm-verity itself.
//
// A layer stays mounted while an active or view snapshot uses it; mounts survive a restart of the
// snapshotter (the kernel keeps them), and are reused then.
import fs from 'node:fs';
import type { Logger } from 'pino';
import { isMounted, mount, umount } from '../sys/mount.js';
import type { Store } from './store.js';

export class HostMounts {
  private readonly pending = new Map<string, Promise<string>>();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  mountpoint(name: string): string {
    return this.store.layerMount(name);
  }

  mounted(name: string): boolean {
    return isMounted(this.mountpoint(name));
  }

  /** Mounts the layer unless it is; returns where. Concurrent callers share one mount(8). */
  ensure(name: string): Promise<string> {
    const at = this.mountpoint(name);
    const busy = this.pending.get(name);
    if (busy) return busy;
    if (isMounted(at)) return Promise.resolve(at);
    const p = (async () => {
      fs.mkdirSync(at, { recursive: true, mode: 0o755 });
      await mount(this.store.layerFile(name), at, 'erofs', ['ro']);
      this.log.info({ layer: name, at }, 'layer mounted on the host');
      return at;
    })().finally(() => this.pending.delete(name));
    this.pending.set(name, p);
    return p;
  }

  /** Unmounts every layer mount not in `needed` (an overlay that still uses one keeps its own reference). */
  async releaseUnneeded(needed: Set<string>): Promise<string[]> {
    const released: string[] = [];
    let names: string[];
    try {
      names = fs.readdirSync(this.store.dir('mnt'));
    } catch {
      return released;
    }
    for (const name of names) {
      if (needed.has(name) || this.pending.has(name)) continue;
      const at = this.mountpoint(name);
      try {
        if (isMounted(at)) await umount(at);
        fs.rmdirSync(at);
        released.push(name);
      } catch (err) {
        this.log.warn({ err, layer: name }, 'could not release a layer mount; kept for the next cleanup');
      }
    }
    return released;
  }
}
