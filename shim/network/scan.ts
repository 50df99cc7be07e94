// What CNI left in a pod's network namespace, read with `ip -j`, and what of it the guest gets in
// Kata's shapes (types.Interface, types.Route, types.ARPNeighbor), as Kata's shim collects them:
// every link CNI made (veth, macvlan, ipvlan; never lo, never our own TAPs) becomes a guest NIC
// with the link's MAC, MTU, NOARP flag and global addresses; routes of the main table through
// those links go along except the kernel's own (proto kernel: the connected routes the guest's
// kernel makes itself once the addresses are set; sending them is what makes "file exists"
// errors); neighbours (IPv4 and IPv6) go along when static (PERMANENT): learnt ones the guest's
// kernel learns itself, and what the guest's agent and generated policies accept is the permanent state.
import type { types } from '../../proto/gen/types.js';
import { ipJson } from './netns.js';

/** The link kinds a TAP can stand in for (the kernel's info_kind). */
export const WIRED_KINDS = ['veth', 'macvlan', 'ipvlan'];
/** Our TAPs in the pod's namespace: tapN_kata, Kata's names. */
export const TAP_NAME = /^tap\d+_kata$/;
/** A link name as the kernel allows it, which iproute2 may be handed as one word of a batch line. */
export const IFNAME = /^[^\s/:'"\\]{1,15}$/;
export const tapName = (i: number): string => `tap${i}_kata`;

const IFF_NOARP = 0x80;
const RTNH_F_ONLINK = 0x4;
const NUD_PERMANENT = 0x80;
/** iproute2's words for rtm_scope. */
const SCOPES: Record<string, number> = { global: 0, universe: 0, site: 200, link: 253, host: 254, nowhere: 255 };
/** iproute2's words for neighbour states (NUD_*). */
const NUD: Record<string, number> = { INCOMPLETE: 0x01, REACHABLE: 0x02, STALE: 0x04, DELAY: 0x08, PROBE: 0x10, FAILED: 0x20, NOARP: 0x40, PERMANENT: 0x80 };

export interface IpLink {
  ifindex: number;
  ifname: string;
  flags?: string[];
  mtu?: number;
  link_type?: string;
  address?: string;
  linkinfo?: { info_kind?: string };
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}

export interface IpRoute {
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
  protocol?: string;
  scope?: string;
  prefsrc?: string;
  flags?: string[];
  metrics?: { mtu?: number }[] | { mtu?: number };
}

export interface IpNeigh {
  dst: string;
  dev?: string;
  lladdr?: string;
  state?: string[];
}

export interface NetnsState {
  links: IpLink[];
  routes: { v4: IpRoute[]; v6: IpRoute[] };
  neighbours: IpNeigh[];
}

/** One link of the pod wired to the guest: the link and the TAP that stands in for it. */
export interface Endpoint {
  link: string;
  tap: string;
  mac: string;
  mtu: number;
  iface: types.Interface;
}

export interface PodNetworkPlan {
  endpoints: Endpoint[];
  routes: types.Route[];
  neighbours: types.ARPNeighbor[];
  /** Links seen and left alone, with why (logged). */
  skipped: { link: string; why: string }[];
}

/** Reads the namespace: links with their addresses, the main table's routes, the neighbours. */
export async function readNetns(netns: string): Promise<NetnsState> {
  const links = await ipJson<IpLink>(netns, ['-d', 'addr', 'show']);
  const v4 = await ipJson<IpRoute>(netns, ['-4', 'route', 'show', 'table', 'main']);
  const v6 = await ipJson<IpRoute>(netns, ['-6', 'route', 'show', 'table', 'main']);
  const neighbours = await ipJson<IpNeigh>(netns, ['neigh', 'show']);
  return { links, routes: { v4, v6 }, neighbours };
}

const isZeroMac = (m: string) => /^(00:){5}00$/i.test(m);
const withPrefix = (dst: string, v6: boolean) => (dst === 'default' ? '' : dst.includes('/') ? dst : `${dst}/${v6 ? 128 : 32}`);
const family = (v6: boolean): types.IPFamily => (v6 ? 1 : 0);

function routeMtu(r: IpRoute): number {
  const m = Array.isArray(r.metrics) ? r.metrics.find((x) => x.mtu !== undefined) : r.metrics;
  return m?.mtu ?? 0;
}

/** The guest's share of a namespace: a pure function of what readNetns saw. */
export function planPodNetwork(s: NetnsState): PodNetworkPlan {
  const endpoints: Endpoint[] = [];
  const skipped: PodNetworkPlan['skipped'] = [];
  // In name order (eth0, eth1, ..., net1): the TAPs, and so the guest's NICs in PCI order, follow
  // the pod's names whatever order CNI made the links in (containerd adds networks in parallel).
  const byName = [...s.links].sort((a, b) => a.ifname.localeCompare(b.ifname, 'en', { numeric: true }));
  for (const l of byName) {
    const kind = l.linkinfo?.info_kind ?? '';
    if (l.link_type === 'loopback' || l.ifname === 'lo') continue;
    if (TAP_NAME.test(l.ifname)) continue;
    if (!IFNAME.test(l.ifname)) {
      skipped.push({ link: JSON.stringify(l.ifname), why: 'a name iproute2 cannot be handed' });
      continue;
    }
    if (!WIRED_KINDS.includes(kind)) {
      skipped.push({ link: l.ifname, why: `kind ${kind || 'none'} is not one of ${WIRED_KINDS.join(', ')}` });
      continue;
    }
    if (!l.address || isZeroMac(l.address) || l.link_type !== 'ether') {
      skipped.push({ link: l.ifname, why: `no Ethernet address (${l.link_type ?? '?'} ${l.address ?? ''})` });
      continue;
    }
    const mtu = l.mtu ?? 1500;
    endpoints.push({
      link: l.ifname,
      tap: tapName(endpoints.length),
      mac: l.address.toLowerCase(),
      mtu,
      iface: {
        device: l.ifname,
        name: l.ifname,
        // Link-local ones are the guest kernel's own (the same MAC makes the same address).
        IPAddresses: (l.addr_info ?? [])
          .filter((a) => (a.family === 'inet' || a.family === 'inet6') && a.scope !== 'link' && a.scope !== 'host')
          .map((a) => ({ family: family(a.family === 'inet6'), address: a.local, mask: String(a.prefixlen) })),
        mtu,
        hwAddr: l.address.toLowerCase(),
        devicePath: '',
        type: '',
        raw_flags: l.flags?.includes('NOARP') ? IFF_NOARP : 0,
      },
    });
  }
  const wired = new Set(endpoints.map((e) => e.link));
  const routes: types.Route[] = [];
  for (const [v6, list] of [[false, s.routes.v4], [true, s.routes.v6]] as const) {
    for (const r of list) {
      if (!r.dev || !wired.has(r.dev)) continue;
      if (r.protocol === 'kernel') continue;
      if (r.type && r.type !== 'unicast') continue;
      routes.push({
        dest: withPrefix(r.dst, v6),
        gateway: r.gateway ?? '',
        device: r.dev,
        source: r.prefsrc ?? '',
        scope: SCOPES[r.scope ?? 'global'] ?? 0,
        family: family(v6),
        flags: r.flags?.includes('onlink') ? RTNH_F_ONLINK : 0,
        mtu: routeMtu(r),
      });
    }
  }
  const neighbours: types.ARPNeighbor[] = [];
  for (const n of s.neighbours) {
    if (!n.dev || !wired.has(n.dev) || !n.lladdr || isZeroMac(n.lladdr)) continue;
    const state = (n.state ?? []).reduce((acc, w) => acc | (NUD[w] ?? 0), 0);
    if (!(state & NUD_PERMANENT)) continue;
    neighbours.push({ toIPAddress: { family: family(n.dst.includes(':')), address: n.dst, mask: '' }, device: n.dev, lladdr: n.lladdr.toLowerCase(), state: NUD_PERMANENT, flags: 0 });
  }
  return { endpoints, routes, neighbours, skipped };
}
