// Template keys and the template store, without QEMU: what makes two VMs the same shape, and
// what the store refuses.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { VmConfig } from '../../vmm/config.js';
import { notTemplatable, templateKey, templateKeyInput, type TemplateKeyInput } from '../../vmm/template/key.js';
import { MEMORY_FILE, STATE_FILE, TemplateStore } from '../../vmm/template/store.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-tplkey-');
afterAll(() => tmp.cleanup());
const image = { kernel: 'a'.repeat(64), initrd: 'b'.repeat(64), rootfs: 'c'.repeat(64) };

function cfg(pod: string, extra: Partial<VmConfig> = {}): VmConfig {
  const d = `/run/katats/sandboxes/${pod}`;
  return {
    id: `k${pod}`,
    vcpus: 1,
    memoryMiB: 512,
    kernel: '/usr/share/katats/guest/vmlinux',
    initrd: '/usr/share/katats/guest/initrd.img',
    rootfs: '/usr/share/katats/guest/rootfs.erofs',
    baseCmdline: 'console=ttyS0 quiet',
    agentSocket: `${d}/agent.sock`,
    agentLogFile: `/var/log/katats/${pod}-agent.log`,
    sharedDir: { path: `${d}/shared`, tag: 'kataShared' },
    launchDataFile: `${d}/host_data`,
    accel: 'tcg',
    runDir: `${d}/vm`,
    qemuBinary: process.execPath, // any existing file: the key takes its size and mtime
    ...extra,
  };
}

const key = (c: VmConfig) => templateKey(templateKeyInput(c, 'tcg', image));

describe('template key', () => {
  it('is the same for two pods of one shape, whatever their ids, sockets, share paths and launch data', () => {
    expect(key(cfg('pod-one'))).toBe(key(cfg('p2,with,commas')));
    const input = templateKeyInput(cfg('pod-one'), 'tcg', image);
    expect(JSON.stringify(input)).not.toContain('pod-one');
  });

  it('differs for memory, vCPUs, machine, CPU model, command line, device layout, accelerator and image', () => {
    const base = key(cfg('p'));
    const variants: Partial<VmConfig>[] = [
      { memoryMiB: 640 },
      { vcpus: 2 },
      { machine: 'pc' },
      { cpu: 'qemu64' },
      { kernelParams: ['agent.log=debug'] },
      { sharedDir: { path: '/run/katats/sandboxes/p/shared', tag: 'other' } },
      { agentLogFile: undefined },
      { launchDataFile: undefined },
      { hotplugSlots: 2 },
    ];
    for (const v of variants) expect(key(cfg('p', v)), JSON.stringify(v)).not.toBe(base);
    expect(templateKey(templateKeyInput(cfg('p'), 'kvm', image))).not.toBe(base);
    expect(templateKey(templateKeyInput(cfg('p'), 'tcg', { ...image, rootfs: 'd'.repeat(64) }))).not.toBe(base);
  });

  it('refuses VMs that cannot be templated', () => {
    expect(notTemplatable(cfg('p', { sharedDir: undefined, virtioFs: { socket: '/x/vfs.sock', tag: 'kataShared' } }))).toMatch(/virtio-fs/);
    expect(() => templateKeyInput(cfg('p', { disks: [{ id: 'd0', path: '/x' }] }), 'tcg', image)).toThrow(/boot-time disks/);
    expect(() => templateKeyInput(cfg('p'), 'tcg', { ...image, kernel: 'nope' })).toThrow(/no sha256 digest/);
  });

  it('refuses a VM whose launch data binds a policy, and takes one with zeros', () => {
    const bound = path.join(tmp.dir, 'host_data_bound');
    const zeros = path.join(tmp.dir, 'host_data_zeros');
    fs.writeFileSync(bound, Buffer.concat([Buffer.alloc(31), Buffer.from([1])]));
    fs.writeFileSync(zeros, Buffer.alloc(32));
    expect(() => templateKeyInput(cfg('p', { launchDataFile: bound }), 'tcg', image)).toThrow(/binds a policy/);
    expect(notTemplatable(cfg('p', { launchDataFile: zeros }))).toBeUndefined();
    expect(key(cfg('p', { launchDataFile: zeros }))).toBe(key(cfg('q')));
    // The bytes the shim holds decide, without reading the file again.
    const held = Buffer.concat([Buffer.alloc(31), Buffer.from([1])]);
    expect(notTemplatable(cfg('p', { launchDataFile: zeros, launchData: held }))).toMatch(/binds a policy/);
    expect(notTemplatable(cfg('p', { launchDataFile: bound, launchData: Buffer.alloc(32) }))).toBeUndefined();
  });
});

