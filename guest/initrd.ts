// The initrd: busybox, the kernel modules the init loads (in the computed order), the init script
// and /dev/console. Small on purpose: big files live on the rootfs disk.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync, constants as zc } from 'node:zlib';
import { type CpioEntry, writeCpio } from './cpio.js';
import { run } from './exec.js';

export type InitrdCompression = 'none' | 'gzip' | 'lz4' | 'zstd';

export interface InitrdInput {
  /** unpacked kernel package (has lib/modules/VERSION) */
  kernelRoot: string;
  kernelVersion: string;
  /** module file paths relative to lib/modules/VERSION, in load order */
  moduleOrder: string[];
  /** static busybox binary */
  busybox: string;
  /** init script text (installed as /init) */
  init: string;
  compression: InitrdCompression;
  /**
   * Drop the modules' appended signatures. The kernel (MODULE_SIG without sig_enforce) then loads
   * them without an RSA verification each, which is slow under TCG; the initrd as a whole is
   * covered by the launch measurement instead.
   */
  stripSignatures: boolean;
  mtime: number;
  out: string;
}

function parents(p: string): string[] {
  const out: string[] = [];
  let d = path.posix.dirname(p);
  while (d !== '.' && d !== '/') {
    out.push(d);
    d = path.posix.dirname(d);
  }
  return out;
}

const SIG_MAGIC = Buffer.from('~Module signature appended~\n', 'ascii');

/** A module without its appended PKCS#7 signature (unchanged when it has none). */
export function stripModuleSignature(ko: Buffer): Buffer {
  if (ko.length < SIG_MAGIC.length + 12 || !ko.subarray(ko.length - SIG_MAGIC.length).equals(SIG_MAGIC)) return ko;
  const info = ko.length - SIG_MAGIC.length - 12; // struct module_signature
  const signerLen = ko[info + 3]!;
  const keyIdLen = ko[info + 4]!;
  const sigLen = ko.readUInt32BE(info + 8);
  const end = info - sigLen - signerLen - keyIdLen;
  if (end <= 0) throw new Error('malformed module signature');
  return ko.subarray(0, end);
}

async function compress(data: Buffer, how: InitrdCompression): Promise<Buffer> {
  switch (how) {
    case 'none':
      return data;
    case 'gzip':
      // zlib writes a fixed header (mtime 0, no name): the same bytes for the same input.
      return gzipSync(data, { level: 9, memLevel: 9, strategy: zc.Z_DEFAULT_STRATEGY });
    case 'lz4':
      // The kernel's initrd loader wants the legacy lz4 frame format (-l).
      return (await run('lz4', ['-l', '-9', '-c', '-q'], { input: data })).stdout;
    case 'zstd':
      return (await run('zstd', ['-19', '-c', '-q', '--no-check'], { input: data })).stdout;
  }
}

export async function buildInitrd(inp: InitrdInput): Promise<{ size: number; uncompressed: number; modules: number }> {
  const entries: CpioEntry[] = [];
  const modDir = `lib/modules/${inp.kernelVersion}`;
  const dirs = new Set<string>(['dev', 'proc', 'sys', 'run', 'newroot', 'bin', 'etc/katats', modDir]);
  entries.push({ path: 'init', type: 'file', mode: 0o755, data: Buffer.from(inp.init, 'utf8') });
  entries.push({ path: 'bin/busybox', type: 'file', mode: 0o755, data: await readFile(inp.busybox) });
  entries.push({ path: 'bin/sh', type: 'symlink', target: 'busybox' });
  entries.push({ path: 'dev/console', type: 'char', mode: 0o600, major: 5, minor: 1 });
  entries.push({ path: 'dev/null', type: 'char', mode: 0o666, major: 1, minor: 3 });
  const moduleDir = path.join(inp.kernelRoot, 'lib/modules', inp.kernelVersion);
  const list: string[] = [];
  for (const rel of inp.moduleOrder) {
    const dest = `${modDir}/${path.posix.basename(rel)}`;
    const ko = await readFile(path.join(moduleDir, rel));
    entries.push({ path: dest, type: 'file', mode: 0o644, data: inp.stripSignatures ? stripModuleSignature(ko) : ko });
    list.push(path.posix.basename(rel));
  }
  entries.push({ path: 'etc/katats/modules', type: 'file', mode: 0o644, data: Buffer.from(list.join('\n') + '\n') });
  // For busybox modprobe -a (one process loads them all, in the listed order): the list is
  // already in dependency order, so modules.dep names no dependencies.
  entries.push({ path: `${modDir}/modules.dep`, type: 'file', mode: 0o644, data: Buffer.from(list.map((m) => `${m}:\n`).join('')) });
  for (const e of entries) for (const d of parents(e.path)) dirs.add(d);
  for (const d of [...dirs]) for (const p of parents(d)) dirs.add(p);
  for (const d of dirs) entries.push({ path: d, type: 'dir', mode: 0o755 });
  const cpio = writeCpio(entries, inp.mtime);
  const data = await compress(cpio, inp.compression);
  await writeFile(inp.out, data);
  return { size: data.length, uncompressed: cpio.length, modules: list.length };
}
