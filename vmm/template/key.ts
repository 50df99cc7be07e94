// A template's key: everything a clone must share with its template for the restored guest to be
// the one its argv describes. It is the QEMU argv itself with the per-pod parts (ids, sockets, the
// share path, the launch-data file, the RAM file) replaced by placeholders, plus the guest image's
// digests and the QEMU binary's identity: a device added anywhere (a NIC, a disk, a port) changes
// the key without this file knowing about it.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { Accel, VmConfig } from '../config.js';
import { buildQemuArgs, qemuEscape } from '../qemu-args.js';

/** Bumped when what a template holds changes meaning (e.g. the save procedure). */
export const TEMPLATE_FORMAT = 1;

export interface TemplateKeyInput {
  format: number;
  /** sha256 digests of kernel, initrd and rootfs (the guest image manifest's) */
  image: { kernel: string; initrd: string; rootfs: string };
  /** the QEMU binary: path, size and mtime (an upgraded QEMU may not read an older stream) */
  qemu: string;
  accel: Accel;
  /** the normalised argv */
  argv: string[];
}

export class NotTemplatableError extends Error {
  override readonly name = 'NotTemplatableError';
}

/** Why a VM with this config cannot come from a template; undefined when it can. */
export function notTemplatable(c: VmConfig): string | undefined {
  if (c.virtioFs) return 'virtio-fs: its vhost-user device state cannot be migrated';
  if ((c.disks ?? []).length) return 'boot-time disks: their contents are per pod';
  if (c.launchDataFile && bindsPolicy(c.launchData ?? c.launchDataFile)) {
    // A confidential launch is measured from its own boot; a clone would also have to take the
    // restore's entropy and clock from the host before its policy is set, which the generated
    // policies refuse (ReseedRandomDev, SetGuestDateTime).
    return 'the launch data binds a policy: a confidential launch boots cold, never from a template';
  }
  return undefined;
}

/** Launch data other than absent or zeros (a policy digest). */
function bindsPolicy(launch: Buffer | string): boolean {
  if (typeof launch !== 'string') return launch.some((b) => b !== 0);
  let data: Buffer;
  try {
    data = fs.readFileSync(launch);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  return data.some((b) => b !== 0);
}

function qemuIdentity(bin: string): string {
  const st = fs.statSync(bin);
  return `${bin}:${st.size}:${Math.floor(st.mtimeMs)}`;
}

export function resolveQemuBinary(c: VmConfig): string {
  const bin = c.qemuBinary ?? 'qemu-system-x86_64';
  if (bin.includes('/')) return bin;
  for (const dir of (process.env.PATH ?? '/usr/bin').split(':')) {
    const p = `${dir}/${bin}`;
    if (fs.existsSync(p)) return p;
  }
  throw new NotTemplatableError(`${bin} not found on PATH`);
}

export function templateKeyInput(c: VmConfig, accel: Accel, image: TemplateKeyInput['image'], firmware?: string | null): TemplateKeyInput {
  const why = notTemplatable(c);
  if (why) throw new NotTemplatableError(why);
  for (const [k, v] of Object.entries(image)) if (!/^[0-9a-f]{64}$/.test(v)) throw new NotTemplatableError(`guest image ${k} has no sha256 digest (use a guest image manifest)`);
  const { argv } = buildQemuArgs({ ...c, incoming: false, memoryFile: { path: '/MEM', shared: true } }, accel, firmware === undefined ? {} : { firmware });
  const perPod: [string, string][] = [
    [c.runDir, '<run>'],
    [c.agentSocket, '<agent>'],
    [c.sharedDir?.path ?? '', '<shared>'],
    [c.launchDataFile ?? '', '<launch-data>'],
    [c.kernel, '<kernel>'],
    [c.initrd, '<initrd>'],
    [c.rootfs, '<rootfs>'],
    ['/MEM', '<memory>'],
  ];
  const subs = perPod
    .filter(([from]) => from)
    .flatMap(([from, to]) => [[qemuEscape(from), to] as const, [from, to] as const])
    .sort((a, b) => b[0].length - a[0].length);
  const normalised = argv.map((a, i) => {
    if (argv[i - 1] === '-name') return '<name>';
    let out = a;
    for (const [from, to] of subs) out = out.split(from).join(to);
    return out;
  });
  return { format: TEMPLATE_FORMAT, image, qemu: qemuIdentity(resolveQemuBinary(c)), accel, argv: normalised };
}

export function templateKey(input: TemplateKeyInput): string {
  return createHash('sha256').update(JSON.stringify(input)).digest('hex');
}

/** The first differing part of two key inputs, for the log line that says why a template was not used. */
export function keyDifference(want: TemplateKeyInput, have: TemplateKeyInput): string {
  if (want.format !== have.format) return `template format ${have.format}, need ${want.format}`;
  for (const k of ['kernel', 'initrd', 'rootfs'] as const) if (want.image[k] !== have.image[k]) return `guest ${k} differs`;
  if (want.qemu !== have.qemu) return `QEMU binary differs (${have.qemu} vs ${want.qemu})`;
  if (want.accel !== have.accel) return `accelerator ${have.accel}, need ${want.accel}`;
  const n = Math.max(want.argv.length, have.argv.length);
  for (let i = 0; i < n; i++) {
    if (want.argv[i] !== have.argv[i]) return `VM shape differs at argv[${i}]: template "${have.argv[i] ?? ''}", pod "${want.argv[i] ?? ''}"`;
  }
  return 'identical';
}
