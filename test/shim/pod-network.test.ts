// The host side of the pod network against a real kernel, without a VM: a network namespace made
// here stands for CNI's (two veths with addresses, routes, a permanent neighbour), and the shim's
// tcfilter wiring is read back with iproute2: a TAP per veth with the veth's MTU, ingress qdiscs
// and mirred redirects both ways; the plan holds Kata's shapes without the kernel's connected
// routes. Teardown (and `shim delete`'s record-driven path after a killed shim) leaves no TAP,
// qdisc or filter.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NETWORK_RECORD, removeRecordedNetwork, setupPodNetwork } from '../../shim/network/pod-network.js';
import { tempDir } from '../support/tmp.js';
import { sandboxDns } from '../../shim/sandbox-boot.js';
import type { grpc } from '../../proto/gen/types.js';

const NS = `katats-podnet-${process.pid}`;
const NSPATH = `/run/netns/${NS}`;
const tag = `kp${process.pid % 100000}`;
const log = pino({ level: process.env.KATATS_TEST_LOG ?? 'silent' });

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' });
const ipn = (...args: string[]) => sh('ip', ['-n', NS, ...args]);
const links = () => (JSON.parse(ipn('-j', 'link', 'show')) as { ifname: string; mtu: number }[]).map((l) => l.ifname).sort();
const qdiscs = (dev: string) => sh('tc', ['-n', NS, 'qdisc', 'show', 'dev', dev]);
const filters = (dev: string) => sh('tc', ['-n', NS, 'filter', 'show', 'dev', dev, 'ingress']);

