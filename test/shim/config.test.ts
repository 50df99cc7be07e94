import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyAnnotations, ConfigError, loadConfig, parseConfig } from '../../shim/config.js';
import { parseShimArgs } from '../../shim/args.js';
import { groupingId, socketPath } from '../../shim/layout.js';
import { tempDir } from '../support/tmp.js';

describe('shim configuration', () => {
  it('reads Kata-style keys over the defaults', () => {
    const cfg = parseConfig(`
[hypervisor.qemu]
path = "/opt/qemu"
kernel = "/k"
kernel_params = "agent.log=debug"
default_vcpus = 2
default_memory = 1024
shared_fs = "virtio-9p"
[agent.katats]
dial_timeout = 30
[runtime]
enable_debug = true
sandbox_cgroup_only = true
`);
    expect(cfg.hypervisor.qemu).toMatchObject({ path: '/opt/qemu', kernel: '/k', default_vcpus: 2, default_memory: 1024, machine_type: 'q35' });
    expect(cfg.agent.katats.dial_timeout).toBe(30);
    expect(cfg.runtime).toMatchObject({ enable_debug: true, sandbox_cgroup_only: true });
  });

  it('names unknown keys, wrong types and bad values', () => {
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_vcpu = 2')).toThrow(/unknown key "default_vcpu"/);
    expect(() => parseConfig('[hypervisor.qemu]\ndefault_vcpus = "2"')).toThrow(/default_vcpus: expected a number/);
    expect(() => parseConfig('[hypervisor.qemu]\nshared_fs = "nfs"')).toThrow(/shared_fs/);
    expect(parseConfig('[hypervisor.qemu]\nshared_fs = "virtio-fs"').hypervisor.qemu.shared_fs).toBe('virtio-fs');
    expect(parseConfig('[hypervisor.qemu]\nshared_fs = "none"').hypervisor.qemu.shared_fs).toBe('none');
    expect(parseConfig('').hypervisor.qemu.shared_fs).toBe('virtio-9p');
    expect(() => parseConfig('[hypervisor.qemu\n')).toThrow(ConfigError);
    expect(parseConfig('[hypervisor.qemu]\ntcg_tb_size = 64').hypervisor.qemu.tcg_tb_size).toBe(64);
    expect(() => parseConfig('[hypervisor.qemu]\ntcg_tb_size = -1')).toThrow(/tcg_tb_size must be a non-negative integer/);
    expect(() => parseConfig('[hypervisor.qemu]\ntcg_tb_size = 1.5')).toThrow(/tcg_tb_size must be a non-negative integer/);
    expect(parseConfig('').hypervisor.qemu.node_jit).toBe('auto');
    expect(parseConfig('[hypervisor.qemu]\nnode_jit = "on"').hypervisor.qemu.node_jit).toBe('on');
    expect(() => parseConfig('[hypervisor.qemu]\nnode_jit = "fast"')).toThrow(/node_jit must be auto, on or off/);
    expect(parseConfig('').hypervisor.qemu.crun_aslr).toBe('auto');
    expect(parseConfig('[hypervisor.qemu]\ncrun_aslr = "on"').hypervisor.qemu.crun_aslr).toBe('on');
    expect(() => parseConfig('[hypervisor.qemu]\ncrun_aslr = "no"')).toThrow(/crun_aslr must be auto, on or off/);
    expect(parseConfig('[agent.katats]\nkernel_modules = []').agent.katats.kernel_modules).toEqual([]);
    expect(parseConfig('').runtime.internetworking_model).toBe('tcfilter');
    expect(parseConfig('[runtime]\ninternetworking_model = "none"').runtime.internetworking_model).toBe('none');
    expect(() => parseConfig('[runtime]\ninternetworking_model = "macvtap"')).toThrow(/internetworking_model must be tcfilter or none/);
    expect(() => parseConfig('[agent.katats]\nkernel_modules = ["e1000e EEE=1"]')).toThrow(/kernel_modules: loading guest kernel modules is not supported/);
  });

  it('finds the file through KATATS_CONF_FILE and refuses a missing explicit path', () => {
    const t = tempDir();
    const p = path.join(t.dir, 'c.toml');
    fs.writeFileSync(p, '[hypervisor.qemu]\ndefault_memory = 768\n');
    expect(loadConfig(undefined, { KATATS_CONF_FILE: p }).hypervisor.qemu.default_memory).toBe(768);
    expect(() => loadConfig(path.join(t.dir, 'nope.toml'), {})).toThrow(/does not exist/);
    t.cleanup();
  });

  it('applies only the annotations the config allows', () => {
    const cfg = parseConfig('');
    const out = applyAnnotations(cfg, {
      'io.katacontainers.config.hypervisor.default_vcpus': '2',
      'io.kubernetes.cri.sandbox-id': 'x',
    });
    expect(out.hypervisor.qemu.default_vcpus).toBe(2);
    expect(cfg.hypervisor.qemu.default_vcpus).toBe(1);
    expect(() => applyAnnotations(cfg, { 'io.katacontainers.config.hypervisor.kernel': '/evil' })).toThrow(/not allowed/);
    expect(() => applyAnnotations(cfg, { 'io.katacontainers.config.hypervisor.default_memory': 'lots' })).toThrow(/positive integer/);
    // an allowed string key still has to name a shared filesystem katats knows
    const open = parseConfig('[hypervisor.qemu]\nenable_annotations = ["shared_fs"]');
    expect(applyAnnotations(open, { 'io.katacontainers.config.hypervisor.shared_fs': 'virtio-fs' }).hypervisor.qemu.shared_fs).toBe('virtio-fs');
    expect(() => applyAnnotations(open, { 'io.katacontainers.config.hypervisor.shared_fs': 'nfs' })).toThrow(/shared_fs must be/);
  });
});

