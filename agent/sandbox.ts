// The sandbox: everything the agent keeps between requests. Containers, the storages they
// share (counted per mount point), the pod's shared namespaces, guest hooks, DNS, the OOM event
// queue and the policy.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { AgentConfig } from './config.js';
import type { Logger } from './log.js';
import type { Container } from './container.js';
import { Crun } from './runtime/crun.js';
import { PolicyGate } from './policy-hook.js';
import { allowAllPolicy } from '../policy/allow-all.js';
import { addStorage, removeStorage, type StorageHandle } from './storage.js';
import type { MountedLayer } from './layers.js';
import { internal, notFound, precondition, TtrpcError, Code } from './errors.js';
import { ROOT_HASH } from '../proto/layer-mounts.js';
import { isLayerStorage } from '../proto/layer-storage.js';
import { umount, isMounted } from '../sys/mount.js';
import { runTool } from '../sys/exec.js';
import type { OciHook } from './spec.js';
import { openDirBeneath, removeBeneath, replaceFileAt, type Dir } from './beneath.js';
import { checkGuestHookPath, sandboxDir } from './places.js';

/** How long making the pod's ipc/uts namespaces may take. */
const SHARED_NS_TIMEOUT_MS = 30_000;

interface SharedStorage {
  handle: StorageHandle;
  refs: number;
}

export class Sandbox {
  id = '';
  hostname = '';
  running = false;
  readonly containers = new Map<string, Container>();
  /** ids being created right now, so that a concurrent duplicate fails fast */
  readonly creating = new Set<string>();
  private readonly storages = new Map<string, SharedStorage>();
  sandboxMounts: string[] = [];
  /** Directories right below the copy root that CopyFile made: a container's copied files, removed with it. */
  readonly copiedDirs = new Set<string>();
  guestHooks: { prestart: OciHook[]; poststart: OciHook[]; poststop: OciHook[] } | undefined;
  /** /proc/PID/ns/pid of the first container: containers asking for sandbox_pidns join it */
  pidnsPath: string | undefined;
  sharedNsDir: string | undefined;
  private oomQueue: string[] = [];
  private oomWaiters: Array<{ resolve: (cid: string) => void; reject: (e: Error) => void }> = [];
  readonly crun: Crun;
  readonly policy: PolicyGate;
  log: Logger;

  constructor(readonly config: AgentConfig) {
    this.log = config.log;
    this.crun = new Crun({
      crun: config.crun,
      runner: config.runner,
      root: config.crunRoot,
      hideUnified: config.cgroups.hideUnified,
      ...(config.crunFixedAddresses ? { fixedAddresses: true } : {}),
      ...(config.keeper && config.runnersByKeeper !== false ? { keeper: config.keeper, outputDir: path.join(config.stateDir, 'crun-output') } : {}),
      log: config.log,
    });
    this.policy = new PolicyGate({
      launchDigest: config.launchDigest,
      defaultPolicy: config.defaultPolicy ?? { text: allowAllPolicy(), source: 'built-in allow-all' },
      ...(config.policyLimits ? { limits: config.policyLimits } : {}),
      ...(config.launchProblem ? { launchProblem: config.launchProblem } : {}),
      log: config.log,
    });
  }

  get sandboxDir(): string {
    return sandboxDir(this.config.stateDir);
  }

  /** The sandbox dir, made when missing, walked from the state dir without following symlinks. */
  private openSandboxDir(sub: string[] = []): Dir {
    return openDirBeneath(this.config.stateDir, path.join(this.sandboxDir, ...sub), 'sandbox', 0o755).dir;
  }

  container(cid: string): Container {
    const c = this.containers.get(cid);
    if (!c) throw notFound(`container ${cid}`);
    return c;
  }

  /**
   * Mounts storages (sharing ones already mounted at the same point); returns their mount points.
   * `cid`: the container whose CreateContainer brings them.
   */
  async addStorages(list: grpc.Storage[], cid?: string): Promise<string[]> {
    const done: string[] = [];
    try {
      for (const s of list) {
        const have = this.storages.get(s.mount_point);
        if (have) {
          // A layer is shared only with the same content: the root hash it was opened with.
          const rh = s.options.find((o) => o.startsWith(ROOT_HASH))?.slice(ROOT_HASH.length);
          if (have.handle.layer && isLayerStorage(s) && rh !== have.handle.layer.rootHash) {
            throw precondition(`layer ${have.handle.layer.name} is open with root hash ${have.handle.layer.rootHash}, not ${rh ?? '(none)'}`);
          }
          have.refs++;
          done.push(s.mount_point);
          continue;
        }
        const { stateDir, sysfsRoot, pciRescan, runner } = this.config;
        const layerOf = (name: string) => this.layer(name);
        const handle = await addStorage(s, { log: this.log, stateDir, sysfsRoot, pciRescan, runner, ...(cid !== undefined ? { cid } : {}), layerOf });
        this.storages.set(s.mount_point, { handle, refs: 1 });
        done.push(s.mount_point);
      }
    } catch (e) {
      await this.releaseStorages(done);
      throw e;
    }
    return done;
  }

