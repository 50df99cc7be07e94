// The guest's side of the pod network: UpdateInterface, UpdateRoutes, AddARPNeighbors (Kata's
// messages). Each change reaches the kernel one of two ways (NetOps): the keeper's rtnetlink
// requests while a keeper is alive (agent/keeper.ts, katats-runner's "net": no process at all),
// else a tool per change, busybox's `ip` and the runner's `neigh-add` (node has no AF_NETLINK
// socket, and busybox has no `ip neigh add`). A pod's ~15 changes cost ~15 node spawns under TCG,
// most of a second of its start, which is why the keeper does them where it can; the tools stay
// for a keeper that died and for comparing. Every request is checked whole before anything
// changes, so bad input gets a clear error and the sandbox keeps its network.
import fs from 'node:fs';
import net from 'node:net';
import type { types } from '../proto/gen/types.js';
import { runTool } from '../sys/exec.js';
import { sleep } from '../sys/timeout.js';
import { TtrpcError, invalid, internal, notFound, precondition } from './errors.js';
import type { Keeper } from './keeper.js';
import type { Logger } from './log.js';

/** How long one ip call or one keeper net request may take. */
export const NET_TOOL_TIMEOUT_MS = 15_000;
export const NET_TOOL_TIMEOUT = 'KATATS_AGENT_NET_TOOL_TIMEOUT';
export const NET_KEEPER_TIMEOUT = 'KATATS_AGENT_NET_KEEPER_TIMEOUT';

/** How the agent reaches its network: the commands (argv prefixes) for ip and for adding a neighbour (DEV ADDRESS LLADDR). */
export interface NetworkTools {
  ip: string[];
  neigh: string[];
  /** the network namespace the keeper's rtnetlink requests go to (local mode's --netns); unset: the keeper's own (the guest's) */
  netns?: string;
  /** the network namespace's /sys/class/net, where a NIC's appearance is seen without a process */
  sysClassNet?: string;
  /** how long UpdateInterface waits for a NIC that is not there yet; default NIC_WAIT_TIMEOUT_MS */
  nicWaitMs?: number;
}

/** The guest's own tools: busybox's ip on PATH, the runner beside the agent. */
export function guestNetworkTools(runner: string): NetworkTools {
  return { ip: ['ip'], neigh: [runner, 'neigh-add'], sysClassNet: '/sys/class/net' };
}

/** How long UpdateInterface waits for a hot-plugged NIC (a template clone's) to appear. */
export const NIC_WAIT_TIMEOUT_MS = 20_000;

/** Local mode with --netns: the same tools, in a network namespace a test made. */
export function netnsTools(netns: string, runner: string): NetworkTools {
  const enter = ['nsenter', `--net=${netns}`, '--'];
  return { ip: [...enter, 'busybox', 'ip'], neigh: [...enter, runner, 'neigh-add'], netns };
}

const IFF_NOARP = 0x80;
const RTNH_F_ONLINK = 0x4;
const NUD_PERMANENT = 0x80;
/** A link name the kernel accepts and a tool can be handed as one argument. */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const SCOPE_NAMES: Record<number, string> = { 0: 'global', 200: 'site', 253: 'link', 254: 'host' };
/** Bounds on one request (a pod has a handful of each). */
const MAX_ADDRESSES = 64;
const MAX_ROUTES = 1024;
const MAX_NEIGHBOURS = 1024;

export interface GuestLink {
  index: number;
  name: string;
  mac: string;
  mtu: number;
  flags: string[];
}

/** `ip -o link show`, read: the shape busybox and iproute2 share ("2: eth0@if5: <UP,...> mtu 1500 ... link/ether MAC ..."). */
export function parseLinks(out: string): GuestLink[] {
  const links: GuestLink[] = [];
  for (const line of out.split('\n')) {
    const m = /^(\d+):\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>.*?\bmtu (\d+).*?link\/\S+\s+([0-9a-f:]+)/i.exec(line);
    if (m) links.push({ index: Number(m[1]), name: m[2]!, flags: m[3]!.split(',').filter(Boolean), mtu: Number(m[4]), mac: m[5]!.toLowerCase() });
  }
  return links;
}