describe('template store', () => {
  function fakeTemplate(store: TemplateStore, input: TemplateKeyInput, memoryMiB = 1) {
    const k = templateKey(input);
    const dir = store.buildDir(k);
    fs.writeFileSync(path.join(dir, MEMORY_FILE), Buffer.alloc(memoryMiB << 20));
    fs.writeFileSync(path.join(dir, STATE_FILE), 'state');
    return store.commit(dir, { key: k, input, createdAt: new Date().toISOString(), buildMs: { ready: 1, warm: 0, save: 1 }, memoryMiB });
  }

  it('finds a complete template by key, read-only, and says why it finds none', () => {
    const store = new TemplateStore(path.join(tmp.dir, 's1'));
    const input = templateKeyInput(cfg('p'), 'tcg', image);
    expect(store.lookup(input)).toEqual({ reason: `no template at ${store.root} (run: katats factory init)` });
    const t = fakeTemplate(store, input);
    expect(fs.statSync(t.memoryFile).mode & 0o777).toBe(0o444);
    expect(fs.statSync(t.dir).mode & 0o777).toBe(0o555);
    expect('template' in store.lookup(input)).toBe(true);
    const other = store.lookup(templateKeyInput(cfg('p', { vcpus: 2 }), 'tcg', image));
    expect('reason' in other && other.reason).toMatch(/^key mismatch: no template for key [0-9a-f]{12}; [0-9a-f]{12}: VM shape differs at argv\[\d+\]: template "tcg", pod "tcg,thread=multi"$/);
    // A half-built template (its build dir) is never found.
    store.buildDir(templateKey(templateKeyInput(cfg('p', { vcpus: 2 }), 'tcg', image)));
    expect(store.list()).toHaveLength(1);
    expect(store.destroy()).toHaveLength(2);
    expect(fs.readdirSync(store.root)).toEqual([]);
  });

  it('refuses a template whose recorded inputs are not its name, or whose RAM file is short', () => {
    const store = new TemplateStore(path.join(tmp.dir, 's2'));
    const input = templateKeyInput(cfg('p'), 'tcg', image);
    const t = fakeTemplate(store, input);
    fs.chmodSync(t.dir, 0o755);
    fs.truncateSync(t.memoryFile, 4096);
    expect(store.lookup(input)).toEqual({ reason: `template ${t.meta.key.slice(0, 12)} RAM file is 4096 bytes, not 1 MiB` });
    const meta = JSON.parse(fs.readFileSync(path.join(t.dir, 'template.json'), 'utf8')) as { input: TemplateKeyInput };
    meta.input.accel = 'kvm';
    fs.chmodSync(path.join(t.dir, 'template.json'), 0o644);
    fs.writeFileSync(path.join(t.dir, 'template.json'), JSON.stringify(meta));
    expect(store.lookup(input)).toEqual({ reason: `template ${t.meta.key.slice(0, 12)} records other inputs than its name` });
    store.destroy();
  });

  it('takes only template paths a shell cannot misread (they go into exec: migration URIs)', () => {
    expect(() => new TemplateStore('relative/dir')).toThrow(/not absolute/);
    expect(() => new TemplateStore('/tmp/x; rm -rf /')).toThrow(/may hold only/);
    expect(() => new TemplateStore('/tmp/$(id)')).toThrow(/may hold only/);
  });
});
