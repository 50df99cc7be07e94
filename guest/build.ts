// buildGuestImage: kernel + initrd + rootfs from Debian packages, reproducible and measured,
// cached by the digest of every input.
import { copyFile, link, mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { planModules, depmod, loadModuleIndex } from './modules.js';
import { buildInitrd, type InitrdCompression } from './initrd.js';
import { type GuestManifest, launchMeasurement, sha256Hex } from './manifest.js';
import { aptUpdate, fetchPackages, newestKernelPackage, resolvePackages, sha256File, unpackDeb, type ResolvedPackage } from './packages.js';
import { type ExtraFile, makeRootfsImage, stageRootfs, type RootfsType } from './rootfs.js';
import { SNAPSHOT_GUEST_PATH } from './node-snapshot.js';
import { withLock } from './lock.js';
import { extractVmlinux, type KernelFormat } from './kernel.js';
import { allowAllPolicy } from '../policy/allow-all.js';

export type { GuestManifest } from './manifest.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_CACHE_DIR = path.resolve(HERE, '..', '.cache', 'guest');

/** Packages whose files make up the rootfs (their Depends closure comes along). */
export const ROOTFS_PACKAGES = ['busybox-static', 'crun', 'nodejs'];

/**
 * Modules the init loads, in the order computed from modules.dep. '?' marks modules a kernel may
 * lack. The rootfs filesystem's module is added according to the rootfs type.
 */
export const GUEST_MODULES = [
  'virtio_pci',
  'virtio_blk',
  'virtio_console',
  // The pod's NICs (shim/network/): virtio-net on the TAPs wired to the pod's veths.
  'virtio_net',
  '9pnet_virtio',
  '9p',
  'virtiofs',
  'overlay',
  // Verified image layers: dm-verity (dm-mod, dm-bufio come through modules.dep) under EROFS,
  // loaded whatever the rootfs's own filesystem is.
  'dm_verity',
  'erofs',
  'vsock?',
  'vmw_vsock_virtio_transport?',
  'qemu_fw_cfg',
  'pvpanic_pci?',
];

/**
 * The measured base command line. Boot-speed options follow Kata's defaults; `quiet` keeps the
 * slow emulated serial port out of the boot path. The init reads agent.* and katats.* keys.
 */
export const BASE_CMDLINE = [
  'console=ttyS0',
  'quiet',
  'panic=1',
  'reboot=k',
  'tsc=reliable',
  'no_timer_check',
  'noreplace-smp',
  'rcupdate.rcu_expedited=1',
  'cryptomgr.notests',
  'i8042.direct=1',
  'i8042.dumbkbd=1',
  'i8042.nopnp=1',
  'i8042.noaux=1',
  'i8042.nokbd=1',
  'net.ifnames=0',
  'random.trust_cpu=on',
  'audit=0',
  'mitigations=off',
  // Debian's kernel zeroes every page and slab allocation (INIT_ON_ALLOC_DEFAULT_ON), page cache
  // included: under TCG that memset costs ~1.1 s of boot (node maps ~60 MB). Kata's guest kernel
  // does not do it either; the setting is part of the measured command line.
  'init_on_alloc=0',
  // Built-in initcalls a sandbox guest never needs, each 0.1-0.3 s under TCG (initcall_debug).
  'initcall_blacklist=crypto_kdf108_init,init_kprobe_trace,cubictcp_register,load_system_certificate_list',
].join(' ');

export interface BuildOptions {
  /** the agent's JavaScript bundle (CommonJS, for the guest's node) */
  agentBundle: string;
  cacheDir?: string;
  onProgress?: (msg: string) => void;
  /** rebuild even when the cache has an image for these inputs */
  force?: boolean;
  rootfsType?: RootfsType;
  initrdCompression?: InitrdCompression;
  /** where the bundle lands in the guest */
  agentPath?: string;
  /** extra measured command-line words */
  extraCmdline?: string[];
  /** fixed timestamp for every file (default: $SOURCE_DATE_EPOCH or 2024-01-01) */
  sourceDateEpoch?: number;
  /** 'vmlinux' (default): the uncompressed PVH ELF; 'bzimage': the package's file as is */
  kernelFormat?: KernelFormat;
  /** strip module signatures in the initrd (default true) */
  stripModuleSignatures?: boolean;
  /** include a node startup snapshot (default true) */
  nodeSnapshot?: boolean;
  /** how many built images the cache keeps (default 8, least recently used go first) */
  keepImages?: number;
  /** more files for the rootfs (e.g. a static helper the agent runs), by absolute guest path */
  extraFiles?: ExtraFile[];
  /** the agent policy of a pod that brings none (default: allow-all, as Kata's image) */
  defaultPolicy?: string;
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  rootfs: string;
  manifest: GuestManifest;
  manifestPath: string;
  /** true when the image came from the cache */
  cached: boolean;
}

/** Digest of the builder's own sources: a change to any of them is a new builder version. */
async function builderVersion(): Promise<string> {
  const files = (await readdir(HERE)).filter((f) => /\.(ts|sh|js)$/.test(f)).sort();
  const h: string[] = [];
  for (const f of files) h.push(`${f}:${sha256Hex(await readFile(path.join(HERE, f)))}`);
  return sha256Hex(h.join('\n')).slice(0, 16);
}

function imageFromDir(dir: string, manifest: GuestManifest, cached: boolean): GuestImage {
  return {
    dir,
    kernel: path.join(dir, manifest.kernel.file),
    initrd: path.join(dir, manifest.initrd.file),
    rootfs: path.join(dir, manifest.rootfs.file),
    manifest,
    manifestPath: path.join(dir, 'manifest.json'),
    cached,
  };
}

async function readManifest(dir: string): Promise<GuestManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as GuestManifest;
    for (const f of [m.kernel, m.initrd, m.rootfs]) {
      if ((await stat(path.join(dir, f.file))).size !== f.size) return undefined;
    }
    return m;
  } catch {
    return undefined;
  }
}

