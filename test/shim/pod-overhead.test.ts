// The RuntimeClass overhead `katats install` prints comes from the measured footprint of the pods
// the configuration makes: a factory clone's when the factory is on, a cold boot's otherwise.
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../shim/config.js';
import { MEASURED, podOverhead } from '../../shim/pod-overhead.js';
import { runtimeClassYaml } from '../../shim/cli/install.js';

describe('pod overhead', () => {
  it('is the measured PSS of the configured boot path with headroom, rounded up to 16 Mi', () => {
    const clone = podOverhead(parseConfig('[factory]\nenable_template = true\n'));
    const cold = podOverhead(parseConfig(''));
    for (const [o, m] of [[clone, MEASURED.template], [cold, MEASURED.cold]] as const) {
      expect(o.memoryMi % 16).toBe(0);
      expect(o.memoryMi).toBeGreaterThanOrEqual(m.pssMiB * 1.15);
      expect(o.memoryMi).toBeLessThan(m.pssMiB * 1.15 + 16);
      expect(o.why).toContain(m.source);
    }
    expect(clone.why).toMatch(/^a factory clone: /);
    expect(cold.why).toMatch(/^a cold-booted VM/);
    expect(cold.memoryMi).toBeGreaterThan(clone.memoryMi);
  });

  it('says when the configuration is not the one measured', () => {
    const o = podOverhead(parseConfig(`[hypervisor.qemu]\ndefault_memory = 2048\n[factory]\nenable_template = true\n`));
    expect(o.why).toContain('default_memory 2048 (measured with 512)');
    expect(podOverhead(parseConfig('[hypervisor.qemu]\nnode_jit = "on"\n[factory]\nenable_template = true\n')).why).toContain('node_jit on (measured with auto)');
    expect(podOverhead(parseConfig('[hypervisor.qemu]\ncrun_aslr = "on"\n[factory]\nenable_template = true\n')).why).toContain('crun_aslr on (measured with auto)');
    expect(podOverhead(parseConfig('[factory]\nenable_template = true\n')).why).not.toContain('differs');
  });

  it('is what the RuntimeClass carries', () => {
    const o = podOverhead(parseConfig('[factory]\nenable_template = true\n'));
    const yaml = runtimeClassYaml(o);
    expect(yaml).toContain(`    memory: "${o.memoryMi}Mi"\n`);
    expect(yaml).toContain(`    # ${o.why}\n`);
  });
});