/** `ip -o addr show dev X`: its addresses as ADDR/PREFIX with their scope. */
export function parseAddresses(out: string): { cidr: string; scope: string }[] {
  const r: { cidr: string; scope: string }[] = [];
  for (const line of out.split('\n')) {
    const m = /\binet6?\s+(\S+)(?:\s+peer\s+\S+)?(?:\s+brd\s+\S+)?\s+scope\s+(\S+)/.exec(line);
    if (m) r.push({ cidr: m[1]!, scope: m[2]! });
  }
  return r;
}

/** A link change, as `ip link set dev DEV ...` words. */
type LinkChange = ['up'] | ['down'] | ['name', string] | ['mtu', number] | ['arp', 'on' | 'off'];

/** One route, checked: created or replaced in the main table. */
interface RouteChange {
  v: 4 | 6;
  /** "default" or ADDRESS[/PREFIX] */
  dest: string;
  gateway?: string;
  source?: string;
  /** rtnetlink's scope number; unset: link without a gateway, else global */
  scope?: number;
  mtu?: number;
  onlink: boolean;
  dev: string;
}

/** One change, the way `ip` names it. */
type NetChange =
  | { kind: 'link'; dev: string; change: LinkChange }
  | { kind: 'addr'; op: 'add' | 'del'; cidr: string; dev: string }
  | { kind: 'route'; route: RouteChange }
  | { kind: 'neigh'; dev: string; address: string; lladdr: string };

/** Listings, and changes made in order until the first that fails (whose error is the answer). */
interface NetOps {
  links(): Promise<GuestLink[]>;
  addresses(dev: string): Promise<{ cidr: string; scope: string }[]>;
  apply(changes: NetChange[]): Promise<void>;
}

/** A process per change: busybox's ip (local mode: nsenter and the host's busybox) and the runner's neigh-add. */
class ToolNet implements NetOps {
  constructor(private readonly tools: NetworkTools) {}

  private async run(cmd: string[], args: string[]): Promise<string> {
    const r = await runTool(cmd[0]!, [...cmd.slice(1), ...args], { timeoutMs: NET_TOOL_TIMEOUT_MS, timeoutCode: NET_TOOL_TIMEOUT, maxOutputBytes: 1 << 20 });
    if (r.code !== 0) throw internal(`${cmd.at(-1)!} ${args.join(' ')}: ${(r.stderr || r.stdout).trim() || `exit ${r.code ?? r.signal}`}`);
    return r.stdout;
  }

  async links(): Promise<GuestLink[]> {
    return parseLinks(await this.run(this.tools.ip, ['-o', 'link', 'show']));
  }

  async addresses(dev: string): Promise<{ cidr: string; scope: string }[]> {
    return parseAddresses(await this.run(this.tools.ip, ['-o', 'addr', 'show', 'dev', dev]));
  }

  async apply(changes: NetChange[]): Promise<void> {
    for (const c of changes) {
      if (c.kind === 'link') await this.run(this.tools.ip, ['link', 'set', 'dev', c.dev, ...c.change.map(String)]);
      else if (c.kind === 'addr') await this.run(this.tools.ip, ['addr', c.op, c.cidr, 'dev', c.dev]);
      else if (c.kind === 'route') await this.route(c.route);
      else await this.run(this.tools.neigh, [c.dev, c.address, c.lladdr]);
    }
  }