/** Keeps the `keep` most recently used entries of a cache dir (images are ~180 MB); never `current`. */
async function pruneImages(imagesDir: string, current: string, keep: number, step: (m: string) => void): Promise<void> {
  const dirs: { dir: string; mtime: number }[] = [];
  for (const name of await readdir(imagesDir)) {
    const dir = path.join(imagesDir, name);
    if (dir === current || !/^[0-9a-f]{32}$/.test(name)) continue;
    const st = await stat(dir).catch(() => undefined);
    if (st?.isDirectory()) dirs.push({ dir, mtime: st.mtimeMs });
  }
  dirs.sort((a, b) => b.mtime - a.mtime);
  for (const d of dirs.slice(Math.max(0, keep - 1))) {
    await rm(d.dir, { recursive: true, force: true });
    step(`pruned ${path.basename(imagesDir)}/${path.basename(d.dir)} from the cache`);
  }
}

function sameDigests(a: GuestManifest, b: GuestManifest): boolean {
  return a.kernel.sha256 === b.kernel.sha256 && a.initrd.sha256 === b.initrd.sha256 && a.rootfs.sha256 === b.rootfs.sha256 && a.measurement === b.measurement;
}

interface BootArtifacts {
  kernel: string;
  initrd: string;
  release: string;
  modules: string[];
  bzImageSha: string;
}

/**
 * Kernel + initrd, which do not depend on the agent: cached under cacheDir/boot/<key> so an agent
 * change rebuilds only the rootfs. (Unpacking the 400 MB module tree and depmod take ~10 s.)
 */
