// The VM factory (Kata's [factory] enable_template): a pod's VM as a clone of a template booted
// once, when the pod's VM has exactly the template's shape (vmm/template/key.ts); a cold boot
// otherwise, with a log line saying why. After a restore the guest is told the host's time and
// given fresh entropy before anything else runs in it; its launch data is its own (fw_cfg comes
// from the clone's argv and the agent reads it there at SetPolicy).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { serviceClient } from '../proto/rpc.js';
import type { GuestManifest } from '../guest/manifest.js';
import { resolveAccel } from '../vmm/accel.js';
import type { VmConfig } from '../vmm/config.js';
import type { QemuVm, StartOptions } from '../vmm/vm.js';
import { NotTemplatableError, templateKey, templateKeyInput, type TemplateKeyInput } from '../vmm/template/key.js';
import { TemplateStore, type Template } from '../vmm/template/store.js';
import { buildTemplate, cloneTemplate } from '../vmm/template/qemu-template.js';
import { isMounted, mount, umount } from '../sys/mount.js';
import { withTimeout } from '../sys/timeout.js';
import type { KatatsConfig, QemuConfig } from './config.js';
import { privateDir } from './layout.js';
import { AGENT_REDIAL_TIMEOUT_MS, prepareLaunch } from './vm.js';
import { qemuVmConfig } from './vm-qemu.js';
import type { Client } from '../proto/ttrpc/index.js';
import { healthyAgent } from './agent-ready.js';
import { connectUnix } from '../vmm/qemu-hypervisor.js';
import { warmTemplate } from './factory-warm.js';

export const AFTER_RESTORE_TIMEOUT = 'KATATS_AFTER_RESTORE_TIMEOUT';
const AFTER_RESTORE_TIMEOUT_MS = 10_000;
/** Bytes of host entropy a clone's kernel gets (its CRNG is reseeded from them at once). */
const SEED_BYTES = 64;
/** Marks a tmpfs that `factory init` mounted (and `destroy` unmounts). */
const MOUNT_MARKER = '.katats-tmpfs';
const TMPFS_MAGIC = 0x01021994;
/** The template VM's name (and its agent and console logs' prefix in the log dir). */
const TEMPLATE_ID = 'factory-template';

/** The guest image's digests, or why there are none. */
function imageDigests(q: QemuConfig): TemplateKeyInput['image'] | string {
  if (q.kernel || q.initrd || q.image) return 'hypervisor.qemu kernel/initrd/image are set explicitly: no digests to key a template on';
  try {
    const m = JSON.parse(fs.readFileSync(q.guest_manifest, 'utf8')) as GuestManifest;
    return { kernel: m.kernel.sha256, initrd: m.initrd.sha256, rootfs: m.rootfs.sha256 };
  } catch (e) {
    return `guest image manifest ${q.guest_manifest}: ${(e as Error).message}`;
  }
}

/** The key inputs for a VM of this config, or why it cannot come from a template. */
export async function keyInputFor(config: KatatsConfig, vm: VmConfig): Promise<TemplateKeyInput | string> {
  const image = imageDigests(config.hypervisor.qemu);
  if (typeof image === 'string') return image;
  try {
    const { accel } = await resolveAccel(vm.accel, { cacheDir: path.join(config.runtime.state_dir, 'vmm'), kernel: vm.kernel, qemuBinary: vm.qemuBinary });
    return templateKeyInput(vm, accel, image);
  } catch (e) {
    if (e instanceof NotTemplatableError) return e.message;
    throw e;
  }
}

/**
 * A running clone for this pod, its guest reseeded and its clock set, or undefined (after logging
 * why) when the pod's VM must boot cold: factory off, no template for its key, or any failure while
 * restoring (the clone's QEMU is gone by then). The shim then dials the agent as after a cold boot.
 */
