// A private katats installation for tests and the demo: the host binaries built, the guest image
// built, a configuration in a temp dir, and a shim wrapper that points the shim at it. containerd
// runs the wrapper as containerd-shim-katats-v2.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildHostBinaries } from '../../scripts/build.js';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import type { GuestImage } from '../../guest/build.js';
import type { RuntimeRegistration } from '../../harness/containerd.js';
import { resolveAccel } from '../../vmm/accel.js';

export const KATATS_RUNTIME = 'io.containerd.katats.v2';

export interface KatatsEnv {
  dir: string;
  configFile: string;
  stateDir: string;
  logDir: string;
  image: GuestImage;
  /** What the VMs will run on: KVM only where the time-limited probe proved it works. */
  accel: 'kvm' | 'tcg';
  shimWrapper: string;
  runtime: RuntimeRegistration;
  /** Removes the temp dir (after containerd and every shim are gone). */
  cleanup(): void;
}

export interface KatatsEnvOptions {
  onProgress?: (s: string) => void;
  accel?: 'auto' | 'tcg' | 'kvm';
  extraToml?: string;
  qemuToml?: string;
  /** runtime.hypervisor; "clh" adds a [hypervisor.clh] table on the same guest image */
  hypervisor?: 'qemu' | 'clh';
  clhToml?: string;
}

export async function katatsEnv(opts: KatatsEnvOptions = {}): Promise<KatatsEnv> {
  const say = opts.onProgress ?? (() => {});
  const { binDir } = await buildHostBinaries(say);
  const image = await buildFullGuestImage(say);
  // Short: unix socket paths (agent, QMP) live below the state dir.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-'));
  const stateDir = path.join(dir, 'run');
  const logDir = path.join(dir, 'log');
  const configFile = path.join(dir, 'configuration.toml');
  // Hard links keep this environment's image alive even if the builder's cache is pruned meanwhile.
  const imageDir = path.join(dir, 'guest');
  fs.mkdirSync(imageDir);
  for (const f of [image.manifest.kernel.file, image.manifest.initrd.file, image.manifest.rootfs.file, 'manifest.json']) {
    fs.linkSync(path.join(image.dir, f), path.join(imageDir, f));
  }
  fs.writeFileSync(
    configFile,
    [
      '[hypervisor.qemu]',
      `guest_manifest = "${path.join(imageDir, 'manifest.json')}"`,
      `accel = "${opts.accel ?? 'auto'}"`,
      // TOML forbids opening [hypervisor.qemu] twice: keys for it cannot go into extraToml.
      opts.qemuToml ?? '',
      ...(opts.hypervisor === 'clh' ? ['[hypervisor.clh]', `guest_manifest = "${path.join(imageDir, 'manifest.json')}"`, opts.clhToml ?? ''] : []),
      // The suite boots several TCG guests at once on 2 cores, where one may take longer than the
      // 60 s default to answer: the tests check what a pod does, not how fast it boots.
      '[agent.katats]',
      'dial_timeout = 180',
      '[runtime]',
      ...(opts.hypervisor ? [`hypervisor = "${opts.hypervisor}"`] : []),
      `state_dir = "${stateDir}"`,
      `log_dir = "${logDir}"`,
      'enable_debug = true',
      opts.extraToml ?? '',
    ].join('\n'),
  );
  const { accel } = await resolveAccel(opts.accel ?? 'auto', { cacheDir: path.join(stateDir, 'vmm'), kernel: image.kernel });
  const shimWrapper = path.join(dir, 'containerd-shim-katats-v2');
  fs.writeFileSync(shimWrapper, `#!/bin/sh\nKATATS_CONF_FILE=${configFile} exec ${path.join(binDir, 'containerd-shim-katats-v2')} "$@"\n`, { mode: 0o755 });
  return {
    dir,
    configFile,
    stateDir,
    logDir,
    image,
    accel,
    shimWrapper,
    runtime: { name: 'katats', runtimeType: KATATS_RUNTIME, shimBinary: shimWrapper },
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