async function buildBoot(o: {
  cacheDir: string;
  work: string;
  force: boolean;
  kernelDeb: string;
  busyboxDeb: string;
  key: string;
  modules: string[];
  init: string;
  compression: InitrdCompression;
  stripSignatures: boolean;
  kernelFormat: KernelFormat;
  epoch: number;
  step: (m: string) => void;
}): Promise<BootArtifacts> {
  const dir = path.join(o.cacheDir, 'boot', o.key);
  const kernelFile = o.kernelFormat === 'vmlinux' ? 'vmlinux' : 'vmlinuz';
  const metaPath = path.join(dir, 'boot.json');
  if (!o.force) {
    try {
      const meta = JSON.parse(await readFile(metaPath, 'utf8')) as Omit<BootArtifacts, 'kernel' | 'initrd'>;
      await stat(path.join(dir, kernelFile));
      await stat(path.join(dir, 'initrd.img'));
      const now = new Date();
      await utimes(dir, now, now).catch(() => {});
      o.step(`kernel and initrd from the cache (boot ${o.key})`);
      return { ...meta, kernel: path.join(dir, kernelFile), initrd: path.join(dir, 'initrd.img') };
    } catch {
      /* build them */
    }
  }
  const bootOut = path.join(o.work, 'boot');
  await mkdir(bootOut, { recursive: true });
  o.step('unpacking the kernel and running depmod');
  const kroot = path.join(o.work, 'kernel');
  await unpackDeb(o.kernelDeb, kroot);
  const releases = await readdir(path.join(kroot, 'lib/modules'));
  if (releases.length !== 1) throw new Error(`kernel package has ${releases.length} module trees`);
  const release = releases[0]!;
  await depmod(kroot, release);
  const idx = await loadModuleIndex(kroot, release);
  const plan = planModules(idx, o.modules);
  o.step(`modules (${plan.order.length}): ${plan.order.map((p) => path.basename(p, '.ko')).join(' ')}`);
  if (plan.absent.length) o.step(`modules this kernel lacks (optional): ${plan.absent.join(' ')}`);

  o.step(`building the initrd (${o.compression})`);
  const bbRoot = path.join(o.work, 'busybox');
  await unpackDeb(o.busyboxDeb, bbRoot);
  const ird = await buildInitrd({
    kernelRoot: kroot,
    kernelVersion: release,
    moduleOrder: plan.order,
    busybox: path.join(bbRoot, 'bin/busybox'),
    init: o.init,
    compression: o.compression,
    stripSignatures: o.stripSignatures,
    mtime: o.epoch,
    out: path.join(bootOut, 'initrd.img'),
  });
  o.step(`initrd ${(ird.size / 1e6).toFixed(2)} MB (${(ird.uncompressed / 1e6).toFixed(2)} MB cpio, ${ird.modules} modules)`);

  const bz = path.join(kroot, 'boot', `vmlinuz-${release}`);
  if (o.kernelFormat === 'vmlinux') {
    o.step('extracting the PVH vmlinux from the bzImage');
    await extractVmlinux(bz, path.join(bootOut, kernelFile));
  } else {
    await copyFile(bz, path.join(bootOut, kernelFile));
  }
  const meta = { release, modules: plan.order.map((p) => path.basename(p)), bzImageSha: await sha256File(bz) };
  await writeFile(path.join(bootOut, 'boot.json'), JSON.stringify(meta, null, 2) + '\n');
  await rm(kroot, { recursive: true, force: true });
  await mkdir(path.dirname(dir), { recursive: true });
  const old = `${dir}.old-${process.pid}`;
  await rename(dir, old).catch(() => {});
  await rename(bootOut, dir);
  await rm(old, { recursive: true, force: true });
  await pruneImages(path.dirname(dir), dir, 3, o.step);
  return { ...meta, kernel: path.join(dir, kernelFile), initrd: path.join(dir, 'initrd.img') };
}

/** A hard link where the filesystem allows (images share the cached kernel), else a copy. */
async function linkOrCopy(src: string, dest: string): Promise<void> {
  await rm(dest, { force: true });
  await link(src, dest).catch(() => copyFile(src, dest));
}

export async function buildGuestImage(opts: BuildOptions): Promise<GuestImage> {
  const cacheDir = path.resolve(opts.cacheDir ?? DEFAULT_CACHE_DIR);
  await mkdir(cacheDir, { recursive: true });
  return withLock(path.join(cacheDir, 'build.lock'), () => buildLocked(opts, cacheDir), (owner) =>
    opts.onProgress?.(`waiting for another image build (pid ${owner}) to finish`),
  );
}