  async releaseStorages(mountPoints: string[]): Promise<void> {
    for (const m of [...mountPoints].reverse()) {
      const s = this.storages.get(m);
      if (!s) continue;
      if (--s.refs > 0) continue;
      this.storages.delete(m);
      await removeStorage(s.handle, this.log).catch((e) => this.log.warn({ err: e, mount_point: m }, 'storage cleanup failed'));
    }
  }

  /** A layer mounted in this sandbox, by name. */
  layer(name: string): MountedLayer | undefined {
    for (const s of this.storages.values()) if (s.handle.layer?.name === name) return s.handle.layer;
    return undefined;
  }

  get storageCount(): number {
    return this.storages.size;
  }

  /** Persistent IPC and UTS namespaces for the pod (upstream's setup_shared_namespaces). */
  async setupSharedNamespaces(): Promise<void> {
    const dir = this.openSandboxDir(['ns']);
    try {
      // The helper creates and bind-mounts DIR/ipc and DIR/uts in exactly the directory verified here:
      // forked by the keeper where there is one (a spawn from node costs ~0.5 s under TCG).
      const byKeeper = await this.config.keeper?.sharedNamespaces(dir.ref, this.hostname, SHARED_NS_TIMEOUT_MS).catch((e: Error) => {
        throw internal(`shared namespaces: ${e.message}`);
      });
      if (!byKeeper) {
        const r = await runTool(this.config.runner, ['ns', dir.ref, this.hostname], { timeoutMs: SHARED_NS_TIMEOUT_MS, timeoutCode: 'KATATS_SHARED_NS_TIMEOUT' }).catch((e: Error) => {
          throw internal(`shared namespaces: ${e.message}`);
        });
        if (r.code !== 0) throw internal(`shared namespaces: ${r.stderr.trim() || `exit ${r.code ?? r.signal}`}`);
      }
    } finally {
      dir.close();
    }
    this.sharedNsDir = dir.path;
  }

  /** Guest hooks from guest_hook_path/{prestart,poststart,poststop}/: every executable file of the guest image. */
  loadGuestHooks(dir: string): void {
    checkGuestHookPath(this.config.stateDir, dir);
    const read = (kind: string): OciHook[] => {
      const d = path.join(dir, kind);
      let names: string[] = [];
      try {
        names = fs.readdirSync(d).sort();
      } catch {
        return [];
      }
      return names
        .map((n) => path.join(d, n))
        .filter((p) => {
          try {
            const st = fs.statSync(p);
            checkGuestHookPath(this.config.stateDir, p);
            return st.isFile() && (st.mode & 0o111) !== 0;
          } catch {
            return false;
          }
        })
        .map((p) => ({ path: p, args: [p, kind] }));
    };
    this.guestHooks = { prestart: read('prestart'), poststart: read('poststart'), poststop: read('poststop') };
    this.log.info({ dir, hooks: this.guestHooks }, 'guest hooks loaded');
  }

  writeDns(dns: string[]): void {
    const dir = this.openSandboxDir();
    try {
      replaceFileAt(dir, 'resolv.conf', dns.length ? dns.join('\n') + '\n' : '', 0o644, 'DNS');
    } finally {
      dir.close();
    }
  }

  pushOom(cid: string): void {
    this.log.warn({ container_id: cid }, 'OOM event');
    const w = this.oomWaiters.shift();
    if (w) w.resolve(cid);
    else this.oomQueue.push(cid);
  }

  /** GetOOMEvent: the next OOM'd container id, waiting for one. */
  nextOom(signal: AbortSignal): Promise<string> {
    const q = this.oomQueue.shift();
    if (q !== undefined) return Promise.resolve(q);
    return new Promise((resolve, reject) => {
      const entry = {
        resolve: (cid: string) => {
          signal.removeEventListener('abort', onAbort);
          resolve(cid);
        },
        reject: (e: Error) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      const onAbort = () => {
        const i = this.oomWaiters.indexOf(entry);
        if (i >= 0) this.oomWaiters.splice(i, 1);
        reject(signal.reason instanceof Error ? signal.reason : new TtrpcError(Code.Canceled, 'GetOOMEvent canceled'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.oomWaiters.push(entry);
    });
  }

  failOomWaiters(why: string): void {
    for (const w of this.oomWaiters.splice(0)) w.reject(new TtrpcError(Code.Unavailable, why));
  }

  /** Releases sandbox-level resources (containers are removed by the caller first). */
  async teardown(): Promise<void> {
    await this.releaseStorages(this.sandboxMounts);
    this.sandboxMounts = [];
    if (this.sharedNsDir) {
      for (const n of ['ipc', 'uts']) {
        const p = path.join(this.sharedNsDir, n);
        if (isMounted(p)) await umount(p).catch(() => umount(p, true));
      }
      this.sharedNsDir = undefined;
    }
    try {
      removeBeneath(this.config.stateDir, this.sandboxDir, 'sandbox teardown');
    } catch (e) {
      this.log.warn({ err: e, dir: this.sandboxDir }, 'sandbox dir not removed');
    }
    this.pidnsPath = undefined;
    this.guestHooks = undefined;
    this.running = false;
    this.failOomWaiters('sandbox destroyed');
    // A template's warm-up sandbox ends here, and its clones' first requests (clock, entropy) must
    // not be logged under its id.
    this.id = '';
    this.log = this.config.log;
  }
}
