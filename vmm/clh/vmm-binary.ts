// Which VMM runs `hypervisor = "clh"`: the real cloud-hypervisor where it is installed and can run
// (it needs a working /dev/kvm or /dev/mshv; it exits before serving its API otherwise), else
// katats-chv. The answer for a given binary is probed once per process, with a hard time limit.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { runTool } from '../../sys/exec.js';
import type { ClhFlavour } from './driver.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** How to run katats-chv: dist/chv.mjs next to a bundle, else its source under tsx (a checkout). */
export function chvCommand(): string[] {
  const bundled = path.join(HERE, 'chv.mjs');
  if (fs.existsSync(bundled)) return [process.execPath, bundled];
  const src = [path.join(HERE, '..', 'chv', 'cli.ts'), path.join(HERE, '..', 'vmm', 'chv', 'cli.ts')].find((c) => fs.existsSync(c));
  if (!src) throw new Error('katats-chv not found (neither dist/chv.mjs nor vmm/chv/cli.ts)');
  const tsx = createRequire(src).resolve('tsx');
  return [process.execPath, '--import', pathToFileURL(tsx).href, src];
}

export interface RealClhStatus {
  path: string;
  installed: boolean;
  /** it runs here: `--version` answers and a hypervisor device opens */
  usable: boolean;
  version?: string;
  why?: string;
}

function deviceOpens(dev: string): boolean {
  try {
    fs.closeSync(fs.openSync(dev, 'r+'));
    return true;
  } catch {
    return false;
  }
}

const probed = new Map<string, Promise<RealClhStatus>>();

/** Whether the cloud-hypervisor at `bin` can run VMs here (probed once; 10 s limit on the binary). */
export function probeRealClh(bin: string): Promise<RealClhStatus> {
  let p = probed.get(bin);
  if (!p) {
    p = (async (): Promise<RealClhStatus> => {
      if (!fs.existsSync(bin)) return { path: bin, installed: false, usable: false, why: `${bin} is not installed (Debian ships no cloud-hypervisor package)` };
      const r = await runTool(bin, ['--version'], { timeoutMs: 10_000, timeoutCode: 'KATATS_CLH_PROBE_TIMEOUT' }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
      if (r.code !== 0) return { path: bin, installed: true, usable: false, why: `${bin} --version failed: ${r.stderr.trim().slice(0, 200)}` };
      const version = r.stdout.trim();
      const dev = ['/dev/kvm', '/dev/mshv'].find(deviceOpens);
      if (!dev) return { path: bin, installed: true, usable: false, version, why: 'neither /dev/kvm nor /dev/mshv opens: cloud-hypervisor cannot run VMs here' };
      return { path: bin, installed: true, usable: true, version };
    })();
    probed.set(bin, p);
  }
  return p;
}

/** The VMM for `vmm = auto|cloud-hypervisor|katats-chv` (auto: the real one when usable). */
export async function chooseClhVmm(choice: 'auto' | ClhFlavour, bin: string): Promise<{ flavour: ClhFlavour; command: string[]; why: string }> {
  if (choice === 'katats-chv') return { flavour: 'katats-chv', command: chvCommand(), why: 'vmm = "katats-chv"' };
  const real = await probeRealClh(bin);
  if (choice === 'cloud-hypervisor') {
    if (!real.installed) throw new Error(`hypervisor.clh.vmm = "cloud-hypervisor": ${real.why}`);
    return { flavour: 'cloud-hypervisor', command: [bin], why: real.usable ? 'vmm = "cloud-hypervisor"' : `vmm = "cloud-hypervisor" (${real.why})` };
  }
  if (real.usable) return { flavour: 'cloud-hypervisor', command: [bin], why: `${bin} ${real.version ?? ''} runs here` };
  return { flavour: 'katats-chv', command: chvCommand(), why: real.why ?? 'cloud-hypervisor unusable' };
}
