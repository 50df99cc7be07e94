// A process's proportional set size: its private pages plus its share of the pages it maps with
// others (a template's RAM file shared by its clones counts once across them), from
// /proc/<pid>/smaps_rollup, which the kernel sums for us.
import fs from 'node:fs';

/** PSS in bytes, or undefined when the process is gone or its smaps cannot be read. */
export async function pssBytes(pid: number): Promise<number | undefined> {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    // Async: the kernel walks the page tables of a VM's whole RAM to answer.
    const text = await fs.promises.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
    const m = /^Pss:\s+(\d+) kB/m.exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
