import { describe, expect, it } from 'vitest';
import { validateConfig, type VmConfig } from '../../vmm/config.js';
import { buildQemuArgs, qemuEscape } from '../../vmm/qemu-args.js';

const base: VmConfig = {
  id: 'sb1',
  vcpus: 2,
  memoryMiB: 512,
  kernel: '/img/vmlinux',
  initrd: '/img/initrd.img',
  rootfs: '/img/rootfs.erofs',
  baseCmdline: 'console=ttyS0 quiet',
  kernelParams: ['agent.log=debug'],
  agentSocket: '/run/sb1/agent.sock',
  agentLogFile: '/run/sb1/agent.log',
  launchDataFile: '/run/sb1/host_data',
  sharedDir: { path: '/srv/a,b', tag: 'kataShared', readonly: true },
  disks: [{ id: 'layer0', path: '/x/layer0.img', readonly: true, serial: 'l0' }],
  accel: 'tcg',
  runDir: '/run/sb1',
};

function opt(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));
}

describe('VmConfig -> QEMU argv', () => {
  it('builds a minimal q35 TCG command line with the agent channel, log port, fw_cfg and disks', () => {
    const { argv, layout } = buildQemuArgs(base, 'tcg');
    expect(argv).toEqual(expect.arrayContaining(['-nodefaults', '-no-user-config', '-nographic']));
    expect(opt(argv, '-machine')[0]).toMatch(/^q35,/);
    expect(opt(argv, '-accel')).toEqual(['tcg,thread=multi']);
    expect(opt(argv, '-smp')).toEqual(['2']);
    expect(opt(argv, '-m')).toEqual(['512M']);
    expect(opt(argv, '-append')).toEqual(['console=ttyS0 quiet agent.log=debug katats.node_opts=--jitless katats.crun_aslr=off']);
    expect(layout.cmdline).toBe('console=ttyS0 quiet agent.log=debug katats.node_opts=--jitless katats.crun_aslr=off');
    const devices = opt(argv, '-device');
    expect(devices.some((d) => d.startsWith('virtio-blk-pci,drive=rootfs-blk') && d.includes('serial=katats-root'))).toBe(true);
    expect(devices).toContain('virtserialport,bus=vser0.0,chardev=agent,name=agent.channel.0');
    expect(devices).toContain('virtserialport,bus=vser0.0,chardev=agentlog,name=agent.log.0');
    expect(devices.some((d) => d.startsWith('virtio-9p-pci,fsdev=shared,mount_tag=kataShared'))).toBe(true);
    expect(devices).toContain('virtio-blk-pci,drive=layer0-blk,id=layer0,serial=l0,bus=bd0');
    expect(devices.some((d) => d.startsWith('pcie-root-port,id=bd0,bus=pcie.0'))).toBe(true);
    expect(devices.filter((d) => d.startsWith('pcie-root-port,id=hp'))).toHaveLength(4);
    expect(opt(argv, '-chardev')).toContain('socket,id=agent,path=/run/sb1/agent.sock,server=on,wait=off');
    // The agent log port is a socket the driver reads (to cap and rotate it), never a file QEMU grows.
    expect(opt(argv, '-chardev')).toContain('socket,id=agentlog,path=/run/sb1/log.sock,server=on,wait=off');
    expect(opt(argv, '-chardev').some((c) => c.startsWith('file,'))).toBe(false);
    expect(layout.agentLogSocket).toBe('/run/sb1/log.sock');
    expect(opt(argv, '-fsdev')[0]).toContain('path=/srv/a,,b');
    expect(opt(argv, '-fw_cfg')).toEqual(['name=opt/katats/host_data,file=/run/sb1/host_data']);
    expect(opt(argv, '-qmp')).toEqual(['unix:/run/sb1/qmp.sock,server=on,wait=off']);
    const rootBlockdev = JSON.parse(opt(argv, '-blockdev')[0]!);
    expect(rootBlockdev).toMatchObject({ driver: 'raw', 'node-name': 'rootfs-blk', 'read-only': true, file: { filename: '/img/rootfs.erofs' } });
    expect(layout.hotplugBuses).toEqual(['hp0', 'hp1', 'hp2', 'hp3']);
  });

  it('uses single-threaded TCG for one vCPU, kvm when told, pc hotplug on pci.0', () => {
    expect(opt(buildQemuArgs({ ...base, vcpus: 1 }, 'tcg').argv, '-accel')).toEqual(['tcg']);
    expect(opt(buildQemuArgs(base, 'kvm').argv, '-accel')).toEqual(['kvm']);
    // TCG's code buffer when configured; KVM has none.
    expect(opt(buildQemuArgs({ ...base, vcpus: 1, tcgTbSizeMiB: 64 }, 'tcg').argv, '-accel')).toEqual(['tcg,tb-size=64']);
    expect(opt(buildQemuArgs({ ...base, tcgTbSizeMiB: 64 }, 'tcg').argv, '-accel')).toEqual(['tcg,thread=multi,tb-size=64']);
    expect(opt(buildQemuArgs({ ...base, tcgTbSizeMiB: 64 }, 'kvm').argv, '-accel')).toEqual(['kvm']);
    const pc = buildQemuArgs({ ...base, machine: 'pc', hotplugSlots: 2 }, 'tcg');
    expect(pc.layout.hotplugBuses).toEqual(['pci.0', 'pci.0']);
    expect(opt(pc.argv, '-device').filter((d) => d.startsWith('pcie-root-port'))).toHaveLength(0);
  });

  it('runs the guest agent --jitless on TCG only (auto), always (off) or never (on); a node_opts of the config wins', () => {
    const cmdline = (c: Partial<VmConfig>, accel: 'tcg' | 'kvm') => buildQemuArgs({ ...base, guestCrunAslr: 'on', ...c }, accel).layout.cmdline;
    expect(cmdline({}, 'tcg')).toMatch(/ katats\.node_opts=--jitless$/);
    expect(cmdline({}, 'kvm')).not.toContain('node_opts');
    expect(cmdline({ guestNodeJit: 'on' }, 'tcg')).not.toContain('node_opts');
    expect(cmdline({ guestNodeJit: 'off' }, 'kvm')).toMatch(/ katats\.node_opts=--jitless$/);
    expect(cmdline({ kernelParams: ['katats.node_opts=--max-lazy'] }, 'tcg')).toBe('console=ttyS0 quiet katats.node_opts=--max-lazy');
    expect(validateConfig.bind(null, { ...base, guestNodeJit: 'maybe' as never })).toThrow(/guestNodeJit maybe/);
  });

  it("compiles a template's agent eagerly, on KVM too; a clone's command line and a cold VM's keep lazy compilation", () => {
    const cmdline = (c: Partial<VmConfig>, accel: 'tcg' | 'kvm') => buildQemuArgs({ ...base, guestCrunAslr: 'on', ...c }, accel).layout.cmdline;
    const template = { memoryFile: { path: '/t/memory', shared: true } };
    expect(cmdline(template, 'tcg')).toMatch(/ katats\.node_opts=--jitless,--no-lazy,--no-flush-bytecode$/);
    expect(cmdline(template, 'kvm')).toMatch(/ katats\.node_opts=--no-lazy,--no-flush-bytecode$/);
    expect(cmdline({ memoryFile: { path: '/t/memory', shared: false }, incoming: true }, 'tcg')).toMatch(/ katats\.node_opts=--jitless$/);
    expect(cmdline({ ...template, kernelParams: ['katats.node_opts=--max-lazy'] }, 'tcg')).toBe('console=ttyS0 quiet katats.node_opts=--max-lazy');
  });

  it('turns ASLR off for the guest crun commands that start no process on TCG only (auto), always (off) or never (on); the config\'s own word wins', () => {
    const cmdline = (c: Partial<VmConfig>, accel: 'tcg' | 'kvm') => buildQemuArgs({ ...base, guestNodeJit: 'on', ...c }, accel).layout.cmdline;
    expect(cmdline({}, 'tcg')).toMatch(/ katats\.crun_aslr=off$/);
    expect(cmdline({}, 'kvm')).not.toContain('crun_aslr');
    expect(cmdline({ guestCrunAslr: 'on' }, 'tcg')).not.toContain('crun_aslr');
    expect(cmdline({ guestCrunAslr: 'off' }, 'kvm')).toMatch(/ katats\.crun_aslr=off$/);
    expect(cmdline({ kernelParams: ['katats.crun_aslr=on'] }, 'tcg')).toBe('console=ttyS0 quiet katats.crun_aslr=on');
    expect(validateConfig.bind(null, { ...base, guestCrunAslr: 'never' as never })).toThrow(/guestCrunAslr never/);
  });

  it('exports 9p with security_model=none unless told otherwise', () => {
    expect(opt(buildQemuArgs(base, 'tcg').argv, '-fsdev')).toEqual(['local,id=shared,path=/srv/a,,b,security_model=none,multidevs=remap,readonly=on']);
    expect(opt(buildQemuArgs({ ...base, sharedDir: { ...base.sharedDir!, securityModel: 'mapped-xattr' } }, 'tcg').argv, '-fsdev')[0]).toContain(',security_model=mapped-xattr,');
  });

  it('shares a directory over virtio-fs: guest RAM from a shared memfd, vhost-user-fs on the socket, no 9p', () => {
    const { sharedDir: _9p, ...rest } = base;
    const { argv } = buildQemuArgs({ ...rest, virtioFs: { socket: '/run/sb1/vfs,1.sock', tag: 'kataShared' } }, 'tcg');
    expect(opt(argv, '-object')).toEqual(['memory-backend-memfd,id=mem,size=512M,share=on']);
    expect(opt(argv, '-numa')).toEqual(['node,memdev=mem']);
    // -m stays: it sizes the machine, the backend must match it.
    expect(opt(argv, '-m')).toEqual(['512M']);
    expect(opt(argv, '-chardev')).toContain('socket,id=vfs,path=/run/sb1/vfs,,1.sock');
    const devices = opt(argv, '-device');
    expect(devices.some((d) => /^vhost-user-fs-pci,chardev=vfs,tag=kataShared,bus=pcie\.0,addr=0x[0-9a-f]+$/.test(d))).toBe(true);
    expect(devices.some((d) => d.startsWith('virtio-9p-pci'))).toBe(false);
    expect(opt(argv, '-fsdev')).toEqual([]);
    // the 9p default keeps private guest RAM
    expect(opt(buildQemuArgs(base, 'tcg').argv, '-object')).toEqual([]);
    expect(opt(buildQemuArgs(base, 'tcg').argv, '-numa')).toEqual([]);
  });

  it('gives each inherited TAP descriptor a virtio-net NIC with the veth MAC and MTU', () => {
    const netdevs = [
      { id: 'net0', fd: 3, mac: '02:4b:50:00:00:01', mtu: 1450 },
      { id: 'net1', fd: 4, mac: '02:4b:50:00:00:02' },
    ];
    const { argv } = buildQemuArgs({ ...base, netdevs }, 'tcg');
    expect(opt(argv, '-netdev')).toEqual(['tap,id=net0,fd=3', 'tap,id=net1,fd=4']);
    const nics = opt(argv, '-device').filter((d) => d.startsWith('virtio-net-pci'));
    expect(nics[0]).toMatch(/^virtio-net-pci,netdev=net0,id=net0-nic,mac=02:4b:50:00:00:01,host_mtu=1450,bus=pcie\.0,addr=0x[0-9a-f]+$/);
    expect(nics[1]).toMatch(/^virtio-net-pci,netdev=net1,id=net1-nic,mac=02:4b:50:00:00:02,bus=/);
    expect(opt(buildQemuArgs(base, 'tcg').argv, '-netdev')).toEqual([]);
    expect(() => validateConfig({ ...base, netdevs: [{ id: 'n', fd: 3, mac: '03:00:00:00:00:01' }] })).toThrow(/not a unicast MAC/);
    expect(() => validateConfig({ ...base, netdevs: [{ id: 'n', fd: 2, mac: '02:00:00:00:00:01' }] })).toThrow(/fd 2/);
    expect(() => validateConfig({ ...base, netdevs: [netdevs[0]!, { ...netdevs[1]!, fd: 3 }] })).toThrow(/distinct/);
  });

  it('rejects bad configs', () => {
    expect(() => validateConfig({ ...base, virtioFs: { socket: '/run/vfs.sock', tag: 'x'.repeat(37) } })).toThrow(/virtioFs.tag/);
    expect(() => validateConfig({ ...base, virtioFs: { socket: `/${'s'.repeat(120)}`, tag: 'kataShared' } })).toThrow(/virtioFs.socket/);
    expect(() => validateConfig({ ...base, virtioFs: { socket: '/run/vfs.sock', tag: 'kataShared' } })).not.toThrow();
    expect(() => validateConfig({ ...base, vcpus: 0 })).toThrow(/vcpus/);
    expect(() => validateConfig({ ...base, disks: [{ id: 'bad id', path: '/x' }] })).toThrow(/disk id/);
    expect(() => validateConfig({ ...base, accel: 'hvf' as never })).toThrow(/accel/);
    expect(() => validateConfig({ ...base, kernelParams: ['a b'] })).toThrow(/whitespace/);
    expect(() => validateConfig(base)).not.toThrow();
    expect(qemuEscape('a,b')).toBe('a,,b');
  });
});