export async function cloneForPod(config: KatatsConfig, cfg: VmConfig, start: StartOptions, log: Logger): Promise<QemuVm | undefined> {
  if (!config.factory.enable_template) return undefined;
  if (cfg.snpReportSocket) {
    // A clone would run the template's guest, registered (and measured) as no pod: the SNP daemon's record is per VM.
    log.warn({ boot: 'cold', reason: 'attestation: the SNP firmware registers each VM at its own launch; a template clone cannot carry a per-pod registration' }, 'factory: cold boot');
    return undefined;
  }
  if (cfg.initdataFile) {
    // The agent checks initdata against the launch data once, at its start: a clone's agent started in the template.
    log.warn({ boot: 'cold', reason: "initdata: the guest's agent takes it at its start; a template clone started without it" }, 'factory: cold boot');
    return undefined;
  }
  const nics = cfg.netdevs?.length ?? 0;
  if (nics > (cfg.hotplugSlots ?? 0)) {
    log.warn({ boot: 'cold', reason: `${nics} NICs: a clone hot-plugs each into one of the ${cfg.hotplugSlots ?? 0} hotplug slots ([hypervisor.qemu] pcie_root_port)` }, 'factory: cold boot');
    return undefined;
  }
  const t0 = Date.now();
  // The shape without NICs: the clone hot-plugs them (vmm/template/qemu-template.ts).
  const { netdevs: _nics, ...shape } = cfg;
  const input = await keyInputFor(config, shape).catch((e: Error) => `computing the template key failed: ${e.message}`);
  if (typeof input === 'string') {
    log.warn({ boot: 'cold', reason: input }, 'factory: cold boot');
    return undefined;
  }
  const found = new TemplateStore(config.factory.template_path).lookup(input);
  if ('reason' in found) {
    log.warn({ boot: 'cold', reason: found.reason }, 'factory: cold boot');
    return undefined;
  }
  let vm: QemuVm | undefined;
  let client: Client | undefined;
  try {
    vm = await cloneTemplate(found.template, cfg, start);
    const restored = vm;
    const deadline = config.agent.katats.dial_timeout * 1000;
    await restored.waitReady(async (signal) => {
      client = await agentReady(cfg.agentSocket, signal, deadline, AGENT_REDIAL_TIMEOUT_MS);
    }, deadline);
    await afterRestore(client!, log);
    log.info({ boot: 'template', template: found.template.meta.key.slice(0, 12), ms: Date.now() - t0, restoredMs: restored.timeline.readyMs }, 'factory: VM cloned from template');
    // The pod keeps this connection (takeRestoredAgent): no second dial, hello and Health round.
    restoredAgents.set(restored, client!);
    return restored;
  } catch (e) {
    await client?.close().catch(() => {});
    if (vm?.running) await vm.kill();
    log.warn({ boot: 'cold', reason: `restoring the template failed: ${(e as Error).message}`, template: found.template.meta.key.slice(0, 12) }, 'factory: cold boot');
    return undefined;
  }
}

/** The agent connections of clones, from their restore until the pod's launch takes them. */
const restoredAgents = new WeakMap<QemuVm, Client>();

/** The restored clone's agent client, already past Health, reseeded and clock set; once. */
export function takeRestoredAgent(vm: QemuVm): Client | undefined {
  const c = restoredAgents.get(vm);
  restoredAgents.delete(vm);
  return c;
}

/** A client of the agent behind a QEMU agent socket, once it answers Health.Check (shim/agent-ready.ts). */
export function agentReady(socket: string, signal: AbortSignal, timeoutMs: number, redialTimeoutMs = timeoutMs): Promise<Client> {
  return healthyAgent((o) => connectUnix(socket, o), signal, timeoutMs, redialTimeoutMs);
}

/** The guest's clock from the host and its kernel CRNG reseeded from host entropy (no process spawned in the guest). */
export async function afterRestore(client: Client, log: Logger): Promise<void> {
  const agent = serviceClient(client, 'grpc.AgentService');
  const now = Date.now();
  // Both in flight at once (the agent's keeper takes them in turn): one round trip, not two.
  const t = Date.now();
  const work = Promise.all([
    agent.ReseedRandomDev({ data: randomBytes(SEED_BYTES) }),
    // Kata's SetGuestDateTime: seconds and microseconds.
    agent.SetGuestDateTime({ Sec: Math.floor(t / 1000), Usec: (t % 1000) * 1000 }),
  ]);
  await withTimeout(work, AFTER_RESTORE_TIMEOUT_MS, { code: AFTER_RESTORE_TIMEOUT, what: 'setting up a restored guest (entropy, clock)' });
  log.debug({ ms: Date.now() - now }, 'restored guest reseeded and clock set');
}

/**
 * The template's VM: a pod's (shim/vm.ts prepareLaunch, vm-qemu.ts) in a build directory, with
 * zeros for launch data (any launch-data check a clone passes is against its own fw_cfg) and no
 * NICs (a pod's TAPs are its own: a clone hot-plugs them after its restore).
 */
