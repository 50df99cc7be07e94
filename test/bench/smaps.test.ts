// bench/smaps.ts on a real process: a python child maps what an idle clone's QEMU holds, in small:
// an anonymous executable buffer it writes (TCG's code buffer), a file of the VM's RAM size mapped
// privately with part of it written (a clone's copy-on-write of the template's RAM) and part only
// read, and a heap. The RAM file is on tmpfs, as a template's is: pages read from it are dirty
// shmem pages that this one process maps, which Private_Dirty would count as its own.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pssBreakdown } from '../../bench/smaps.js';

const MiB = 1 << 20;
const RAM = 24 * MiB;
const CHILD = `
import mmap, sys
code = mmap.mmap(-1, 32 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(b'\\x01' * (8 << 20))
f = open(sys.argv[1], 'r+b')
ram = mmap.mmap(f.fileno(), ${RAM}, flags=mmap.MAP_PRIVATE)
ram[0:(3 << 20)] = b'\\x02' * (3 << 20)
seen = sum(ram[(8 << 20):(12 << 20)])
heap = bytearray(b'\\x03' * (5 << 20))
print('ready', flush=True)
sys.stdin.read()
`;

let dir: string;
let child: ChildProcess;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'kt-smaps-'));
  const ram = path.join(dir, 'memory');
  fs.writeFileSync(ram, Buffer.alloc(RAM, 7));
  child = spawn('python3', ['-c', CHILD, ram], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`python3 exited ${code}`)));
  });
});

afterAll(() => {
  child?.kill('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('pssBreakdown', () => {
  it('finds the guest RAM by its size, the code buffer by its executable anonymous mapping, and the rest', () => {
    const b = pssBreakdown(child.pid!, RAM)!;
    const mib = (kib: number) => kib / 1024;
    // Written pages only: 3 of the RAM file's 24 MiB (not the 4 only read), 8 of the buffer's 32.
    expect(mib(b.guestRam.writtenKiB)).toBeCloseTo(3, 0);
    expect(mib(b.guestRam.pssKiB)).toBeGreaterThanOrEqual(6.5);
    expect(mib(b.tcgCode.writtenKiB)).toBeGreaterThanOrEqual(8);
    expect(mib(b.tcgCode.writtenKiB)).toBeLessThan(10);
    expect(mib(b.anon.writtenKiB)).toBeGreaterThanOrEqual(5);
    expect(b.file.pssKiB).toBeGreaterThan(0);
    // Without a RAM size the file mapping is just a file.
    const noRam = pssBreakdown(child.pid!)!;
    expect(noRam.guestRam.pssKiB).toBe(0);
    expect(noRam.file.writtenKiB).toBeGreaterThanOrEqual(b.guestRam.writtenKiB);
  });

  it('is undefined for a process that is gone', () => {
    expect(pssBreakdown(2 ** 22 + 12345)).toBeUndefined();
  });
});
