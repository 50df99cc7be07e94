// Acceleration: a KVM probe with a hard wall-clock limit, cached; TCG otherwise.
//
// On some hosts /dev/kvm opens and KVM_CREATE_VM works, yet a guest spins in the host kernel
// forever. So the probe boots QEMU with -accel kvm and only the firmware (SeaBIOS prints its
// banner on the serial port: guest code demonstrably ran), and kills it after timeoutMs.
import { spawn } from 'node:child_process';
import { runTool } from '../sys/exec.js';
import fsSync, { constants, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Accel, AccelChoice } from './config.js';

export interface KvmProbeResult {
  usable: boolean;
  /** 'kernel': a Linux kernel booted to its root-mount panic; 'firmware': only SeaBIOS ran */
  kind: 'kernel' | 'firmware';
  reason: string;
  hostKernel: string;
  qemu: string;
  probedAt: string;
  elapsedMs: number;
}

export class KvmUnavailableError extends Error {
  constructor(readonly probe: KvmProbeResult) {
    super(`KVM was requested (accel=kvm) but is not usable on this host: ${probe.reason}; use accel=tcg or accel=auto`);
    this.name = 'KvmUnavailableError';
  }
}

/** CPU model used with KVM (the probe and the VMs must agree). */
export const KVM_CPU = process.env.KATATS_KVM_CPU ?? 'host';

/** Firmware-only probe: SeaBIOS's banner. Weak: on some hosts the firmware runs and the kernel hangs. */
const FIRMWARE_MARKER = /SeaBIOS|iPXE|Booting from/;
/** Kernel probe: the kernel got all the way to looking for a root filesystem (and panicked). */
const KERNEL_MARKER = /VFS: Unable to mount root|Kernel panic|No working init found|Run \S+ as init/;

async function qemuVersion(bin: string): Promise<string> {
  try {
    const r = await runTool(bin, ['--version'], { timeoutMs: 10_000, timeoutCode: 'KATATS_QEMU_VERSION_TIMEOUT', maxOutputBytes: 4096 });
    return r.stdout.split('\n')[0]?.trim() || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Runs the probe now (no cache). Never takes longer than timeoutMs (+ kill latency). */
export async function runKvmProbe(opts: { qemuBinary?: string; timeoutMs?: number; kernel?: string } = {}): Promise<KvmProbeResult> {
  const bin = opts.qemuBinary ?? 'qemu-system-x86_64';
  const timeoutMs = opts.timeoutMs ?? 8000;
  const kind = opts.kernel ? 'kernel' : 'firmware';
  const marker = opts.kernel ? KERNEL_MARKER : FIRMWARE_MARKER;
  const base = { kind, hostKernel: os.release(), qemu: await qemuVersion(bin), probedAt: new Date().toISOString() } as const;
  const t0 = Date.now();
  try {
    await fs.access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch (e) {
    return { ...base, usable: false, reason: `/dev/kvm not accessible (${(e as Error).message})`, elapsedMs: Date.now() - t0 };
  }
  const args = ['-nodefaults', '-no-user-config', '-nographic', '-machine', 'pc', '-accel', 'kvm', '-cpu', KVM_CPU, '-m', '128', '-serial', 'stdio', '-no-reboot'];
  // No initrd, no disk: the kernel boots until it cannot mount a root filesystem and panics.
  if (opts.kernel) args.push('-kernel', opts.kernel, '-append', 'console=ttyS0 panic=-1 loglevel=4 root=/dev/null');
  return new Promise<KvmProbeResult>((resolve) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: false });
    let out = '';
    let err = '';
    let settled = false;
    const finish = (usable: boolean, reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      resolve({ ...base, usable, reason, elapsedMs: Date.now() - t0 });
    };
    const timer = setTimeout(
      () => finish(false, `a KVM guest (${kind} probe) did not reach its marker within ${timeoutMs} ms (it hangs in the host kernel); killed`),
      timeoutMs,
    );
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (marker.test(out)) {
        finish(true, opts.kernel ? 'a Linux kernel booted under KVM to its root-mount panic' : 'firmware ran under KVM (serial banner seen)');
      }
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => finish(false, `cannot run ${bin}: ${e.message}`));
    child.on('exit', (code, sig) => finish(false, `QEMU exited (${sig ?? code}) before the guest ran: ${err.trim().split('\n').pop() ?? ''}`));
  });
}

export function probeCachePath(cacheDir: string): string {
  return path.join(cacheDir, 'kvm-probe.json');
}

/** The binary's resolved path, size and mtime: changes whenever QEMU is upgraded. */
async function qemuStamp(bin: string): Promise<string> {
  const full = bin.includes('/') ? bin : (process.env.PATH ?? '').split(':').map((d) => path.join(d, bin)).find((p) => fsSync.existsSync(p)) ?? bin;
  try {
    const real = await fs.realpath(full);
    const st = await fs.stat(real);
    return `${real}:${st.size}:${st.mtimeMs}`;
  } catch {
    return `${bin}:missing`;
  }
}

/** The cached probe answer for this host kernel and QEMU, probing (time-limited) when absent. */
export async function probeKvm(opts: {
  cacheDir: string;
  qemuBinary?: string;
  timeoutMs?: number;
  refresh?: boolean;
  /** a Linux kernel to boot for a strong probe (the guest kernel); without it the probe is firmware-only */
  kernel?: string;
}): Promise<KvmProbeResult & { cached: boolean }> {
  const file = probeCachePath(opts.cacheDir);
  // Every VM start passes here: recognise the QEMU binary by stat, not by spawning `--version`.
  const stamp = await qemuStamp(opts.qemuBinary ?? 'qemu-system-x86_64');
  if (!opts.refresh) {
    try {
      const prev = JSON.parse(await fs.readFile(file, 'utf8')) as KvmProbeResult & { qemuStamp?: string };
      // A cached "no" always stands; a cached firmware-only "yes" is re-checked with a kernel.
      const strongEnough = !prev.usable || prev.kind === 'kernel' || !opts.kernel;
      if (prev.hostKernel === os.release() && prev.qemuStamp === stamp && strongEnough) return { ...prev, cached: true };
    } catch {
      /* no cache yet */
    }
  }
  const res = { ...(await runKvmProbe(opts)), qemuStamp: stamp };
  await fs.mkdir(opts.cacheDir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(res, null, 2) + '\n');
  await fs.rename(tmp, file);
  return { ...res, cached: false };
}

/** Picks the accelerator: tcg as asked, kvm only when the probe proved it, auto = kvm if usable. */
export async function resolveAccel(
  choice: AccelChoice,
  opts: { cacheDir: string; qemuBinary?: string; timeoutMs?: number; kernel?: string },
): Promise<{ accel: Accel; probe?: KvmProbeResult & { cached: boolean } }> {
  if (choice === 'tcg') return { accel: 'tcg' };
  const probe = await probeKvm(opts);
  if (probe.usable) return { accel: 'kvm', probe };
  if (choice === 'kvm') throw new KvmUnavailableError(probe);
  return { accel: 'tcg', probe };
}
