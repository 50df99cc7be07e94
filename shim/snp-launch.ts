// The shim's part of attestation ([attestation] snp_socket): at launch the pod's VM is registered
// with the node's emulated SEV-SNP firmware (`katats snp serve`) with its MEASUREMENT and HOST_DATA,
// and QEMU gets the socket the daemon made for this VM alone as the guest's virtio-serial port
// katats.snp.0; at teardown (or `shim delete` after the shim died) the VM is released.
//
// MEASUREMENT, emulated: on SEV-SNP the secure processor measures the pages it launches (OVMF, and
// with kernel-hashes the kernel, initrd and command line). Here it is SHA-384 (48 bytes, the field's
// size) of the same text as the guest image's launch measurement (guest/manifest.ts), over the files
// this VM boots and its exact command line:
//   "katats-launch-measurement-v1\nkernel=<sha256>\ninitrd=<sha256>\nrootfs=<sha256>\ncmdline=<sha256 of the command line>\n"
// Each file's sha256 is computed once per file version (path, inode, size, mtime) and kept under the
// shim's state dir, so pods do not rehash a rootfs image at every launch.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { registerVm, releaseVm } from '../attestation/snp-control.js';
import type { GuestFiles } from './vm.js';

const DIGEST_CACHE = 'file-digests.json';
/** The cache file is a few entries per image; more is not ours. */
const MAX_CACHE_BYTES = 1024 * 1024;

/** The name the guest finds its report port under (/dev/virtio-ports/katats.snp.0). */
export const SNP_PORT_NAME = 'katats.snp.0';

export function measurementText(d: { kernel: string; initrd: string; rootfs: string }, cmdline: string): string {
  const cmd = createHash('sha256').update(Buffer.from(cmdline, 'utf8')).digest('hex');
  return `katats-launch-measurement-v1\nkernel=${d.kernel}\ninitrd=${d.initrd}\nrootfs=${d.rootfs}\ncmdline=${cmd}\n`;
}

/** The emulated launch MEASUREMENT (48 bytes) of a VM booting these file digests with this command line. */
export function snpMeasurement(d: { kernel: string; initrd: string; rootfs: string }, cmdline: string): Buffer {
  return createHash('sha384').update(measurementText(d, cmdline)).digest();
}

function hashFile(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    fs.createReadStream(file)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

/** sha256 of each file, from the cache when the file is the version hashed before. */
export async function fileDigests(files: Pick<GuestFiles, 'kernel' | 'initrd' | 'rootfs'>, cacheDir: string): Promise<{ kernel: string; initrd: string; rootfs: string }> {
  const cacheFile = path.join(cacheDir, DIGEST_CACHE);
  let cache: Record<string, string> = {};
  try {
    if (fs.statSync(cacheFile).size <= MAX_CACHE_BYTES) cache = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as Record<string, string>;
  } catch {
    cache = {};
  }
  let changed = false;
  const one = async (f: string): Promise<string> => {
    const st = fs.statSync(f);
    const key = `${path.resolve(f)}:${st.ino}:${st.size}:${st.mtimeMs}`;
    const known = cache[key];
    if (typeof known === 'string' && /^[0-9a-f]{64}$/.test(known)) return known;
    const d = await hashFile(f);
    cache[key] = d;
    changed = true;
    return d;
  };
  const out = { kernel: await one(files.kernel), initrd: await one(files.initrd), rootfs: await one(files.rootfs) };
  if (changed) {
    // Pods launch concurrently: each writes a whole file and renames it in place.
    fs.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    const tmp = `${cacheFile}.${process.pid}`;
    fs.writeFileSync(tmp, JSON.stringify(cache), { mode: 0o600 });
    fs.renameSync(tmp, cacheFile);
  }
  return out;
}

export interface SnpRegistration {
  /** The daemon's socket for this VM, QEMU's chardev. */
  socket: string;
  measurement: Buffer;
  release(): Promise<void>;
}

/** Registers the VM (named by its sandbox id) with the daemon; the caller wires `socket` and calls release at teardown. */
export async function registerSnpVm(o: {
  controlSocket: string;
  sandboxId: string;
  files: GuestFiles;
  cmdline: string;
  hostData: Buffer;
  cacheDir: string;
  log: Logger;
}): Promise<SnpRegistration> {
  const measurement = snpMeasurement(await fileDigests(o.files, o.cacheDir), o.cmdline);
  const socket = await registerVm(o.controlSocket, o.sandboxId, measurement, o.hostData);
  o.log.info({ measurement: measurement.toString('hex'), host_data: o.hostData.toString('hex'), socket }, 'VM registered with the SNP firmware');
  let released = false;
  return {
    socket,
    measurement,
    release: async () => {
      if (released) return;
      released = true;
      await releaseVm(o.controlSocket, o.sandboxId).catch((err: unknown) => o.log.error({ err }, 'releasing the VM from the SNP firmware failed'));
    },
  };
}

/** `shim delete` after the shim died: the daemon forgets the VM (a VM it does not know is fine). */
export async function releaseSnpVm(controlSocket: string, sandboxId: string): Promise<void> {
  await releaseVm(controlSocket, sandboxId);
}
