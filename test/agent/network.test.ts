// The agent's network requests against a real kernel: a local agent configures a network
// namespace this test makes (a veth whose peer stays outside), and what the kernel then holds is
// read back with iproute2. Twice: through the agent's keeper (rtnetlink, no process; the tools
// it is given fail, so nothing may go through them) and, with the keeper dead, through busybox's
// ip and the runner's neigh-add as before. Bad input (lo, the zero MAC, an unknown device) gets a
// clear error and leaves the namespace's network as it was; the kernel's refusal names the
// operation and the agent serves on.
import { execFileSync } from 'node:child_process';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import type { types } from '../../proto/gen/types.js';
import { Keeper } from '../../agent/keeper.js';
import { NET_KEEPER_TIMEOUT, parseKeeperLinks, netnsTools } from '../../agent/network.js';
import { sleep } from '../../sys/timeout.js';
import { containerSpec, readAll, runner, startAgent, type TestAgent } from './helpers.js';

const MAC = '02:4b:41:54:00:05';
const log = pino({ level: 'silent' });

/** A network namespace with a veth's inner end (MAC) in it, its outer end up on the host. */
function makeNetns(ns: string, outer: string, inner: string): void {
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
  execFileSync('ip', ['link', 'set', inner, 'netns', ns, 'address', MAC]);
  execFileSync('ip', ['link', 'set', outer, 'up']);
}

function removeNetns(ns: string, outer: string): void {
  execFileSync('ip', ['link', 'del', outer], { stdio: 'ignore' });
  execFileSync('ip', ['netns', 'del', ns]);
}

/** A keeper that has been started and has ended: what the agent has after its keeper crashed. */
async function deadKeeper(): Promise<Keeper> {
  const k = Keeper.start(runner(), log);
  k.stop();
  for (let i = 0; i < 200 && k.alive; i++) await sleep(25);
  if (k.alive) throw new Error('the keeper did not end');
  return k;
}

const iface = (over: Partial<types.Interface> = {}): types.Interface => ({
  device: 'eth0',
  name: 'eth0',
  IPAddresses: [{ family: 0, address: '10.251.7.5', mask: '24' }],
  mtu: 1400,
  hwAddr: MAC,
  devicePath: '',
  type: '',
  raw_flags: 0,
  ...over,
});
const route = (over: Partial<types.Route>): types.Route => ({ dest: '', gateway: '', device: 'eth0', source: '', scope: 0, family: 0, flags: 0, mtu: 0, ...over });

async function code(p: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await p;
  } catch (e) {
    return { code: (e as { code: number }).code, message: (e as Error).message };
  }
  throw new Error('the request succeeded');
}

