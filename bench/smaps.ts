// Where a process's PSS is: /proc/<pid>/smaps summed by kind of mapping. For a pod's QEMU the
// guest's RAM (a clone's private copy-on-write of the template's RAM file, or a cold VM's
// anonymous RAM), TCG's translated-code buffer (the one anonymous executable mapping) and the rest
// (heaps, libraries); for the shim, node's heap and other anonymous memory against file-backed
// pages (the node binary, shared by every shim).
import fs from 'node:fs';

export interface MappingSums {
  pssKiB: number;
  writtenKiB: number;
}

export type MappingKind = 'guestRam' | 'tcgCode' | 'anon' | 'file';

export type PssBreakdown = Record<MappingKind, MappingSums>;

const HEADER = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/;

/**
 * Sums of one process's mappings by kind. `guestRamBytes` is the VM's memory size: a mapping of
 * exactly that size (anonymous, or the template's RAM file) is its guest RAM.
 */
export function pssBreakdown(pid: number, guestRamBytes?: number): PssBreakdown | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return undefined;
  }
  const out: PssBreakdown = { guestRam: zero(), tcgCode: zero(), anon: zero(), file: zero() };
  let cur: MappingSums | undefined;
  for (const line of text.split('\n')) {
    const h = HEADER.exec(line);
    if (h) {
      const size = parseInt(h[2]!, 16) - parseInt(h[1]!, 16);
      const perms = h[3]!;
      const name = h[4]!.trim();
      const anon = name === '' || name.startsWith('[');
      let kind: MappingKind;
      if (guestRamBytes !== undefined && size === guestRamBytes) kind = 'guestRam';
      else if (anon && perms.includes('x') && size >= 16 << 20) kind = 'tcgCode';
      else kind = anon ? 'anon' : 'file';
      cur = out[kind];
      continue;
    }
    if (!cur) continue;
    // Anonymous: pages this process wrote (a private file mapping's copy-on-write ones too).
    // Not Private_Dirty, which also counts the template's tmpfs pages while one clone alone maps them.
    const m = /^(Pss|Anonymous):\s+(\d+) kB/.exec(line);
    if (m) {
      if (m[1] === 'Pss') cur.pssKiB += Number(m[2]);
      else cur.writtenKiB += Number(m[2]);
    }
  }
  return out;
}

function zero(): MappingSums {
  return { pssKiB: 0, writtenKiB: 0 };
}

export function addBreakdown(a: PssBreakdown, b: PssBreakdown): PssBreakdown {
  const sum = (k: MappingKind) => ({ pssKiB: a[k].pssKiB + b[k].pssKiB, writtenKiB: a[k].writtenKiB + b[k].writtenKiB });
  return { guestRam: sum('guestRam'), tcgCode: sum('tcgCode'), anon: sum('anon'), file: sum('file') };
}

export function emptyBreakdown(): PssBreakdown {
  return { guestRam: zero(), tcgCode: zero(), anon: zero(), file: zero() };
}
