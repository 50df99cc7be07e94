// The RuntimeClass overhead `katats install` prints: what one idle katats pod costs the host beyond
// its containers, from the benchmark's measurement rather than a guess. The figures are host PSS
// (smaps_rollup) of a pod's shim and QEMU; Kubernetes adds the overhead to the pod's requests, so
// the scheduler and the kubelet's eviction see the VM. The template's RAM file (a tmpfs file of up
// to default_memory, written once by `katats factory init`) is a cost per node, not per pod.
import type { KatatsConfig } from './config.js';
import type { TcgCut } from '../vmm/config.js';

export interface MeasuredFootprint {
  /** host PSS per idle pod, MiB */
  pssMiB: number;
  /** how many idle pods ran when it was read (PSS shares common pages among them) */
  pods: number;
  /** the VM shape it was measured with */
  guestMemoryMiB: number;
  tcgTbSizeMiB: number;
  nodeJit: TcgCut;
  crunAslr: TcgCut;
  accel: 'TCG' | 'KVM';
  /** the report it comes from */
  source: string;
}

/** A factory clone (bench/density.ts) and a cold boot (bench/factory.ts), with tcg_tb_size's default, on this project's CI machine kind. */
export const MEASURED: { template: MeasuredFootprint; cold: MeasuredFootprint } = {
  template: { pssMiB: 103.8, pods: 5, guestMemoryMiB: 512, tcgTbSizeMiB: 64, nodeJit: 'auto', crunAslr: 'auto', accel: 'TCG', source: 'bench/results/2026-11-30_warm-spec/density/' },
  cold: { pssMiB: 365.3, pods: 1, guestMemoryMiB: 512, tcgTbSizeMiB: 64, nodeJit: 'auto', crunAslr: 'auto', accel: 'TCG', source: 'bench/results/2026-11-30_warm-spec/factory/' },
};

/** Headroom over the measured figure: a pod's shim and QEMU grow with its containers' I/O and calls. */
const HEADROOM = 1.15;
const ROUND_MIB = 16;

export interface PodOverhead {
  memoryMi: number;
  cpu: string;
  /** where the figure comes from, for a comment next to it */
  why: string;
}

/** The overhead for pods of this configuration: the template figure when the factory is on, else the cold one. */
export function podOverhead(config: Pick<KatatsConfig, 'factory' | 'hypervisor'>): PodOverhead {
  const kind = config.factory.enable_template ? 'template' : 'cold';
  const m = MEASURED[kind];
  const memoryMi = Math.ceil((m.pssMiB * HEADROOM) / ROUND_MIB) * ROUND_MIB;
  const q = config.hypervisor.qemu;
  const differs = [
    ...(q.default_memory !== m.guestMemoryMiB ? [`default_memory ${q.default_memory} (measured with ${m.guestMemoryMiB})`] : []),
    ...(q.tcg_tb_size !== m.tcgTbSizeMiB ? [`tcg_tb_size ${q.tcg_tb_size} (measured with ${m.tcgTbSizeMiB})`] : []),
    ...(q.node_jit !== m.nodeJit ? [`node_jit ${q.node_jit} (measured with ${m.nodeJit})`] : []),
    ...(q.crun_aslr !== m.crunAslr ? [`crun_aslr ${q.crun_aslr} (measured with ${m.crunAslr})`] : []),
  ];
  const why =
    `${kind === 'template' ? 'a factory clone' : 'a cold-booted VM (the factory is off)'}: ${m.pssMiB} MiB host PSS per idle pod ` +
    `with ${m.pods} pod${m.pods > 1 ? 's' : ''} on ${m.accel} (${m.source}) + ${Math.round((HEADROOM - 1) * 100)}%` +
    (differs.length ? `; this configuration differs: ${differs.join(', ')}, re-measure with bench/density.ts` : '');
  return { memoryMi, cpu: '250m', why };
}