describe('pod network, host side (tcfilter in a namespace made here)', () => {
  let state: { dir: string; cleanup: () => void };
  beforeAll(() => {
    state = tempDir('kt-podnet-');
    sh('ip', ['netns', 'add', NS]);
    for (const [i, name, net] of [
      [0, 'eth0', '10.223.5'],
      [1, 'net1', '10.224.6'],
    ] as const) {
      sh('ip', ['link', 'add', `${tag}h${i}`, 'type', 'veth', 'peer', 'name', name, 'netns', NS]);
      ipn('link', 'set', name, 'address', `02:4b:50:00:00:0${i + 1}`, 'mtu', String(1450 - i * 50), 'up');
      ipn('addr', 'add', `${net}.5/24`, 'dev', name);
    }
    ipn('route', 'add', 'default', 'via', '10.223.5.1', 'dev', 'eth0');
    ipn('route', 'add', '10.225.0.0/16', 'via', '10.224.6.1', 'dev', 'net1');
    ipn('neigh', 'add', '10.223.5.1', 'lladdr', '02:4b:50:00:00:99', 'dev', 'eth0', 'nud', 'permanent');
    // A static IPv6 neighbour goes along too; a learnt gateway entry is left to the guest's kernel.
    ipn('neigh', 'add', '10.224.6.1', 'lladdr', '02:4b:50:00:00:98', 'dev', 'net1', 'nud', 'reachable');
    ipn('neigh', 'add', 'fd00:4b::1', 'lladdr', '02:4b:50:00:00:97', 'dev', 'eth0', 'nud', 'permanent');
  });
  afterAll(() => {
    for (const i of [0, 1]) execFileSync('ip', ['link', 'del', `${tag}h${i}`], { stdio: 'ignore' });
    sh('ip', ['netns', 'del', NS]);
    state.cleanup();
  });

  it('wires a TAP per veth with tc mirred both ways, plans Kata-shaped interfaces, routes and neighbours, and unwires', async () => {
    // A TAP an earlier, killed attempt left: found and replaced, not doubled.
    ipn('tuntap', 'add', 'dev', 'tap1_kata', 'mode', 'tap');
    const net = await setupPodNetwork({ netns: NSPATH, stateDir: state.dir, log });
    expect(net.nics).toEqual([
      { tap: 'tap0_kata', mac: '02:4b:50:00:00:01', mtu: 1450 },
      { tap: 'tap1_kata', mac: '02:4b:50:00:00:02', mtu: 1400 },
    ]);
    expect(links()).toEqual(['eth0', 'lo', 'net1', 'tap0_kata', 'tap1_kata']);
    expect(ipn('link', 'show', 'tap1_kata')).toMatch(/mtu 1400/);
    for (const [dev, peer] of [
      ['eth0', 'tap0_kata'],
      ['tap0_kata', 'eth0'],
      ['net1', 'tap1_kata'],
      ['tap1_kata', 'net1'],
    ] as const) {
      expect(qdiscs(dev)).toMatch(/qdisc ingress ffff:/);
      expect(filters(dev)).toMatch(new RegExp(`mirred \\(Egress Redirect to device ${peer}\\)`));
    }
    expect(net.plan.endpoints.map((e) => e.iface)).toEqual([
      { device: 'eth0', name: 'eth0', IPAddresses: [{ family: 0, address: '10.223.5.5', mask: '24' }], mtu: 1450, hwAddr: '02:4b:50:00:00:01', devicePath: '', type: '', raw_flags: 0 },
      { device: 'net1', name: 'net1', IPAddresses: [{ family: 0, address: '10.224.6.5', mask: '24' }], mtu: 1400, hwAddr: '02:4b:50:00:00:02', devicePath: '', type: '', raw_flags: 0 },
    ]);
    // The kernel's connected routes (10.223.5.0/24, 10.224.6.0/24) stay out: the guest makes its own.
    expect(net.plan.routes.map((r) => `${r.dest || 'default'} via ${r.gateway} dev ${r.device}`).sort()).toEqual(['10.225.0.0/16 via 10.224.6.1 dev net1', 'default via 10.223.5.1 dev eth0']);
    expect(net.plan.neighbours).toEqual([
      { toIPAddress: { family: 0, address: '10.223.5.1', mask: '' }, device: 'eth0', lladdr: '02:4b:50:00:00:99', state: 0x80, flags: 0 },
      { toIPAddress: { family: 1, address: 'fd00:4b::1', mask: '' }, device: 'eth0', lladdr: '02:4b:50:00:00:97', state: 0x80, flags: 0 },
    ]);
    expect(fs.existsSync(path.join(state.dir, NETWORK_RECORD))).toBe(true);

    await net.teardown();
    await net.teardown();
    expect(links()).toEqual(['eth0', 'lo', 'net1']);
    for (const dev of ['eth0', 'net1']) expect(qdiscs(dev)).not.toMatch(/ingress/);
    expect(fs.existsSync(path.join(state.dir, NETWORK_RECORD))).toBe(false);
    // The namespace's own network is as CNI left it.
    expect(ipn('-4', 'route', 'show')).toMatch(/default via 10\.223\.5\.1 dev eth0/);
  });

  it('after a killed shim, the record alone lets `shim delete` unwire', async () => {
    await setupPodNetwork({ netns: NSPATH, stateDir: state.dir, log });
    expect(links()).toContain('tap0_kata');
    // The shim is gone: nothing but the record in its state dir is left to go by.
    const rec = await removeRecordedNetwork(state.dir);
    expect(rec?.pairs).toEqual([
      { link: 'eth0', tap: 'tap0_kata' },
      { link: 'net1', tap: 'tap1_kata' },
    ]);
    expect(links()).toEqual(['eth0', 'lo', 'net1']);
    for (const dev of ['eth0', 'net1']) expect(qdiscs(dev)).not.toMatch(/ingress/);
    expect(await removeRecordedNetwork(state.dir)).toBeUndefined();
  });

  it('a namespace path that is not a namespace gets a clear error and nothing is made', async () => {
    const file = path.join(state.dir, 'not-a-netns');
    fs.writeFileSync(file, '');
    await expect(setupPodNetwork({ netns: file, stateDir: state.dir, log })).rejects.toThrow(/not a namespace file/);
    await expect(setupPodNetwork({ netns: 'run/netns/x', stateDir: state.dir, log })).rejects.toThrow(/must be absolute/);
    await expect(setupPodNetwork({ netns: '/run/netns/../netns/x', stateDir: state.dir, log })).rejects.toThrow(/must be absolute/);
    await expect(setupPodNetwork({ netns: '/run/netns/katats-no-such-ns', stateDir: state.dir, log })).rejects.toThrow(/katats-no-such-ns/);
    expect(fs.existsSync(path.join(state.dir, NETWORK_RECORD))).toBe(false);
    expect(links()).toEqual(['eth0', 'lo', 'net1']);
  });

  it("CreateSandbox's dns: the lines of the resolv.conf the sandbox spec mounts, not a symlink's target", () => {
    const conf = path.join(state.dir, 'resolv.conf');
    fs.writeFileSync(conf, 'nameserver 10.222.0.53\n\nsearch katats.test\noptions ndots:3\n');
    const spec = (source: string) => ({ Mounts: [{ destination: '/etc/resolv.conf', source, type: 'bind', options: ['rbind'] }] }) as unknown as grpc.Spec;
    expect(sandboxDns(spec(conf), log)).toEqual(['nameserver 10.222.0.53', 'search katats.test', 'options ndots:3']);
    expect(sandboxDns({ Mounts: [] } as unknown as grpc.Spec, log)).toEqual([]);
    const link = path.join(state.dir, 'resolv-link');
    fs.symlinkSync('/etc/shadow', link);
    expect(sandboxDns(spec(link), log)).toEqual([]);
  });
});
