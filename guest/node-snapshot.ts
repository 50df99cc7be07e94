// The guest node's startup snapshot (see node-launcher.js), made by running the guest's own node
// (chrooted into the staged rootfs) with --build-snapshot.
//
// V8/node 18 snapshots are not bit-reproducible (they embed heap addresses and timestamps), so
// the blob is made once per input (the rootfs packages and the launcher) and kept in the cache;
// later builds reuse it and stay bit-identical. A build on a machine without that cached blob
// gets a different blob, hence a different rootfs digest: the manifest says so
// (nodeSnapshot.reproducible = false), and `nodeSnapshot: false` builds without it.
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './exec.js';
import { sha256Hex } from './manifest.js';

export const SNAPSHOT_GUEST_PATH = '/usr/lib/katats/node-snapshot.blob';
export const LAUNCHER_GUEST_PATH = '/usr/lib/katats/node-launcher.js';
export const CPU_SIG_GUEST_PATH = '/usr/lib/katats/node-snapshot.cpu';

/**
 * V8 accepts a snapshot only on a CPU whose V8-visible features equal the build machine's (node
 * compares CachedDataVersionTag, which hashes them): on a plain qemu64 guest the agent would die.
 * The signature names those features as /proc/cpuinfo shows them (+ the Intel family-6 model,
 * which V8 consults for its Atom and JCC-erratum switches); the init computes the same line in the
 * guest (init.sh cpu_sig) and starts node without the snapshot when they differ.
 */
export const V8_CPU_FLAGS = ['pni', 'ssse3', 'sse4_1', 'sse4_2', 'popcnt', 'avx', 'avx2', 'fma', 'bmi1', 'bmi2', 'abm', 'lahf_lm'];

export function cpuSignature(cpuinfo: string): string {
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(cpuinfo)?.[1]?.trim() ?? '';
  const flags = new Set(field('flags').split(/\s+/));
  const have = V8_CPU_FLAGS.filter((f) => flags.has(f));
  const intel6 = field('vendor_id') === 'GenuineIntel' && field('cpu family') === '6';
  return [...have, intel6 ? `intel6-model=${field('model')}` : 'other'].join(' ');
}

export interface SnapshotResult {
  key: string;
  sha256: string;
  cached: boolean;
}

export async function installNodeSnapshot(opts: {
  staging: string;
  launcherSource: string;
  /** digests of everything the snapshot depends on (the rootfs packages) */
  inputs: string[];
  cacheDir: string;
}): Promise<SnapshotResult> {
  const launcher = await readFile(opts.launcherSource);
  const key = sha256Hex(JSON.stringify({ launcher: sha256Hex(launcher), inputs: opts.inputs })).slice(0, 32);
  const cached = path.join(opts.cacheDir, `${key}.blob`);
  const blobInRoot = path.join(opts.staging, SNAPSHOT_GUEST_PATH);
  await mkdir(path.dirname(blobInRoot), { recursive: true });
  await copyFile(opts.launcherSource, path.join(opts.staging, LAUNCHER_GUEST_PATH));
  let hit = await stat(cached).then(
    (s) => s.size > 0,
    () => false,
  );
  const cachedSig = `${cached.slice(0, -'.blob'.length)}.cpu`;
  if (hit) hit = await stat(cachedSig).then(() => true, () => false);
  if (!hit) {
    const args = ['/usr/bin/node', '--snapshot-blob', SNAPSHOT_GUEST_PATH, '--build-snapshot', LAUNCHER_GUEST_PATH];
    const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root', LANG: 'C' };
    if (process.getuid?.() === 0) await run('chroot', [opts.staging, ...args], { env });
    else await run('unshare', ['--map-root-user', `--root=${opts.staging}`, ...args], { env });
    await mkdir(opts.cacheDir, { recursive: true });
    const tmp = `${cached}.${process.pid}.tmp`;
    await copyFile(blobInRoot, tmp);
    await writeFile(`${cachedSig}.tmp`, cpuSignature(await readFile('/proc/cpuinfo', 'utf8')) + '\n');
    await rename(`${cachedSig}.tmp`, cachedSig);
    await rename(tmp, cached);
  } else {
    await copyFile(cached, blobInRoot);
  }
  await copyFile(cachedSig, path.join(opts.staging, CPU_SIG_GUEST_PATH));
  const sha256 = sha256Hex(await readFile(blobInRoot));
  await rm(`${blobInRoot}.tmp`, { force: true });
  return { key, sha256, cached: hit };
}
