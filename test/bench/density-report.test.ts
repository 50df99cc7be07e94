// bench/density.ts's report from figures made up here: what a pod's PSS leaves out of the
// template's RAM file, and the written column of the breakdown.
import { describe, expect, it } from 'vitest';
import { densityJson, densityMarkdown, type DensityReport } from '../../bench/density.js';
import { summarize } from '../../bench/macro/stats.js';
import { emptyBreakdown } from '../../bench/smaps.js';

const MiB = 1024; // in KiB

function report(templateFileKiB?: number): DensityReport {
  const vmm = emptyBreakdown();
  // Two clones: 60 MiB of guest RAM PSS between them, 20 MiB of it written by them.
  vmm.guestRam = { pssKiB: 60 * MiB, writtenKiB: 20 * MiB };
  vmm.tcgCode = { pssKiB: 96 * MiB, writtenKiB: 96 * MiB };
  const pod = { totalKiB: 110 * MiB, shimKiB: 15 * MiB, vmmKiB: 95 * MiB, otherKiB: 0, processes: ['node', 'qemu-system-x86'] };
  return {
    accel: 'TCG',
    guestMemoryMiB: 512,
    qemuToml: '',
    nodeOptions: '',
    settleS: 20,
    start: [],
    memory: [{ runtime: 'katats', pods: 2, perPodMiB: summarize([110, 110]), perPod: [pod, pod], vmm, ...(templateFileKiB !== undefined ? { templateFileKiB } : {}) }],
    environment: { date: '2026-11-30T00:00:00Z', cores: 2, cpuModel: 'x', loadavgStart: [0], loadavgEnd: [0], containerd: '1.6' },
    durationS: 1,
  };
}

describe('density report', () => {
  it("counts the template's pages no clone maps, per pod, beside the pods' PSS", () => {
    const j = densityJson(report(100 * MiB)) as { memory: Record<string, unknown>[] };
    // 40 MiB of the 100 are mapped (PSS less written, over both clones); 60 are nobody's: 30 per pod.
    expect(j.memory[0]).toMatchObject({ template_ram_file_mib: 100, template_unmapped_per_pod_mib: 30 });
    const md = densityMarkdown(report(100 * MiB));
    expect(md).toContain('| 2 | 100 MiB | 30 MiB |');
  });

  it('shows what the clones wrote beside each PSS, and no template line without a template', () => {
    const md = densityMarkdown(report());
    expect(md).toContain('| 2 | 30 / 10 | 48 / 48 |');
    expect(md).not.toContain('undefined');
    expect(md).not.toContain('template RAM file');
  });
});