function templateVmConfig(config: KatatsConfig, dir: string): VmConfig {
  const plan = prepareLaunch(config, 'qemu', { sandboxId: TEMPLATE_ID, stateDir: dir, launchData: Buffer.alloc(32) });
  return qemuVmConfig(config.hypervisor.qemu, plan);
}

function isTmpfs(dir: string): boolean {
  try {
    return fs.statfsSync(dir).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/** `katats factory init`: the template for the configured VM shape, built unless there is one. */
export async function factoryInit(config: KatatsConfig, log: Logger): Promise<{ template: Template; built: boolean }> {
  const root = config.factory.template_path;
  const store = new TemplateStore(root);
  fs.mkdirSync(root, { recursive: true, mode: 0o700 });
  if (!isTmpfs(root)) {
    // Guest RAM belongs in memory: a template on disk would page every clone's reads from it.
    const sizeMiB = config.hypervisor.qemu.default_memory * 2 + 64;
    await mount('tmpfs', root, 'tmpfs', [`size=${sizeMiB}m`, 'mode=0700', 'nosuid', 'nodev', 'noexec']);
    fs.writeFileSync(path.join(root, MOUNT_MARKER), '');
    log.info({ root, sizeMiB }, 'factory: tmpfs mounted for templates');
  }
  const buildRoot = privateDir(path.join(config.runtime.state_dir, 'factory'));
  privateDir(config.runtime.log_dir);
  const dir = fs.mkdtempSync(path.join(buildRoot, 'b'));
  try {
    const cfg = templateVmConfig(config, dir);
    const input = await keyInputFor(config, cfg);
    if (typeof input === 'string') throw new Error(`this configuration's VMs cannot be templated: ${input}`);
    const found = store.lookup(input);
    if ('template' in found) return { template: found.template, built: false };
    const deadline = config.agent.katats.dial_timeout * 1000;
    const template = await buildTemplate({
      store,
      input,
      config: cfg,
      start: { logger: log, cacheDir: path.join(config.runtime.state_dir, 'vmm') },
      log,
      ready: async (vm) => {
        let client: Client | undefined;
        await vm.waitReady(async (signal) => {
          client = await agentReady(cfg.agentSocket, signal, deadline);
        }, deadline);
        try {
          const t0 = Date.now();
          // The calls every clone starts with, then a pod's lifecycle: compiled and cached in the template.
          await afterRestore(client!, log);
          const warmed = await warmTemplate(client!, cfg.sharedDir?.path, log);
          log.info({ ...warmed, ms: Date.now() - t0 }, 'factory: template warmed');
          return { warmMs: Date.now() - t0 };
        } finally {
          await client!.close();
        }
      },
    });
    return { template, built: true };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface FactoryStatus {
  root: string;
  enabled: boolean;
  tmpfs: boolean;
  /** the key this configuration's pods need, or why they cannot use a template */
  wanted: string;
  templates: { key: string; createdAt: string; memoryMiB: number; buildMs: Template['meta']['buildMs']; matches: boolean }[];
}

export async function factoryStatus(config: KatatsConfig): Promise<FactoryStatus> {
  const root = config.factory.template_path;
  const store = new TemplateStore(root);
  const dir = fs.mkdtempSync(path.join(privateDir(path.join(config.runtime.state_dir, 'factory')), 's'));
  let wanted: string;
  try {
    const input = await keyInputFor(config, templateVmConfig(config, dir));
    wanted = typeof input === 'string' ? `not templatable: ${input}` : templateKey(input);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return {
    root,
    enabled: config.factory.enable_template,
    tmpfs: isTmpfs(root),
    wanted,
    templates: store.list().map((t) => ({
      key: t.meta.key,
      createdAt: t.meta.createdAt,
      memoryMiB: t.meta.memoryMiB,
      buildMs: t.meta.buildMs,
      matches: t.meta.key === wanted,
    })),
  };
}

/** `katats factory destroy`: every template gone; a tmpfs init mounted is detached (clones still mapping it keep it until they exit). */
export async function factoryDestroy(config: KatatsConfig): Promise<string[]> {
  const root = config.factory.template_path;
  const removed = new TemplateStore(root).destroy();
  if (fs.existsSync(path.join(root, MOUNT_MARKER)) && isMounted(root)) await umount(root, true);
  return removed;
}
