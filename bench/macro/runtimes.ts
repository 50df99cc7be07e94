// The runtimes the macro benchmark compares, found on this machine: runc (containerd's runc shim),
// gVisor (Debian sid's runsc through the runc shim and its wrapper), and the katats slot (our shim,
// found on PATH as containerd-shim-katats-v2 or at $KATATS_SHIM). A runtime that cannot be had is
// kept with the reason, so that the report says why instead of showing a number.
import fs from 'node:fs';
import { run, which } from '../../harness/exec.js';
import { RUNC_V2, type RuntimeRegistration } from '../../harness/containerd.js';
import { prepareRunsc, runscRuntime } from '../../harness/runsc.js';
import { KATATS_RUNTIME, katatsEnv } from '../../test/shim/katats-env.js';

export { KATATS_RUNTIME };
export const KATATS_SHIM = 'containerd-shim-katats-v2';

export interface RuntimeCandidate {
  name: string;
  /** What the runtime is, for the report. */
  label: string;
  registration?: RuntimeRegistration;
  version?: string;
  /** "n/a (no VM)" for runc and runsc; KVM or TCG for a VM runtime when it says so. */
  virtualization: string;
  /** Set when the runtime cannot run here. */
  unavailable?: string;
  /** Removes what preparing the runtime made (katats: its private config and image links). */
  cleanup?: () => void;
}

async function firstLine(cmd: string, args: string[]): Promise<string | undefined> {
  try {
    const r = await run(cmd, args, { timeoutMs: 20_000 });
    return r.code === 0 ? r.stdout.split('\n')[0]!.trim() : undefined;
  } catch {
    return undefined;
  }
}

/** The shim's `-v` answer, e.g. "containerd-shim-katats-v2 0.1.0 (node v20.19.0)". */
async function shimVersion(bin: string): Promise<string | undefined> {
  try {
    const r = await run(bin, ['-v'], { timeoutMs: 20_000 });
    const v = /Version:\s*(\S+)/.exec(r.stdout)?.[1];
    const node = /Runtime:\s*(.+)/.exec(r.stdout)?.[1]?.trim();
    return r.code === 0 && v ? `containerd-shim-katats-v2 ${v}${node ? ` (${node})` : ''}` : undefined;
  } catch {
    return undefined;
  }
}

export async function findRuntimes(log: (s: string) => void): Promise<RuntimeCandidate[]> {
  const out: RuntimeCandidate[] = [];

  const runcVersion = await firstLine('runc', ['--version']);
  out.push({
    name: 'runc',
    label: `runc (${RUNC_V2})`,
    registration: { name: 'runc', runtimeType: RUNC_V2 },
    version: runcVersion,
    virtualization: 'n/a (no VM)',
    ...(runcVersion ? {} : { unavailable: 'runc is not installed (apt-get install runc; scripts/setup.sh does it)' }),
  });

  try {
    const runsc = await prepareRunsc({ onProgress: log });
    out.push({
      name: 'runsc',
      label: 'gVisor runsc via the runc shim (--network=none --ignore-cgroups)',
      registration: runscRuntime(runsc),
      version: `${runsc.version} (Debian ${runsc.debVersion})`,
      virtualization: 'n/a (no VM)',
    });
  } catch (err) {
    out.push({ name: 'runsc', label: 'gVisor runsc', virtualization: 'n/a (no VM)', unavailable: `runsc could not be had: ${(err as Error).message}` });
  }

  const fromEnv = process.env.KATATS_SHIM;
  const shim = fromEnv ? (fs.existsSync(fromEnv) ? fromEnv : undefined) : await which(KATATS_SHIM);
  if (shim) {
    out.push({
      name: 'katats',
      label: `katats (${KATATS_RUNTIME}, ${shim})`,
      registration: { name: 'katats', runtimeType: KATATS_RUNTIME, shimBinary: shim },
      version: await shimVersion(shim),
      virtualization: process.env.KATATS_VIRT ?? 'as configured for the installed shim',
    });
  } else {
    // No installed shim: build this checkout's (host binaries, guest image, private config).
    try {
      const env = await katatsEnv({ onProgress: log });
      out.push({
        name: 'katats',
        label: `katats (${KATATS_RUNTIME}, this checkout; guest ${env.image.manifest.kernel.release}, measurement ${env.image.manifest.measurement.slice(0, 12)})`,
        registration: env.runtime,
        version: await shimVersion(env.shimWrapper),
        virtualization: env.accel.toUpperCase(),
        cleanup: env.cleanup,
      });
    } catch (err) {
      out.push({ name: 'katats', label: `katats (${KATATS_RUNTIME})`, virtualization: 'n/a (not available)', unavailable: `could not prepare katats: ${(err as Error).message}` });
    }
  }
  return out;
}
