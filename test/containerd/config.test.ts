// The containerd config writer: version 2 for 1.x and 3 for 2.x, CRI off unless asked, runtimes in
// CRI's table when it is on, nothing pointing outside the instance's own dirs.
import { parse } from 'smol-toml';
import { describe, expect, test } from 'vitest';
import { containerdConfig, shimBinaryName, RUNC_V2 } from '../../harness/containerd.js';
import { runscWrapperScript } from '../../harness/runsc.js';
import { PAUSE_IMAGE } from '../../harness/images/pause.js';

const base = {
  root: '/tmp/x/root',
  state: '/tmp/x/state',
  address: '/tmp/x/c.sock',
  ttrpcAddress: '/tmp/x/c.sock.ttrpc',
  logLevel: 'info',
  runtimes: [
    { name: 'runc', runtimeType: RUNC_V2 },
    { name: 'runsc', runtimeType: RUNC_V2, runcBinary: '/w/runsc-wrapper' },
    { name: 'katats', runtimeType: 'io.containerd.katats.v2', shimBinary: '/s/containerd-shim-katats-v2' },
  ],
};

describe('containerd config', () => {
  test('1.x without CRI', () => {
    const c = parse(containerdConfig({ ...base, major: 1, cri: false })) as Record<string, any>;
    expect(c.version).toBe(2);
    expect(c.root).toBe('/tmp/x/root');
    expect(c.state).toBe('/tmp/x/state');
    expect(c.grpc.address).toBe('/tmp/x/c.sock');
    expect(c.ttrpc.address).toBe('/tmp/x/c.sock.ttrpc');
    expect(c.disabled_plugins).toContain('io.containerd.grpc.v1.cri');
    expect(c.plugins['io.containerd.internal.v1.opt'].path).toBe('/tmp/x/root/opt');
    expect(c.plugins['io.containerd.grpc.v1.cri']).toBeUndefined();
  });

  test('1.x with CRI: runtimes by name with runtime_type and BinaryName', () => {
    const c = parse(containerdConfig({ ...base, major: 1, cri: true })) as Record<string, any>;
    expect(c.disabled_plugins).not.toContain('io.containerd.grpc.v1.cri');
    const rt = c.plugins['io.containerd.grpc.v1.cri'].containerd.runtimes;
    expect(rt.runc).toEqual({ runtime_type: RUNC_V2 });
    expect(rt.runsc).toEqual({ runtime_type: RUNC_V2, options: { BinaryName: '/w/runsc-wrapper' } });
    expect(rt.katats).toEqual({ runtime_type: 'io.containerd.katats.v2' });
  });

  test('1.x with CRI: the local pause image, CNI and netns inside the instance, settings for root without CAP_SYS_RESOURCE', () => {
    const cri = (parse(containerdConfig({ ...base, major: 1, cri: true })) as Record<string, any>).plugins['io.containerd.grpc.v1.cri'];
    expect(cri.sandbox_image).toBe(PAUSE_IMAGE);
    expect(cri.cni.conf_dir).toBe('/tmp/x/root/cni/net.d');
    expect(cri.cni.bin_dir).toBe('/tmp/x/root/cni/bin');
    expect(cri.netns_mounts_under_state_dir).toBe(true);
    expect(cri.restrict_oom_score_adj).toBe(true);
    expect(cri.disable_apparmor).toBe(true);
    expect(cri.stream_server_address).toBe('127.0.0.1');
    expect(cri.containerd.snapshotter).toBe('overlayfs');
    const other = (parse(containerdConfig({ ...base, major: 1, cri: true, sandboxImage: 'x.local/p:1' })) as Record<string, any>).plugins['io.containerd.grpc.v1.cri'];
    expect(other.sandbox_image).toBe('x.local/p:1');
  });

  test('2.x: version 3, CRI split into its plugins', () => {
    const off = parse(containerdConfig({ ...base, major: 2, cri: false })) as Record<string, any>;
    expect(off.version).toBe(3);
    expect(off.disabled_plugins).toEqual(expect.arrayContaining(['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.runtime', 'io.containerd.cri.v1.images']));
    const on = parse(containerdConfig({ ...base, major: 2, cri: true })) as Record<string, any>;
    expect(on.plugins['io.containerd.cri.v1.runtime'].containerd.runtimes.katats.runtime_type).toBe('io.containerd.katats.v2');
    expect(on.plugins['io.containerd.cri.v1.images'].pinned_images.sandbox).toBe(PAUSE_IMAGE);
    expect(on.plugins['io.containerd.cri.v1.runtime'].cni.conf_dir).toBe('/tmp/x/root/cni/net.d');
    expect(on.plugins['io.containerd.cri.v1.runtime'].cni.bin_dirs).toEqual(['/tmp/x/root/cni/bin']);
  });

  test('shim binary names and the runsc wrapper', () => {
    expect(shimBinaryName('io.containerd.katats.v2')).toBe('containerd-shim-katats-v2');
    expect(shimBinaryName(RUNC_V2)).toBe('containerd-shim-runc-v2');
    expect(runscWrapperScript('/opt/runsc', ['--network=none', '--ignore-cgroups'])).toBe("#!/bin/sh\nexec '/opt/runsc' '--network=none' '--ignore-cgroups' \"$@\"\n");
  });
});
