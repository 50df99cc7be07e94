// Saving a booted QEMU guest as a template and restoring clones of it (x-ignore-shared migration):
// the template runs with its RAM in a shared file on tmpfs; saving streams only the device state
// (QEMU skips shared RAM) while the guest runs, so clones start running. A clone runs the same argv
// with the RAM file mapped privately (copy-on-write: the template's pages are shared by every clone
// until written) and `-incoming defer`, then reads the state stream.
import path from 'node:path';
import type { Logger } from 'pino';
import type { VmConfig } from '../config.js';
import { QemuVm, type StartOptions, VmError } from '../vm.js';
import { sleep, TimeoutError } from '../../sys/timeout.js';
import { MEMORY_FILE, removeDir, STATE_FILE, type Template, type TemplateMeta, type TemplateStore } from './store.js';
import { templateKey, type TemplateKeyInput } from './key.js';

export const TEMPLATE_SAVE_TIMEOUT = 'KATATS_TEMPLATE_SAVE_TIMEOUT';
export const TEMPLATE_RESTORE_TIMEOUT = 'KATATS_TEMPLATE_RESTORE_TIMEOUT';
const SAVE_TIMEOUT_MS = 60_000;
const RESTORE_TIMEOUT_MS = 30_000;

const IGNORE_SHARED = { capabilities: [{ capability: 'x-ignore-shared', state: true }] };

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
}

/** Polls query-migrate until it completes; fails on failed/cancelled, past `timeoutMs`, or when QEMU goes. */
async function migrationDone(vm: QemuVm, timeoutMs: number, code: string, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (!vm.running) throw new VmError(`QEMU exited while ${what}`, vm.id, vm.accel, vm.lastConsoleLines());
    const m = await vm.qmpExecute<MigrationInfo>('query-migrate');
    if (m.status === 'completed') return;
    if (m.status === 'failed' || m.status === 'cancelled') throw new VmError(`${what} ${m.status}: ${m['error-desc'] ?? 'no reason given'}`, vm.id, vm.accel, vm.lastConsoleLines());
    if (Date.now() > until) throw new TimeoutError(code, what, timeoutMs);
    await sleep(20);
  }
}

export interface BuildTemplateOptions {
  store: TemplateStore;
  input: TemplateKeyInput;
  /** the template VM's config; its RAM file is set here */
  config: VmConfig;
  start: StartOptions;
  /** resolves once the guest is ready to be saved (agent answering, optionally warmed) */
  ready: (vm: QemuVm) => Promise<{ warmMs: number }>;
  log: Logger;
}

/** Boots the template, waits for `ready`, saves it and stops it. */
export async function buildTemplate(o: BuildTemplateOptions): Promise<Template> {
  const key = templateKey(o.input);
  const dir = o.store.buildDir(key);
  const stateFile = path.join(dir, STATE_FILE);
  let vm: QemuVm | undefined;
  try {
    vm = await QemuVm.start({ ...o.config, memoryFile: { path: path.join(dir, MEMORY_FILE), shared: true }, incoming: false }, o.start);
    const { warmMs } = await o.ready(vm);
    const readyMs = vm.elapsed() - warmMs;
    const t0 = Date.now();
    await vm.qmpExecute('migrate-set-capabilities', IGNORE_SHARED);
    await vm.qmpExecute('migrate', { uri: `exec:cat > ${stateFile}` });
    await migrationDone(vm, SAVE_TIMEOUT_MS, TEMPLATE_SAVE_TIMEOUT, 'saving the template');
    const saveMs = Date.now() - t0;
    await vm.quit();
    const meta: TemplateMeta = {
      key,
      input: o.input,
      createdAt: new Date().toISOString(),
      buildMs: { ready: readyMs, warm: warmMs, save: saveMs },
      memoryMiB: o.config.memoryMiB,
    };
    const t = o.store.commit(dir, meta);
    o.log.info({ template: key.slice(0, 12), dir: t.dir, ...meta.buildMs }, 'template saved');
    return t;
  } catch (e) {
    if (vm?.running) await vm.kill();
    removeDir(dir);
    throw e;
  }
}

/**
 * Starts a clone of `t` with this pod's config (its own sockets, logs, share path and launch
 * data, its NICs hot-plugged). Resolves once the restored guest runs; the caller then talks to its agent. On any
 * failure the clone's QEMU is gone before the error is thrown.
 */
export async function cloneTemplate(t: Template, config: VmConfig, start: StartOptions): Promise<QemuVm> {
  // A template has no NICs (a pod's TAPs are its own): the clone's QEMU inherits them all the same
  // (start.launchWrapper) and plugs them in once the guest runs.
  const { netdevs, ...shape } = config;
  const vm = await QemuVm.start({ ...shape, memoryFile: { path: t.memoryFile, shared: false }, incoming: true }, start);
  try {
    await vm.qmpExecute('migrate-set-capabilities', IGNORE_SHARED);
    await vm.qmpExecute('migrate-incoming', { uri: `exec:cat ${t.stateFile}` });
    await migrationDone(vm, RESTORE_TIMEOUT_MS, TEMPLATE_RESTORE_TIMEOUT, 'restoring the template');
    const st = await vm.queryStatus();
    // Saved running, a clone runs on its own; a template saved paused would need `cont`.
    if (!st.running) await vm.qmpExecute('cont');
    for (const n of netdevs ?? []) await vm.hotplugNic(n);
    vm.log.info({ template: t.meta.key.slice(0, 12), restoredMs: vm.elapsed() }, 'clone restored');
    return vm;
  } catch (e) {
    await vm.kill();
    throw e;
  }
}