  private async route(r: RouteChange): Promise<void> {
    const args = ['route', 'replace', r.dest];
    if (r.gateway) args.push('via', r.gateway);
    args.push('dev', r.dev);
    if (r.source) args.push('src', r.source);
    if (r.scope !== undefined) args.push('scope', SCOPE_NAMES[r.scope]!);
    if (r.mtu) args.push('mtu', String(r.mtu));
    if (r.onlink) args.push('onlink');
    await this.run(this.tools.ip, r.v === 6 ? ['-6', ...args] : args);
  }
}

/** Link flags by the names `ip` shows (only LOOPBACK decides anything here). */
const LINK_FLAGS: [number, string][] = [
  [0x1, 'UP'],
  [0x2, 'BROADCAST'],
  [0x8, 'LOOPBACK'],
  [0x10, 'POINTOPOINT'],
  [0x80, 'NOARP'],
  [0x1000, 'MULTICAST'],
  [0x10000, 'LOWER_UP'],
];

/**
 * The keeper's rtnetlink requests (katats-runner's "net"): no process per change, and a step's
 * changes in one request (each request is a round trip through node, tens of ms under TCG).
 */
class KeeperNet implements NetOps {
  constructor(
    private readonly keeper: Keeper,
    private readonly netns: string | undefined,
  ) {}

  private run(ops: string[][]): Promise<string> {
    return this.keeper.net(this.netns, ops, NET_TOOL_TIMEOUT_MS, NET_KEEPER_TIMEOUT);
  }

  async links(): Promise<GuestLink[]> {
    return parseKeeperLinks(await this.run([['links']]));
  }

  async addresses(dev: string): Promise<{ cidr: string; scope: string }[]> {
    return (await this.run([['addrs', dev]])).split(' ').filter(Boolean).map((item) => {
      const cut = item.lastIndexOf('/');
      const scope = Number(item.slice(cut + 1));
      return { cidr: item.slice(0, cut), scope: SCOPE_NAMES[scope] ?? String(scope) };
    });
  }

  async apply(changes: NetChange[]): Promise<void> {
    if (!changes.length) return;
    await this.run(
      changes.map((c) => {
        if (c.kind === 'link') return ['link', c.dev, ...c.change.map(String)];
        if (c.kind === 'addr') return ['addr', c.op, c.cidr, c.dev];
        if (c.kind === 'neigh') return ['neigh', c.dev, c.address, c.lladdr];
        const r = c.route;
        return ['route', String(r.v), r.dest, r.gateway || '-', r.source || '-', r.scope === undefined ? '-' : String(r.scope), String(r.mtu ?? 0), r.onlink ? '1' : '0', r.dev];
      }),
    );
  }
}

/** The keeper's link listing: " INDEX/NAME/LLADDR/MTU/FLAGS" per link (flags in hex). */
export function parseKeeperLinks(out: string): GuestLink[] {
  return out
    .split(' ')
    .filter(Boolean)
    .map((item) => {
      const [index, name, mac, mtu, flags] = item.split('/');
      const bits = parseInt(flags ?? '0', 16);
      return { index: Number(index), name: name!, mac: mac === '-' ? '' : mac!, mtu: Number(mtu), flags: LINK_FLAGS.filter(([b]) => bits & b).map(([, n]) => n) };
    });
}

const isZeroMac = (m: string) => /^(00:){5}00$/.test(m);

function checkMac(mac: string, what: string): string {
  const m = mac.toLowerCase();
  if (!MAC.test(m)) throw invalid(`${what}: ${JSON.stringify(mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)`);
  if (isZeroMac(m)) throw invalid(`${what}: the zero MAC names no interface`);
  return m;
}

function checkName(name: string, what: string): string {
  if (!IFNAME.test(name)) throw invalid(`${what}: ${JSON.stringify(name)} is not an interface name`);
  if (name === 'lo') throw invalid(`${what}: the loopback interface is the guest's own and is not configured by the host`);
  return name;
}

