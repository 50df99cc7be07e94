// Guest devices: a virtio-blk disk named by its PCI path ("02/00": slot of each bridge, then
// of the device) found under sysfs, and the device entries of a container's spec rewritten to
// the major:minor the guest gave the disk.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import { invalid, notFound } from './errors.js';
import type { OciSpec } from './spec.js';

export const DEVICE_DRIVERS = ['blk', 'mmioblk', 'scsi'] as const;

export function parsePciPath(p: string): number[] {
  const parts = p.split('/');
  if (parts.length === 0 || parts.some((x) => !/^[0-9a-fA-F]{1,2}$/.test(x))) throw invalid(`PCI path ${JSON.stringify(p)}: want slots like 02/00`);
  const slots = parts.map((x) => parseInt(x, 16));
  if (slots.some((s) => s > 0x1f)) throw invalid(`PCI path ${JSON.stringify(p)}: slot above 1f`);
  return slots;
}

const hex2 = (n: number) => n.toString(16).padStart(2, '0');

/** The sysfs directory of the PCI device at `pciPath` behind root bus 0000:00. */
export function pciDeviceDir(sysfs: string, pciPath: string): string {
  const slots = parsePciPath(pciPath);
  let dir = path.join(sysfs, 'devices', 'pci0000:00');
  let bus = '0000:00';
  for (let i = 0; i < slots.length; i++) {
    dir = path.join(dir, `${bus}:${hex2(slots[i]!)}.0`);
    if (!fs.existsSync(dir)) throw notFound(`PCI device ${pciPath} (no ${dir})`);
    if (i < slots.length - 1) {
      const buses = fs.existsSync(path.join(dir, 'pci_bus')) ? fs.readdirSync(path.join(dir, 'pci_bus')) : [];
      if (buses.length === 0) throw notFound(`PCI bridge at ${pciPath} slot ${i} has no secondary bus`);
      bus = buses[0]!;
    }
  }
  return dir;
}

function findBlockName(dir: string, depth: number): string | undefined {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return undefined;
  }
  const block = entries.find((e) => e.name === 'block' && (e.isDirectory() || e.isSymbolicLink()));
  if (block) {
    const names = fs.readdirSync(path.join(dir, 'block'));
    if (names.length) return names.sort()[0];
  }
  if (depth === 0) return undefined;
  for (const e of entries) {
    if (!e.isDirectory() || e.name === 'subsystem' || e.name === 'driver' || e.name === 'firmware_node') continue;
    const n = findBlockName(path.join(dir, e.name), depth - 1);
    if (n) return n;
  }
  return undefined;
}

/** Asks the kernel to look for hot-plugged PCI devices (upstream rescans before each create). */
export function rescanPci(sysfs: string): void {
  try {
    fs.writeFileSync(path.join(sysfs, 'bus/pci/rescan'), '1');
  } catch {
    /* no PCI bus to rescan */
  }
}

/** /dev/NAME of the virtio-blk disk at a PCI path, waiting for it to appear. */
export async function blockDeviceByPciPath(sysfs: string, pciPath: string, timeoutMs = 10_000, rescan = false): Promise<string> {
  if (rescan) rescanPci(sysfs);
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const name = findBlockName(pciDeviceDir(sysfs, pciPath), 3);
      if (name) return `/dev/${name}`;
      last = notFound(`block device at PCI path ${pciPath}`);
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) throw last;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A device source: "/dev/NAME" as given, anything else a PCI path. */
export async function resolveBlockSource(sysfs: string, source: string, timeoutMs?: number, rescan = false): Promise<string> {
  if (source.startsWith('/dev/')) {
    if (!fs.existsSync(source)) throw notFound(`block device ${source}`);
    return source;
  }
  return blockDeviceByPciPath(sysfs, source, timeoutMs, rescan);
}

export function majorMinor(rdev: number): { major: number; minor: number } {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00);
  return { major, minor };
}

/**
 * Applies CreateContainerRequest.devices to the spec: each guest device node replaces the
 * major:minor of the spec's entry at container_path, and of cgroup rules that named the old one.
 */
export async function applyDevices(devices: grpc.Device[], spec: OciSpec, sysfs: string, rescan = false): Promise<void> {
  for (const d of devices) {
    if (!(DEVICE_DRIVERS as readonly string[]).includes(d.type)) throw invalid(`device ${d.id || d.container_path}: unknown device type ${JSON.stringify(d.type)}`);
    if (!d.container_path) throw invalid(`device ${d.id}: empty container_path`);
    let node = d.vm_path;
    if (!node || !fs.existsSync(node)) {
      if (d.type !== 'blk' || !d.id) throw notFound(`device ${d.id || d.container_path}: guest device ${node || '(none)'}`);
      node = await blockDeviceByPciPath(sysfs, d.id, undefined, rescan);
    }
    const st = fs.statSync(node);
    if (!st.isBlockDevice() && !st.isCharacterDevice()) throw invalid(`device ${node} is not a device node`);
    const { major, minor } = majorMinor(st.rdev);
    const entry = spec.linux?.devices?.find((x) => x.path === d.container_path);
    if (!entry) throw invalid(`device ${d.container_path}: no entry for it in the spec's linux.devices`);
    const old = { major: entry.major, minor: entry.minor };
    entry.major = major;
    entry.minor = minor;
    for (const r of spec.linux?.resources?.devices ?? []) {
      if (r.major === old.major && r.minor === old.minor) {
        r.major = major;
        r.minor = minor;
      }
    }
  }
}
