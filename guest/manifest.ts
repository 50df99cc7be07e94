// The image manifest and the launch measurement.
//
// measurement = sha256 of the ASCII text
//   "katats-launch-measurement-v1\n" +
//   "kernel=<sha256 hex of the kernel file>\n" +
//   "initrd=<sha256 hex of the initrd file>\n" +
//   "rootfs=<sha256 hex of the rootfs image>\n" +
//   "cmdline=<sha256 hex of the UTF-8 kernel command line>\n"
// so a verifier needs only the four digests (or the files) and the exact command line.
import { createHash } from 'node:crypto';

export interface ManifestFile {
  file: string;
  sha256: string;
  size: number;
}

export interface GuestManifest {
  schema: 1;
  builder: string;
  sourceDateEpoch: number;
  /** the file QEMU boots; bzImageSha256 is the package's own vmlinuz */
  kernel: ManifestFile & { release: string; package: string; format: string; bzImageSha256: string };
  initrd: ManifestFile & { compression: string; modules: string[] };
  rootfs: ManifestFile & { type: string; uuid: string };
  /** kernel command line the image is meant to boot with (measured) */
  cmdline: string;
  agent: { path: string; sha256: string };
  /** node startup snapshot inside the rootfs (made once per input and cached; see node-snapshot.ts) */
  nodeSnapshot: { path: string; sha256: string; key: string; reproducible: false } | null;
  init: { sha256: string };
  packages: { name: string; version: string; sha256: string }[];
  measurement: string;
}

export function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function launchMeasurement(d: { kernel: string; initrd: string; rootfs: string; cmdline: string }): string {
  for (const [k, v] of Object.entries({ kernel: d.kernel, initrd: d.initrd, rootfs: d.rootfs })) {
    if (!/^[0-9a-f]{64}$/.test(v)) throw new Error(`launchMeasurement: ${k} is not a sha256 hex digest`);
  }
  const text =
    'katats-launch-measurement-v1\n' +
    `kernel=${d.kernel}\n` +
    `initrd=${d.initrd}\n` +
    `rootfs=${d.rootfs}\n` +
    `cmdline=${sha256Hex(Buffer.from(d.cmdline, 'utf8'))}\n`;
  return sha256Hex(text);
}

/** The measurement of an image booted with a different command line (e.g. extra kernel params). */
export function measurementFor(m: GuestManifest, cmdline: string): string {
  return launchMeasurement({ kernel: m.kernel.sha256, initrd: m.initrd.sha256, rootfs: m.rootfs.sha256, cmdline });
}