function checkIp(a: string, family: types.IPFamily | undefined, what: string): 4 | 6 {
  const v = net.isIP(a);
  if (!v) throw invalid(`${what}: ${JSON.stringify(a)} is not an IP address`);
  if (family !== undefined && (family === 1) !== (v === 6)) throw invalid(`${what}: ${a} does not match its family (${family === 1 ? 'v6' : 'v4'})`);
  return v as 4 | 6;
}

function checkPrefix(mask: string, v: 4 | 6, what: string): number {
  const n = Number(mask);
  if (!/^\d{1,3}$/.test(mask) || n > (v === 4 ? 32 : 128)) throw invalid(`${what}: prefix length ${JSON.stringify(mask)} out of range for IPv${v}`);
  return n;
}

/** "10.0.0.0/24" or "" (default) as a route destination for `ip route`. */
function checkDest(dest: string, what: string): { arg: string; v?: 4 | 6 } {
  if (dest === '' || dest === 'default') return { arg: 'default' };
  const [addr, prefix, extra] = dest.split('/');
  if (extra !== undefined) throw invalid(`${what}: destination ${JSON.stringify(dest)} is not ADDRESS[/PREFIX]`);
  const v = checkIp(addr!, undefined, what);
  if (prefix !== undefined) checkPrefix(prefix, v, what);
  return { arg: dest, v };
}

export class GuestNetwork {
  /** MACs of the links UpdateInterface has named: their names are the host's and are not taken away. */
  private readonly configured = new Set<string>();

  private readonly byTools: ToolNet;
  private readonly byKeeper: KeeperNet | undefined;

  constructor(
    private readonly tools: NetworkTools,
    private readonly keeper?: Keeper,
    private readonly log?: Logger,
  ) {
    this.byTools = new ToolNet(tools);
    this.byKeeper = keeper && new KeeperNet(keeper, tools.netns);
  }

  /** Which way the next change goes: the keeper while it lives. */
  get via(): 'keeper' | 'tools' {
    return this.byKeeper && this.keeper?.alive ? 'keeper' : 'tools';
  }

  /**
   * One step (a listing, or changes in order) through the keeper while it lives, else through the
   * tools. A keeper that dies under the step leaves it to the tools, which do it whole again (a
   * change the keeper had made may then be refused as existing: an error, not a wrong network);
   * the kernel's refusal through a live one is the answer (the tools would be refused alike).
   */
  private async op<T>(f: (o: NetOps) => Promise<T>): Promise<T> {
    if (this.byKeeper && this.keeper?.alive) {
      try {
        return await f(this.byKeeper);
      } catch (e) {
        // The keeper's refusal is a plain Error: an internal error naming the operation; a timeout keeps its code.
        if (this.keeper.alive) throw e instanceof Error && !(e instanceof TtrpcError) && !('code' in e) ? internal(e.message) : e;
        this.log?.warn({ err: e }, 'the keeper died under a network change: using ip');
      }
    }
    return f(this.byTools);
  }

  links(): Promise<GuestLink[]> {
    return this.op((o) => o.links());
  }

