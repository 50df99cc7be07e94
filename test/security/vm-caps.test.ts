// A pod sizes its own VM only within the node's caps: default_vcpus / default_memory annotations
// above [hypervisor.qemu] default_maxvcpus / default_maxmemory (0: the host's online CPUs and
// MemTotal) are refused with an error naming the annotation, and a config whose defaults exceed
// its own caps does not load. The sandbox's config comes from one function (sandboxConfig): the
// shim's config, CRI's runtime options (ConfigPath, else the inline options table CRI sends as
// config_body) and the annotations.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, hostLimits, parseConfig, sandboxConfig, vmCaps } from '../../shim/config.js';
import { encode } from '../../proto/registry.js';
import { decodeRuntimeOptions } from '../../shim/runtime-options.js';
import { tempDir } from '../support/tmp.js';

const A = 'io.katacontainers.config.hypervisor.';
const host = { cpus: 4, memoryMiB: 8192 };
/** The options as CRI sends them, through the shim's decoding. */
const options = (o: { config_path?: string; config_body?: string }) =>
  decodeRuntimeOptions({
    type_url: 'runtimeoptions.v1.Options',
    value: encode('runtimeoptions.v1.Options', { config_path: o.config_path ?? '', config_body: Buffer.from(o.config_body ?? '') }),
  });

describe('VM size caps', () => {
  it('refuses annotations above the host\'s CPUs and memory when no cap is configured', () => {
    const cfg = parseConfig('');
    expect(() => sandboxConfig(cfg, null, { [`${A}default_vcpus`]: '5' }, { host })).toThrow(expect.objectContaining({ name: 'ConfigError', message: expect.stringMatching(/default_vcpus.*5.*online CPUs \(4\)/) }));
    expect(() => sandboxConfig(cfg, null, { [`${A}default_memory`]: '1000000' }, { host })).toThrow(/annotation io\.katacontainers\.config\.hypervisor\.default_memory: 1000000 is above the host's memory in MiB \(8192\)/);
    const ok = sandboxConfig(cfg, null, { [`${A}default_vcpus`]: '4', [`${A}default_memory`]: '8192' }, { host });
    expect(ok.hypervisor.qemu.default_vcpus).toBe(4);
    expect(ok.hypervisor.qemu.default_memory).toBe(8192);
  });

  it('refuses annotations above configured caps, and caps above the host count as the host', () => {
    const cfg = parseConfig('[hypervisor.qemu]\ndefault_maxvcpus = 2\ndefault_maxmemory = 1024\nenable_annotations = ["default_.*"]');
    expect(() => sandboxConfig(cfg, null, { [`${A}default_vcpus`]: '3' }, { host })).toThrow(/default_vcpus: 3 is above hypervisor\.qemu\.default_maxvcpus \(2\)/);
    expect(() => sandboxConfig(cfg, null, { [`${A}default_memory`]: '2048' }, { host })).toThrow(/default_memory: 2048 is above hypervisor\.qemu\.default_maxmemory \(1024\)/);
    // A pod cannot raise a cap, only lower it; lowering it below the defaults is refused too.
    expect(() => sandboxConfig(cfg, null, { [`${A}default_maxvcpus`]: '64' }, { host })).toThrow(/default_maxvcpus: 64 is above/);
    expect(sandboxConfig(cfg, null, { [`${A}default_maxvcpus`]: '1' }, { host }).hypervisor.qemu.default_maxvcpus).toBe(1);
    expect(() => sandboxConfig(cfg, null, { [`${A}default_maxvcpus`]: '1', [`${A}default_vcpus`]: '2' }, { host })).toThrow(/default_vcpus 2 is above hypervisor\.qemu\.default_maxvcpus \(1\)/);
    const big = parseConfig('[hypervisor.qemu]\ndefault_maxvcpus = 512\n');
    expect(vmCaps(big.hypervisor.qemu, host).vcpus).toEqual({ value: 4, what: "the host's online CPUs" });
    expect(() => sandboxConfig(big, null, { [`${A}default_vcpus`]: '8' }, { host })).toThrow(/above the host's online CPUs \(4\)/);
  });

  it('a config whose defaults exceed its own caps does not load; negative caps neither', () => {
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_vcpus = 4\ndefault_maxvcpus = 2\n')).toThrow(/default_vcpus \(4\) exceeds default_maxvcpus \(2\)/);
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_memory = 4096\ndefault_maxmemory = 2048\n')).toThrow(/default_memory \(4096\) exceeds default_maxmemory \(2048\)/);
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_maxmemory = -1\n')).toThrow(ConfigError);
    // ...and defaults above the host are refused when a sandbox is configured on this host.
    expect(() => sandboxConfig(parseConfig('[hypervisor.qemu]\ndefault_vcpus = 64\n'), null, {}, { host })).toThrow(/default_vcpus 64 is above the host's online CPUs \(4\)/);
  });

  it('reads this host\'s limits', () => {
    const h = hostLimits();
    expect(h.cpus).toBeGreaterThan(0);
    expect(h.memoryMiB).toBeGreaterThan(64);
  });
});

describe('runtime options: ConfigPath, else the inline options table', () => {
  const t = tempDir('kt-cfg-');
  afterAll(() => t.cleanup());
  const base = parseConfig(`[runtime]\nstate_dir = "/run/own"\nlog_dir = "/var/log/own"\n`);

  it('config_body is the config (CRI\'s whole options table, its own keys left out), state and log dirs stay the shim\'s', () => {
    const warnings: string[] = [];
    const cfg = sandboxConfig(base, options({ config_body: 'TypeUrl = "x"\n[hypervisor.qemu]\ndefault_memory = 768\n[runtime]\nstate_dir = "/elsewhere"\n' }), {}, { host, warn: (_f, m) => warnings.push(m) });
    expect(cfg.hypervisor.qemu.default_memory).toBe(768);
    expect(cfg.runtime.state_dir).toBe('/run/own');
    expect(cfg.runtime.log_dir).toBe('/var/log/own');
    expect(warnings.join('\n')).toMatch(/state_dir and log_dir/);
    expect(() => sandboxConfig(base, options({ config_body: '[hypervisor.qemu]\nbogus = 1\n' }), {}, { host })).toThrow(/unknown key "bogus"/);
  });

  it('ConfigPath wins over a body, as Kata reads only the path', () => {
    const p = path.join(t.dir, 'c.toml');
    fs.writeFileSync(p, '[hypervisor.qemu]\ndefault_memory = 640\n');
    const warnings: string[] = [];
    const cfg = sandboxConfig(base, options({ config_path: p, config_body: '[hypervisor.qemu]\ndefault_memory = 768\n' }), {}, { host, warn: (_f, m) => warnings.push(m) });
    expect(cfg.hypervisor.qemu.default_memory).toBe(640);
    expect(warnings.join('\n')).toMatch(/ConfigPath wins/);
    // Caps apply to whatever config was chosen.
    expect(() => sandboxConfig(base, options({ config_body: '[hypervisor.qemu]\ndefault_maxvcpus = 1\n' }), { [`${A}default_vcpus`]: '2' }, { host })).toThrow(/above hypervisor\.qemu\.default_maxvcpus \(1\)/);
  });
});
