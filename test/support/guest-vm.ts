// The VM tests' guest: a QEMU config for the project's guest image in a directory of its own
// (agent socket and log there), and the QEMUs a test file started, found by the tag in their -name.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import type { GuestImage } from '../../guest/build.js';
import type { VmConfig } from '../../vmm/config.js';

/** One vCPU, 512 MiB, TCG: what the VM tests boot unless `extra` says otherwise. */
export function guestVmConfig(image: GuestImage, id: string, dir: string, extra: Partial<VmConfig> = {}): VmConfig {
  return {
    id,
    vcpus: 1,
    memoryMiB: 512,
    kernel: image.kernel,
    initrd: image.initrd,
    rootfs: image.rootfs,
    baseCmdline: image.manifest.cmdline,
    agentSocket: path.join(dir, 'agent.sock'),
    agentLogFile: path.join(dir, 'agent.log'),
    accel: 'tcg',
    runDir: dir,
    ...extra,
  };
}

/** Command lines of the running QEMUs whose VM id starts with `tag` (their -name is katats-<id>). */
export function qemusTagged(tag: string): string[] {
  try {
    return execFileSync('pgrep', ['-af', `katats-${tag}`], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.includes('qemu-system'));
  } catch {
    return [];
  }
}