  /** UpdateInterface: the link with the request's MAC gets its name, MTU, ARP flag and addresses, and goes up. */
  async updateInterface(iface: types.Interface | null | undefined): Promise<types.Interface> {
    if (!iface) throw invalid('UpdateInterface: no interface given');
    const mac = checkMac(iface.hwAddr, 'interface hwAddr');
    const name = checkName(iface.name || iface.device, 'interface name');
    if (iface.mtu && (iface.mtu < 68 || iface.mtu > 65535)) throw invalid(`interface ${name}: MTU ${iface.mtu} out of range (68..65535)`);
    if (iface.raw_flags & ~IFF_NOARP) throw invalid(`interface ${name}: raw_flags 0x${iface.raw_flags.toString(16)}: only NOARP (0x80) may be set`);
    if (iface.IPAddresses.length > MAX_ADDRESSES) throw invalid(`interface ${name}: ${iface.IPAddresses.length} addresses (at most ${MAX_ADDRESSES})`);
    const wanted = iface.IPAddresses.map((a, i) => {
      const v = checkIp(a.address, a.family, `interface ${name} address ${i}`);
      return `${a.address}/${checkPrefix(a.mask || (v === 4 ? '32' : '128'), v, `interface ${name} address ${a.address}`)}`;
    });
    let links = await this.links();
    if (!links.some((l) => l.mac === mac)) {
      // A hot-plugged NIC's probe: part of UpdateInterface's time that no change of ours costs.
      const t0 = performance.now();
      const came = await this.waitForMac(mac);
      this.log?.info({ mac, came, ms: Math.round(performance.now() - t0) }, 'waited for the NIC');
      if (came) links = await this.links();
    }
    const link = links.find((l) => l.mac === mac);
    if (!link) throw notFound(`interface with MAC ${mac}, waited ${((this.tools.nicWaitMs ?? NIC_WAIT_TIMEOUT_MS) / 1000).toFixed(1)} s for it (the guest has ${links.map((l) => `${l.name} ${l.mac}`).join(', ')})`);
    if (link.flags.includes('LOOPBACK') || link.name === 'lo') throw invalid(`interface ${mac}: the loopback interface is not configured by the host`);
    const holder = name !== link.name ? links.find((l) => l.name === name) : undefined;
    const linkChanges: NetChange[] = [];
    if (holder && (holder.flags.includes('LOOPBACK') || this.configured.has(holder.mac))) {
      throw invalid(`interface ${link.name}: cannot rename to ${name}: interface ${holder.mac} already has that name`);
    }
    if (holder) {
      // The guest's kernel named its NICs in PCI order, which need not be the pod's order (CNI may
      // add a pod's networks in parallel): the NIC holding the name is one the host has not named
      // yet, so it steps aside under a name of its own until its UpdateInterface comes.
      const aside = `ktaside${holder.index}`;
      linkChanges.push({ kind: 'link', dev: holder.name, change: ['down'] }, { kind: 'link', dev: holder.name, change: ['name', aside] });
    }
    // Down while renamed (the kernel refuses to rename a running link), then set and up.
    linkChanges.push({ kind: 'link', dev: link.name, change: ['down'] });
    if (name !== link.name) linkChanges.push({ kind: 'link', dev: link.name, change: ['name', name] });
    if (iface.mtu) linkChanges.push({ kind: 'link', dev: name, change: ['mtu', iface.mtu] });
    linkChanges.push({ kind: 'link', dev: name, change: ['arp', iface.raw_flags & IFF_NOARP ? 'off' : 'on'] });
    await this.op((o) => o.apply(linkChanges));
    const have = (await this.op((o) => o.addresses(name))).filter((a) => a.scope === 'global');
    const addrChanges: NetChange[] = [
      ...have.filter((a) => !wanted.includes(a.cidr)).map((a): NetChange => ({ kind: 'addr', op: 'del', cidr: a.cidr, dev: name })),
      ...wanted.filter((a) => !have.some((h) => h.cidr === a)).map((a): NetChange => ({ kind: 'addr', op: 'add', cidr: a, dev: name })),
      { kind: 'link', dev: name, change: ['up'] },
    ];
    await this.op((o) => o.apply(addrChanges));
    this.configured.add(mac);
    return { ...iface, name, device: name, hwAddr: mac };
  }

  /**
   * A NIC the host hot-plugged (into a VM cloned from a template) appears when the guest's PCI
   * hotplug and virtio-net probe are done: waits for its MAC, bounded. False if it never came.
   */
  private async waitForMac(mac: string): Promise<boolean> {
    const deadline = Date.now() + (this.tools.nicWaitMs ?? NIC_WAIT_TIMEOUT_MS);
    const dir = this.tools.sysClassNet;
    const present = async (): Promise<boolean> => {
      if (!dir) return (await this.links()).some((l) => l.mac === mac);
      for (const n of await fs.promises.readdir(dir).catch(() => [] as string[])) {
        const addr = await fs.promises.readFile(`${dir}/${n}/address`, 'utf8').catch(() => '');
        if (addr.trim().toLowerCase() === mac) return true;
      }
      return false;
    };
    while (Date.now() < deadline) {
      if (await present()) return true;
      await sleep(dir ? 50 : 250);
    }
    return false;
  }