async function buildLocked(opts: BuildOptions, cacheDir: string): Promise<GuestImage> {
  const progress = opts.onProgress ?? (() => {});
  const rootfsType = opts.rootfsType ?? 'erofs';
  const compression = opts.initrdCompression ?? 'gzip';
  const agentPath = opts.agentPath ?? '/agent/agent.js';
  const kernelFormat = opts.kernelFormat ?? 'vmlinux';
  const stripSignatures = opts.stripModuleSignatures ?? true;
  const nodeSnapshot = opts.nodeSnapshot ?? true;
  const epoch = opts.sourceDateEpoch ?? (Number(process.env.SOURCE_DATE_EPOCH) || 1704067200);
  const cmdline = [BASE_CMDLINE, ...(opts.extraCmdline ?? [])].join(' ');
  const t0 = Date.now();
  const step = (msg: string) => progress(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

  const agentBytes = await readFile(opts.agentBundle);
  const extraFiles = opts.extraFiles ?? [];
  const defaultPolicy = opts.defaultPolicy ?? allowAllPolicy();
  const extraDigests: [string, string, number][] = [];
  for (const f of extraFiles) extraDigests.push([f.guestPath, sha256Hex(await readFile(f.hostPath)), f.mode ?? 0o755]);
  const initTemplate = await readFile(path.join(HERE, 'init.sh'), 'utf8');
  const init = initTemplate.replaceAll('@ROOTFS_TYPE@', rootfsType).replaceAll('@AGENT_PATH@', agentPath);

  step('resolving Debian packages');
  const apt = { cacheDir: path.join(cacheDir, 'apt') };
  const kernelPkgName = await newestKernelPackage(apt).catch(async (e: Error) => {
    if (process.getuid?.() !== 0) throw e;
    step('no kernel package in the apt lists: running apt-get update');
    await aptUpdate();
    return newestKernelPackage(apt);
  });
  const [kernelPkg] = await resolvePackages([kernelPkgName], { noDeps: [kernelPkgName], ...apt });
  const rootPkgs = await resolvePackages(ROOTFS_PACKAGES, apt);
  const allPkgs: ResolvedPackage[] = [kernelPkg!, ...rootPkgs];
  const v = (n: string) => `${n}=${rootPkgs.find((p) => p.name === n)?.version ?? '?'}`;
  step(`kernel ${kernelPkg!.name}=${kernelPkg!.version}; rootfs: ${rootPkgs.length} packages (${ROOTFS_PACKAGES.map(v).join(' ')} ...)`);

  const inputs = {
    builder: await builderVersion(),
    packages: allPkgs.map((p) => [p.name, p.version, p.sha256]),
    init: sha256Hex(init),
    agent: sha256Hex(agentBytes),
    agentPath,
    extraFiles: extraDigests,
    defaultPolicy: sha256Hex(defaultPolicy),
    rootfsType,
    compression,
    kernelFormat,
    stripSignatures,
    nodeSnapshot,
    cmdline,
    epoch,
    modules: GUEST_MODULES,
    zlib: compression === 'gzip' ? process.versions.zlib : '',
  };
  const key = sha256Hex(JSON.stringify(inputs)).slice(0, 32);
  const imageDir = path.join(cacheDir, 'images', key);
  if (!opts.force) {
    const m = await readManifest(imageDir);
    if (m) {
      const now = new Date();
      await utimes(imageDir, now, now).catch(() => {}); // pruning keeps the recently used ones
      step(`cached image ${key} (measurement ${m.measurement})`);
      return imageFromDir(imageDir, m, true);
    }
  }

  const debs = await fetchPackages(allPkgs, path.join(cacheDir, 'debs'), step);
  const work = path.join(cacheDir, 'tmp', `build-${process.pid}-${Date.now()}`);
  const out = `${work}/out`;
  await mkdir(out, { recursive: true });
  try {
    step(`staging the rootfs (${rootPkgs.length} packages + agent bundle)`);
    const staging = path.join(work, 'rootfs');
    const uuid = sha256Hex(`katats-rootfs:${JSON.stringify([inputs.packages, inputs.agent, agentPath, rootfsType, extraDigests])}`).replace(/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/, '$1-$2-$3-$4-$5');
    const rootfsInput = {
      debs: rootPkgs.map((p) => debs.get(p.name)!),
      agentBundle: opts.agentBundle,
      agentPath,
      extraFiles,
      defaultPolicy,
      type: rootfsType,
      uuid,
      mtime: epoch,
      staging,
      out: path.join(out, `rootfs.${rootfsType}`),
      nodeSnapshot: nodeSnapshot
        ? { launcherSource: path.join(HERE, 'node-launcher.js'), cacheDir: path.join(cacheDir, 'snapshots'), inputs: rootPkgs.map((p) => p.sha256) }
        : undefined,
    };
    const { snapshot } = await stageRootfs(rootfsInput);
    if (snapshot) step(`node startup snapshot ${snapshot.key}${snapshot.cached ? ' (cached)' : ' (made)'}`);
    step(`making the ${rootfsType} image`);
    const rfs = await makeRootfsImage(rootfsInput);
    step(`rootfs ${(rfs.size / 1e6).toFixed(1)} MB`);

    const boot = await buildBoot({
      cacheDir,
      work,
      force: opts.force ?? false,
      kernelDeb: debs.get(kernelPkg!.name)!,
      busyboxDeb: debs.get('busybox-static')!,
      key: sha256Hex(
        JSON.stringify([inputs.builder, kernelPkg!.sha256, rootPkgs.find((p) => p.name === 'busybox-static')?.sha256, inputs.init, GUEST_MODULES, rootfsType, compression, stripSignatures, kernelFormat, epoch]),
      ).slice(0, 32),
      modules: [...GUEST_MODULES, rootfsType],
      init,
      compression,
      stripSignatures,
      kernelFormat,
      epoch,
      step,
    });
    const kernelFile = path.basename(boot.kernel);
    await linkOrCopy(boot.kernel, path.join(out, kernelFile));
    await linkOrCopy(boot.initrd, path.join(out, 'initrd.img'));
    const { release, modules: moduleFiles, bzImageSha } = boot;

    step('hashing');
    const file = async (name: string) => ({
      file: name,
      sha256: await sha256File(path.join(out, name)),
      size: (await stat(path.join(out, name))).size,
    });
    const kernel = await file(kernelFile);
    const initrd = await file('initrd.img');
    const rootfs = await file(`rootfs.${rootfsType}`);
    const manifest: GuestManifest = {
      schema: 1,
      builder: inputs.builder,
      sourceDateEpoch: epoch,
      kernel: { ...kernel, release, format: kernelFormat, bzImageSha256: bzImageSha, package: `${kernelPkg!.name}=${kernelPkg!.version}` },
      initrd: { ...initrd, compression, modules: moduleFiles },
      rootfs: { ...rootfs, type: rootfsType, uuid },
      cmdline,
      agent: { path: agentPath, sha256: inputs.agent },
      nodeSnapshot: snapshot ? { path: SNAPSHOT_GUEST_PATH, sha256: snapshot.sha256, key: snapshot.key, reproducible: false } : null,
      init: { sha256: inputs.init },
      packages: allPkgs.map((p) => ({ name: p.name, version: p.version, sha256: p.sha256 })),
      measurement: launchMeasurement({ kernel: kernel.sha256, initrd: initrd.sha256, rootfs: rootfs.sha256, cmdline }),
    };
    await writeFile(path.join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');

    await mkdir(path.dirname(imageDir), { recursive: true });
    // Readers may be booting the cached image right now: an identical rebuild leaves it in place;
    // a different one (should not happen: the build is reproducible) is swapped in by renames.
    const existing = await readManifest(imageDir);
    if (existing && sameDigests(existing, manifest)) {
      step(`image ${key}: rebuilt bit-identical to the cached one; measurement ${manifest.measurement}`);
    } else {
      if (existing) step(`image ${key}: rebuild differs from the cached image; replacing it`);
      const old = `${imageDir}.old-${process.pid}`;
      await rename(imageDir, old).catch(() => {});
      await rename(out, imageDir);
      await rm(old, { recursive: true, force: true });
      step(`image ${key}: measurement ${manifest.measurement}`);
    }
    await pruneImages(path.dirname(imageDir), imageDir, opts.keepImages ?? 8, step);
    return imageFromDir(imageDir, manifest, false);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