for (const via of ['keeper', 'ip'] as const) {
describe(`agent network requests (a private network namespace, through ${via === 'keeper' ? "the keeper's rtnetlink" : 'busybox ip, the keeper dead'})`, () => {
  const tag = `${via[0]}${process.pid % 100000}`;
  const NS = `katats-agent-net-${via}-${process.pid}`;
  const OUTER = `kan${tag}o`;
  const INNER = `kan${tag}i`;
  const ip = (...args: string[]) => execFileSync('ip', ['-n', NS, ...args], { encoding: 'utf8' });
  const ipJ = <T>(...args: string[]) => JSON.parse(ip('-j', ...args)) as T[];
  // DAD may finish between two reads: a link-local address losing `tentative` is not a change.
  const snapshot = () => ({ addr: ip('-o', 'addr', 'show').replace(/ tentative/g, ''), route: ip('route', 'show'), neigh: ip('neigh', 'show', 'nud', 'permanent') });
  let t: TestAgent;
  let local: TestAgent;
  beforeAll(async () => {
    makeNetns(NS, OUTER, INNER);
    const tools = netnsTools(`/run/netns/${NS}`, runner());
    // A short wait for NICs that are not there (a hot-plugged one appears within it; an unknown MAC fails after it).
    t = await startAgent({
      // Through the keeper, tools that always fail: a change that went through them would fail the test.
      network: { ...tools, ...(via === 'keeper' ? { ip: ['false'], neigh: ['false'] } : {}), nicWaitMs: 3000 },
      netnsPath: `/run/netns/${NS}`,
      ...(via === 'ip' ? { keeper: await deadKeeper() } : {}),
    });
    local = await startAgent();
  });
  afterAll(async () => {
    await t?.close();
    await local?.close();
    removeNetns(NS, OUTER);
  });

  it('UpdateInterface finds the link by MAC, renames it, sets MTU and addresses, brings it up', async () => {
    const r = await t.svc.UpdateInterface({ interface: iface() });
    expect(r.name).toBe('eth0');
    const [l] = ipJ<{ ifname: string; mtu: number; operstate: string; flags: string[]; addr_info: { local: string; prefixlen: number; scope: string }[] }>('addr', 'show', 'dev', 'eth0');
    expect(l!.mtu).toBe(1400);
    expect(l!.flags).toContain('UP');
    expect(l!.addr_info.filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`)).toEqual(['10.251.7.5/24']);
    // Again with other addresses: the old one goes, the new ones come, nothing doubles.
    await t.svc.UpdateInterface({ interface: iface({ IPAddresses: [{ family: 0, address: '10.251.7.6', mask: '24' }, { family: 1, address: 'fd00:4b::6', mask: '64' }] }) });
    const [l2] = ipJ<{ addr_info: { local: string; scope: string }[] }>('addr', 'show', 'dev', 'eth0');
    expect(l2!.addr_info.filter((a) => a.scope === 'global').map((a) => a.local).sort()).toEqual(['10.251.7.6', 'fd00:4b::6']);
  });

  it('UpdateInterface waits for a NIC that appears after the request (hot-plugged into a template clone)', async () => {
    const outer = `kaw${tag}o`;
    const inner = `kaw${tag}i`;
    const late = '02:4b:41:54:00:0a';
    execFileSync('ip', ['link', 'add', outer, 'type', 'veth', 'peer', 'name', inner]);
    try {
      execFileSync('ip', ['link', 'set', inner, 'address', late]);
      const pending = t.svc.UpdateInterface({ interface: iface({ name: 'eth7', device: 'eth7', hwAddr: late, IPAddresses: [{ family: 0, address: '10.251.9.5', mask: '24' }] }) });
      await new Promise((r) => setTimeout(r, 300));
      execFileSync('ip', ['link', 'set', inner, 'netns', NS]);
      const r = await pending;
      expect(r.name).toBe('eth7');
      expect(ip('-o', 'addr', 'show', 'dev', 'eth7')).toContain('10.251.9.5/24');
    } finally {
      execFileSync('ip', ['link', 'del', outer], { stdio: 'ignore' });
    }
  });

  it('UpdateRoutes takes all routes in one call, gateway routes after the ones they go through, without "file exists"', async () => {
    const routes = [
      route({ dest: '', gateway: '10.251.7.1' }),
      route({ dest: '10.252.0.0/16', gateway: '10.251.7.1' }),
      // The connected route the kernel made from the address: sent anyway, it must not fail.
      route({ dest: '10.251.7.0/24', scope: 253, source: '10.251.7.6' }),
      route({ dest: '10.251.9.1/32', scope: 253 }),
      route({ dest: '10.253.0.0/16', gateway: '10.251.9.1' }),
    ];
    const r = await t.svc.UpdateRoutes({ routes: { Routes: routes } });
    expect(r.Routes).toHaveLength(5);
    const shown = ipJ<{ dst: string; gateway?: string; dev: string }>('-4', 'route', 'show');
    expect(shown.map((x) => `${x.dst}${x.gateway ? ` via ${x.gateway}` : ''}`).sort()).toEqual(['10.251.7.0/24', '10.251.9.1', '10.252.0.0/16 via 10.251.7.1', '10.253.0.0/16 via 10.251.9.1', 'default via 10.251.7.1']);
    // The same call twice is the same network.
    await t.svc.UpdateRoutes({ routes: { Routes: routes } });
    expect(ipJ('-4', 'route', 'show')).toHaveLength(5);
  });

  it('AddARPNeighbors adds permanent neighbours, IPv4 and IPv6 (as Kata\'s ARPNeighbor carries both)', async () => {
    const neighbour = (family: types.IPFamily, address: string, lladdr: string): types.ARPNeighbor => ({ toIPAddress: { family, address, mask: '' }, device: 'eth0', lladdr, state: 0x80, flags: 0 });
    const list = [neighbour(0, '10.251.7.1', '02:4b:41:54:00:01'), neighbour(1, 'fd00:4b::1', '02:4b:41:54:00:02'), neighbour(1, 'fe80::4b:1', '02:4b:41:54:00:03')];
    await t.svc.AddARPNeighbors({ neighbors: { ARPNeighbors: list } });
    const n = () => ipJ<{ dst: string; lladdr: string; state: string[] }>('neigh', 'show', 'dev', 'eth0', 'nud', 'permanent').map((x) => `${x.dst} ${x.lladdr} ${x.state.join()}`).sort();
    expect(n()).toEqual(['10.251.7.1 02:4b:41:54:00:01 PERMANENT', 'fd00:4b::1 02:4b:41:54:00:02 PERMANENT', 'fe80::4b:1 02:4b:41:54:00:03 PERMANENT']);
    // Again, with a new MAC for one: replaced, not doubled, not an error.
    await t.svc.AddARPNeighbors({ neighbors: { ARPNeighbors: [neighbour(1, 'fd00:4b::1', '02:4b:41:54:00:09')] } });
    expect(n()).toContain('fd00:4b::1 02:4b:41:54:00:09 PERMANENT');
    expect(n()).toHaveLength(3);
  });

  it('bad input gets a clear error and the network stays as it was', async () => {
    const before = snapshot();
    // Thunks: each request is sent after the one before has been answered.
    const cases: [() => Promise<unknown>, number, RegExp][] = [
      [() => t.svc.UpdateInterface({ interface: iface({ name: 'lo', device: 'lo' }) }), Code.InvalidArgument, /loopback/],
      [() => t.svc.UpdateInterface({ interface: iface({ hwAddr: '00:00:00:00:00:00' }) }), Code.InvalidArgument, /zero MAC/],
      [() => t.svc.UpdateInterface({ interface: iface({ hwAddr: '02:00:00:00:00:99' }) }), Code.NotFound, /MAC 02:00:00:00:00:99, waited 3\.0 s/],
      [() => t.svc.UpdateInterface({ interface: iface({ IPAddresses: [{ family: 0, address: '10.251.7.300', mask: '24' }] }) }), Code.InvalidArgument, /not an IP address/],
      [() => t.svc.UpdateInterface({ interface: iface({ raw_flags: 0x1 }) }), Code.InvalidArgument, /only NOARP/],
      [() => t.svc.UpdateInterface({ interface: null }), Code.InvalidArgument, /no interface/],
      // One bad route fails the whole call before any route changes.
      [() => t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '10.254.0.0/16', gateway: '10.251.7.1' }), route({ dest: '10.255.0.0/16', device: 'nosuch0' })] } }), Code.NotFound, /device nosuch0/],
      [() => t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '127.0.0.0/8', device: 'lo' })] } }), Code.InvalidArgument, /loopback/],
      [() => t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '10.254.0.0/99' })] } }), Code.InvalidArgument, /prefix length/],
      [() => t.svc.AddARPNeighbors({ neighbors: { ARPNeighbors: [{ toIPAddress: { family: 0, address: '10.251.7.9', mask: '' }, device: 'eth0', lladdr: '00:00:00:00:00:00', state: 0x80, flags: 0 }] } }), Code.InvalidArgument, /zero MAC/],
      [() => t.svc.AddARPNeighbors({ neighbors: { ARPNeighbors: [{ toIPAddress: { family: 0, address: '10.251.7.9', mask: '' }, device: 'nosuch0', lladdr: '02:00:00:00:00:09', state: 0x80, flags: 0 }] } }), Code.NotFound, /device nosuch0/],
      [() => t.svc.AddARPNeighbors({ neighbors: { ARPNeighbors: [{ toIPAddress: { family: 0, address: 'fd00:4b::9', mask: '' }, device: 'eth0', lladdr: '02:00:00:00:00:09', state: 0x80, flags: 0 }] } }), Code.InvalidArgument, /does not match its family/],
    ];
    for (const [p, c, m] of cases) {
      const e = await code(p());
      expect(e.code, e.message).toBe(c);
      expect(e.message).toMatch(m);
    }
    expect(snapshot()).toEqual(before);
    // And the agent keeps serving.
    await t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '10.251.9.1/32', scope: 253 })] } });
  });

  it("the kernel's refusal names the operation and the kernel's reason, and the next request is served", async () => {
    const e = await code(t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '10.240.0.0/16', gateway: '10.99.0.1' })] } }));
    expect(e.code, e.message).toBe(Code.Internal);
    expect(e.message).toMatch(/route replace 10\.240\.0\.0\/16 via 10\.99\.0\.1 dev eth0: .*Network is unreachable/);
    expect(ip('route', 'show')).not.toContain('10.240.0.0');
    await t.svc.UpdateRoutes({ routes: { Routes: [route({ dest: '10.240.0.0/16', gateway: '10.251.7.1' })] } });
    expect(ip('route', 'show')).toContain('10.240.0.0/16 via 10.251.7.1 dev eth0');
  });

  it('containers join the pod network, and its net.* sysctls (containerd 2.x sets one) apply there', async () => {
    const spec = containerSpec(t.rootfs, ['sh', '-c', 'cat /proc/sys/net/ipv4/ip_unprivileged_port_start; ip -o addr show eth0']);
    spec.Linux!.Sysctl = { 'net.ipv4.ip_unprivileged_port_start': '0' };
    await t.svc.CreateContainer({ container_id: 'netsysctl', OCI: spec });
    await t.svc.StartContainer({ container_id: 'netsysctl' });
    const out = (await readAll(t, 'netsysctl')).toString();
    expect((await t.svc.WaitProcess({ container_id: 'netsysctl', exec_id: '' })).status, out).toBe(0);
    await t.svc.RemoveContainer({ container_id: 'netsysctl' });
    expect(out).toMatch(/^0\n/);
    expect(out).toContain('inet 10.251.7.6/24');
    expect(execFileSync('ip', ['netns', 'exec', NS, 'cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start'], { encoding: 'utf8' }).trim()).toBe('0');
  });

  it("UpdateInterface takes a name from a NIC the host has not named yet (the guest's order is not the pod's), never from one it has", async () => {
    // As the guest's kernel named them: net1 is the NIC the pod calls net2, and the other way round.
    const [C, D] = ['02:4b:41:54:00:0c', '02:4b:41:54:00:0d'];
    for (const [i, name, mac] of [[1, 'net1', C], [2, 'net2', D]] as const) {
      execFileSync('ip', ['link', 'add', `${OUTER}${i}`, 'type', 'veth', 'peer', 'name', `${INNER}${i}`]);
      execFileSync('ip', ['link', 'set', `${INNER}${i}`, 'netns', NS, 'address', mac, 'name', name]);
    }
    try {
      await t.svc.UpdateInterface({ interface: iface({ name: 'net1', device: 'net1', hwAddr: D, IPAddresses: [{ family: 0, address: '10.251.11.5', mask: '24' }] }) });
      await t.svc.UpdateInterface({ interface: iface({ name: 'net2', device: 'net2', hwAddr: C, IPAddresses: [{ family: 0, address: '10.251.12.5', mask: '24' }] }) });
      const byName = Object.fromEntries(ipJ<{ ifname: string; address: string; addr_info: { local: string; scope: string }[] }>('addr', 'show').map((l) => [l.ifname, { mac: l.address, addrs: l.addr_info.filter((a) => a.scope === 'global').map((a) => a.local) }]));
      expect(byName.net1).toEqual({ mac: D, addrs: ['10.251.11.5'] });
      expect(byName.net2).toEqual({ mac: C, addrs: ['10.251.12.5'] });
      // eth0 is the host's by now: asking for its name for another NIC is refused, and nothing changes.
      const before = snapshot();
      const e = await code(t.svc.UpdateInterface({ interface: iface({ name: 'eth0', device: 'eth0', hwAddr: C }) }));
      expect(e.code, e.message).toBe(Code.InvalidArgument);
      expect(e.message).toMatch(/already has that name/);
      expect(snapshot()).toEqual(before);
    } finally {
      for (const i of [1, 2]) execFileSync('ip', ['link', 'del', `${OUTER}${i}`], { stdio: 'ignore' });
    }
  });

  it('local mode without a namespace refuses: the host network is never configured', async () => {
    const e = await code(local.svc.UpdateInterface({ interface: iface() }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/local mode/);
  });
});
}

describe("the keeper's rtnetlink requests (a keeper started as the agent starts it, in a namespace the test makes)", () => {
  const NS = `katats-keeper-net-${process.pid}`;
  const OUTER = `kkn${process.pid % 100000}o`;
  const INNER = `kkn${process.pid % 100000}i`;
  const ip = (...args: string[]) => execFileSync('ip', ['-n', NS, ...args], { encoding: 'utf8' });
  const ipJ = <T>(...args: string[]) => JSON.parse(ip('-j', ...args)) as T[];
  let k: Keeper;
  const net = (...words: string[]) => k.net(`/run/netns/${NS}`, [words], 10_000, NET_KEEPER_TIMEOUT);
  beforeAll(() => {
    makeNetns(NS, OUTER, INNER);
    k = Keeper.start(runner(), log);
  });
  afterAll(() => {
    k?.stop();
    removeNetns(NS, OUTER);
  });

  it('lists links and addresses and makes the changes `ip` made, which the kernel then holds', async () => {
    const links = parseKeeperLinks(await net('links'));
    expect(links.find((l) => l.mac === MAC)).toMatchObject({ name: INNER, mtu: 1500 });
    expect(links.find((l) => l.name === 'lo')!.flags).toContain('LOOPBACK');
    await net('link', INNER, 'down');
    await net('link', INNER, 'name', 'eth0');
    await net('link', 'eth0', 'mtu', '1280');
    await net('link', 'eth0', 'arp', 'off');
    await net('addr', 'add', '10.250.3.5/24', 'eth0');
    await net('addr', 'add', 'fd00:4c::5/64', 'eth0');
    await net('link', 'eth0', 'up');
    await net('route', '4', '10.250.8.0/24', '10.250.3.1', '10.250.3.5', '-', '1400', '0', 'eth0');
    await net('route', '4', '10.250.9.1', '-', '-', '253', '0', '0', 'eth0');
    await net('route', '6', 'default', 'fd00:4c::1', '-', '-', '0', '0', 'eth0');
    await net('neigh', 'eth0', '10.250.3.1', '02:4b:41:54:00:01');
    const [l] = ipJ<{ ifname: string; mtu: number; flags: string[]; addr_info: { local: string; prefixlen: number; scope: string }[] }>('addr', 'show', 'dev', 'eth0');
    expect(l!.mtu).toBe(1280);
    expect(l!.flags).toEqual(expect.arrayContaining(['UP', 'NOARP']));
    expect(l!.addr_info.filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`).sort()).toEqual(['10.250.3.5/24', 'fd00:4c::5/64']);
    expect(ip('-4', 'route', 'show')).toContain('10.250.8.0/24 via 10.250.3.1 dev eth0 src 10.250.3.5 mtu 1400');
    expect(ip('-4', 'route', 'show')).toContain('10.250.9.1 dev eth0 scope link');
    expect(ip('-6', 'route', 'show')).toContain('default via fd00:4c::1 dev eth0');
    expect(ip('neigh', 'show', 'dev', 'eth0', 'nud', 'permanent')).toContain('10.250.3.1 lladdr 02:4b:41:54:00:01 PERMANENT');
    expect((await net('addrs', 'eth0')).split(' ')).toEqual(expect.arrayContaining(['10.250.3.5/24/0', 'fd00:4c::5/64/0']));
    await net('link', 'eth0', 'arp', 'on');
    await net('addr', 'del', '10.250.3.5/24', 'eth0');
    expect(ip('-o', 'addr', 'show', 'dev', 'eth0')).not.toContain('10.250.3.5');
    expect(parseKeeperLinks(await net('links')).find((x) => x.name === 'eth0')!.flags).not.toContain('NOARP');
  });

  it('refuses what the kernel refuses or it cannot carry, naming the operation, and serves the next request', async () => {
    // Thunks: each request is sent after the one before has been answered.
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => net('addr', 'add', '10.250.4.5/24', 'nosuch0'), /^addr add 10\.250\.4\.5\/24 dev nosuch0: No such device$/],
      [() => net('route', '4', '10.250.10.0/24', '10.99.0.1', '-', '-', '0', '0', 'eth0'), /^route replace 10\.250\.10\.0\/24 via 10\.99\.0\.1 dev eth0: Network is unreachable/],
      [() => net('addr', 'del', '10.250.77.7/24', 'eth0'), /^addr del 10\.250\.77\.7\/24 dev eth0: Cannot assign requested address/],
      [() => net('link', 'eth0', 'mtu', '70000'), /^link set dev eth0 mtu 70000: Invalid argument/],
      [() => net('route', '4', '10.250.11.0/24', 'fd00:4c::1', '-', '-', '0', '0', 'eth0'), /gateway's family is not the route's/],
      [() => net('bogus'), /unknown operation bogus/],
      [() => net('addr', 'add', '10.250.4.5/24 dev eth0'), /an operation the keeper cannot carry/],
      [() => k.net(`/run/netns/${NS}-missing`, [['links']], 10_000, NET_KEEPER_TIMEOUT), /network namespace .*-missing: No such file or directory/],
    ];
    for (const [p, m] of cases) await expect(p()).rejects.toThrow(m);
    // Several in one request: made in order up to the first the kernel refuses, which is the error; none after it.
    await expect(
      k.net(`/run/netns/${NS}`, [['addr', 'add', '10.250.5.5/24', 'eth0'], ['route', '4', '10.250.12.0/24', '10.99.0.1', '-', '-', '0', '0', 'eth0'], ['addr', 'add', '10.250.6.5/24', 'eth0']], 10_000, NET_KEEPER_TIMEOUT),
    ).rejects.toThrow(/^route replace 10\.250\.12\.0\/24 via 10\.99\.0\.1 dev eth0: Network is unreachable/);
    expect(ip('-o', 'addr', 'show', 'dev', 'eth0')).toContain('10.250.5.5/24');
    expect(ip('-o', 'addr', 'show', 'dev', 'eth0')).not.toContain('10.250.6.5');
    // More than one line holds: split over requests, every listing's answer kept.
    const many = Array.from({ length: 400 }, (_, i) => ['route', '4', `10.${200 + (i >> 8)}.${i & 255}.0/24`, '10.250.5.1', '-', '-', '0', '0', 'eth0']);
    expect(await k.net(`/run/netns/${NS}`, [['addrs', 'eth0'], ...many, ['addrs', 'eth0']], 10_000, NET_KEEPER_TIMEOUT)).toMatch(/^10\.250\.5\.5\/24\/0 .*10\.250\.5\.5\/24\/0/);
    expect(ip('-4', 'route', 'show').split('\n').filter((l) => l.includes('via 10.250.5.1'))).toHaveLength(400);
    expect(k.alive).toBe(true);
    expect(parseKeeperLinks(await net('links')).map((l) => l.name)).toContain('eth0');
    // Back in its own namespace after each request: there it sees the host's end of the veth.
    expect(parseKeeperLinks(await k.net(undefined, [['links']], 10_000, NET_KEEPER_TIMEOUT)).map((l) => l.name)).toContain(OUTER);
  });
});