describe('hypervisor selection', () => {
  it('takes runtime.hypervisor, else the one [hypervisor.X] table a file has (as Kata\'s configuration-clh.toml), else qemu', () => {
    expect(parseConfig('').runtime.hypervisor).toBe('qemu');
    expect(parseConfig('[hypervisor.qemu]\ndefault_memory = 256').runtime.hypervisor).toBe('qemu');
    const clh = parseConfig('[hypervisor.clh]\npath = "/opt/ch"\nkernel_params = "quiet"\ndefault_vcpus = 2\ndefault_memory = 384\nshared_fs = "virtio-fs"');
    expect(clh.runtime.hypervisor).toBe('clh');
    expect(clh.hypervisor.clh).toMatchObject({ path: '/opt/ch', default_vcpus: 2, default_memory: 384, vmm: 'auto', api_timeout: 10, boot_timeout: 60 });
    expect(parseConfig('[hypervisor.qemu]\n[hypervisor.clh]\n').runtime.hypervisor).toBe('qemu');
    expect(parseConfig('[hypervisor.qemu]\n[hypervisor.clh]\n[runtime]\nhypervisor = "clh"').runtime.hypervisor).toBe('clh');
    expect(parseConfig('[hypervisor.clh]\n[runtime]\nhypervisor = "qemu"').runtime.hypervisor).toBe('qemu');
    expect(() => parseConfig('[runtime]\nhypervisor = "firecracker"')).toThrow(/runtime.hypervisor must be "qemu" or "clh"/);
    expect(() => parseConfig('[hypervisor.clh]\nshared_fs = "virtio-9p"')).toThrow(/clh.shared_fs must be virtio-fs or none/);
    expect(() => parseConfig('[hypervisor.clh]\nvmm = "firecracker"')).toThrow(/clh.vmm/);
    expect(() => parseConfig('[hypervisor.clh]\napi_timeout = 0')).toThrow(/api_timeout must be a positive/);
    expect(() => parseConfig('[hypervisor.clh]\ndefault_vcpus = 4\ndefault_maxvcpus = 2')).toThrow(/hypervisor.clh.default_vcpus \(4\) exceeds/);
  });

  it('applies annotations to the selected hypervisor within its own enable_annotations', () => {
    const cfg = parseConfig('[hypervisor.clh]\nenable_annotations = ["default_memory"]');
    const out = applyAnnotations(cfg, { 'io.katacontainers.config.hypervisor.default_memory': '640' });
    expect(out.hypervisor.clh.default_memory).toBe(640);
    expect(out.hypervisor.qemu.default_memory).toBe(512);
    expect(() => applyAnnotations(cfg, { 'io.katacontainers.config.hypervisor.default_vcpus': '2' })).toThrow(/not allowed by hypervisor.clh.enable_annotations/);
  });
});

describe('shim command line', () => {
  it('parses the flags containerd passes, in Go flag syntax', () => {
    const a = parseShimArgs(['-namespace', 'k8s.io', '-address', '/run/containerd/containerd.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start'], '/bundle');
    expect(a).toMatchObject({ namespace: 'k8s.io', id: 'abc', address: '/run/containerd/containerd.sock', debug: true, action: 'start', bundle: '/bundle' });
    expect(parseShimArgs(['--namespace=n', '-id=i', '-bundle', '/b', 'delete']).action).toBe('delete');
    expect(parseShimArgs(['-v']).version).toBe(true);
    expect(() => parseShimArgs(['-namespace', 'n', '-id', 'i', '-nope', 'start'])).toThrow(/not defined: -nope/);
    expect(() => parseShimArgs(['-id', 'i', 'start'])).toThrow(/namespace cannot be empty/);
    expect(() => parseShimArgs(['-namespace', 'n', '-id', 'i', 'explode'])).toThrow(/unknown action/);
  });

  it('groups a pod container with its sandbox through the CRI annotation', () => {
    const t = tempDir();
    fs.writeFileSync(path.join(t.dir, 'config.json'), JSON.stringify({ annotations: { 'io.kubernetes.cri.sandbox-id': 'pod1' } }));
    expect(groupingId(t.dir, 'c2')).toBe('pod1');
    fs.writeFileSync(path.join(t.dir, 'config.json'), JSON.stringify({}));
    expect(groupingId(t.dir, 'c3')).toBe('c3');
    expect(socketPath('/run/katats', '/run/containerd/containerd.sock', 'k8s.io', 'pod1')).toBe(socketPath('/run/katats', '/run/containerd/containerd.sock', 'k8s.io', 'pod1'));
    expect(socketPath('/run/katats', 'a', 'k8s.io', 'pod1')).not.toBe(socketPath('/run/katats', 'a', 'default', 'pod1'));
    t.cleanup();
  });
});