  /**
   * UpdateRoutes: every route of the request, those without a gateway first (a gateway must be
   * reachable through one of them), with `replace` so a route the kernel already made from an
   * address is not a "file exists" error.
   */
  async updateRoutes(routes: types.Route[]): Promise<types.Route[]> {
    if (routes.length > MAX_ROUTES) throw invalid(`UpdateRoutes: ${routes.length} routes (at most ${MAX_ROUTES})`);
    const names = new Set((await this.links()).map((l) => l.name));
    const cmds = routes.map((r, i): RouteChange => {
      const what = `route ${i} (${r.dest || 'default'})`;
      const dev = checkName(r.device, `${what} device`);
      if (!names.has(dev)) throw notFound(`${what}: device ${dev}`);
      const dest = checkDest(r.dest, what);
      let v = dest.v ?? (r.family === 1 ? 6 : 4);
      if (r.gateway) v = checkIp(r.gateway, r.family, `${what} gateway`);
      if (r.source) checkIp(r.source, r.family, `${what} source`);
      if (r.scope && !SCOPE_NAMES[r.scope]) throw invalid(`${what}: scope ${r.scope} is not global, site, link or host`);
      if (r.flags & ~RTNH_F_ONLINK) throw invalid(`${what}: flags 0x${r.flags.toString(16)}: only onlink (0x4) is supported`);
      return {
        v,
        dest: dest.arg,
        dev,
        onlink: !!(r.flags & RTNH_F_ONLINK),
        ...(r.gateway ? { gateway: r.gateway } : {}),
        ...(r.source ? { source: r.source } : {}),
        ...(r.scope ? { scope: r.scope } : {}),
        ...(r.mtu ? { mtu: r.mtu } : {}),
      };
    });
    const ordered = [...cmds.filter((c) => !c.gateway), ...cmds.filter((c) => c.gateway)];
    await this.op((o) => o.apply(ordered.map((route): NetChange => ({ kind: 'route', route }))));
    return routes;
  }

  /** AddARPNeighbors: permanent neighbours, IPv4 and IPv6 (created or replaced). */
  async addNeighbours(list: types.ARPNeighbor[]): Promise<void> {
    if (list.length > MAX_NEIGHBOURS) throw invalid(`AddARPNeighbors: ${list.length} neighbours (at most ${MAX_NEIGHBOURS})`);
    const names = new Set((await this.links()).map((l) => l.name));
    const cmds = list.map((n, i) => {
      const what = `neighbour ${i}`;
      const to = n.toIPAddress?.address ?? '';
      checkIp(to, n.toIPAddress?.family, what);
      const mac = checkMac(n.lladdr, `${what} lladdr`);
      const dev = checkName(n.device, `${what} device`);
      if (!names.has(dev)) throw notFound(`${what}: device ${dev}`);
      if (n.state && !(n.state & NUD_PERMANENT)) throw invalid(`${what}: state 0x${n.state.toString(16)}: only permanent neighbours are added`);
      return { dev, to, mac };
    });
    await this.op((o) => o.apply(cmds.map((c): NetChange => ({ kind: 'neigh', dev: c.dev, address: c.to, lladdr: c.mac }))));
  }
}

/** What local mode answers when no namespace was given: the host's own network is never the pod's. */
export function noGuestNetwork(method: string): never {
  throw precondition(`${method}: this agent runs in local mode without a network namespace (--netns): the host's network is not configured`);
}
