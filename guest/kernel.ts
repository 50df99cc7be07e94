// The kernel the VM boots: the package's bzImage, or the uncompressed ELF inside it.
//
// Debian's bzImage is xz-compressed; under TCG its self-decompression takes seconds before the
// kernel even starts (measured ~6 s on q35). The ELF vmlinux inside it has a PVH entry note
// (CONFIG_PVH=y), which QEMU boots directly with -kernel, so the builder extracts it once on the
// host: a deterministic transform of the package's file (payload located via the boot header).
import { readFile, writeFile } from 'node:fs/promises';
import { run } from './exec.js';

export type KernelFormat = 'vmlinux' | 'bzimage';

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/** The compressed payload of a bzImage, located through its setup header. */
export function bzImagePayload(bz: Buffer): { data: Buffer; format: 'xz' | 'other' } {
  if (bz.readUInt32LE(0x202) !== 0x53726448) throw new Error('not a bzImage (no HdrS)');
  const setupSects = bz[0x1f1] || 4;
  const payloadOffset = bz.readUInt32LE(0x248);
  const payloadLength = bz.readUInt32LE(0x24c);
  const start = (setupSects + 1) * 512 + payloadOffset;
  const data = bz.subarray(start, start + payloadLength);
  return { data, format: data.subarray(0, 6).equals(XZ_MAGIC) ? 'xz' : 'other' };
}

export async function extractVmlinux(bzImagePath: string, out: string): Promise<void> {
  const { data, format } = bzImagePayload(await readFile(bzImagePath));
  if (format !== 'xz') throw new Error('kernel payload is not xz; cannot extract vmlinux');
  const elf = (await run('xz', ['--decompress', '--single-stream', '--stdout'], { input: data })).stdout;
  if (!elf.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) throw new Error('extracted kernel is not an ELF');
  // PVH entry: an ELF note named "Xen" of type XEN_ELFNOTE_PHYS32_ENTRY (18).
  if (!hasPvhNote(elf)) throw new Error('vmlinux has no PVH entry note (CONFIG_PVH)');
  await writeFile(out, elf);
}

function hasPvhNote(elf: Buffer): boolean {
  // ELF64 program headers: PT_NOTE segments.
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (elf.readUInt32LE(ph) !== 4) continue; // PT_NOTE
    let off = Number(elf.readBigUInt64LE(ph + 8));
    const end = off + Number(elf.readBigUInt64LE(ph + 32));
    while (off + 12 <= end) {
      const namesz = elf.readUInt32LE(off);
      const descsz = elf.readUInt32LE(off + 4);
      const type = elf.readUInt32LE(off + 8);
      const name = elf.subarray(off + 12, off + 12 + namesz).toString('latin1').replace(/\0+$/, '');
      if (name === 'Xen' && type === 18) return true;
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}
