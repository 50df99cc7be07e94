// Kata's default internetworking model, tcfilter: a TAP next to each of the pod's links, in the
// pod's namespace, and traffic control gluing the two together: an ingress qdisc on both and a
// u32 filter matching every frame with a mirred action redirecting it to the other's egress. What
// arrives on the veth leaves through the TAP to QEMU; what the guest sends arrives on the TAP and
// leaves through the veth. The namespace's own IP stack never sees the pod's traffic.
// The TAPs are persistent (owned by nobody until QEMU attaches, see tap-exec in the native
// helper), so they can be wired before QEMU starts and removed after it is gone.
import { inNetns, inNetnsOk, NetnsError } from './netns.js';
import { TAP_NAME } from './scan.js';

export interface TapPair {
  link: string;
  tap: string;
  mtu: number;
}

/** tc's prio for our filters (any fixed value: ours are the only filters on these qdiscs). */
const FILTER_PRIO = 1;

const gone = (stderr: string) => /Cannot find device|Cannot find specified qdisc|No such file or directory|does not exist/i.test(stderr);

/** Removes TAPs of ours a dead attempt left in the namespace (tapN_kata: nothing else makes those names). */
export async function removeStaleTaps(netns: string, links: string[]): Promise<string[]> {
  const stale = links.filter((l) => TAP_NAME.test(l));
  for (const t of stale) await inNetnsOk(netns, 'ip', ['link', 'del', 'dev', t]);
  return stale;
}

/** Makes each TAP and wires it to its link. Throws (naming the failing step) with whatever was made left for unwire(). */
export async function wire(netns: string, pairs: TapPair[]): Promise<void> {
  if (!pairs.length) return;
  const ip = pairs.flatMap((p) => [`tuntap add dev ${p.tap} mode tap vnet_hdr`, `link set dev ${p.tap} mtu ${p.mtu} up`]);
  await inNetnsOk(netns, 'ip', ['-batch', '-'], ip.join('\n') + '\n');
  const redirect = (from: string, to: string) => `filter add dev ${from} parent ffff: protocol all prio ${FILTER_PRIO} u32 match u8 0 0 action mirred egress redirect dev ${to}`;
  const tc = pairs.flatMap((p) => [`qdisc add dev ${p.link} ingress`, `qdisc add dev ${p.tap} ingress`, redirect(p.link, p.tap), redirect(p.tap, p.link)]);
  await inNetnsOk(netns, 'tc', ['-batch', '-'], tc.join('\n') + '\n');
}

/**
 * Removes the link's ingress qdisc (its filter goes with it) and the TAP (its qdiscs and filter go
 * with it). Idempotent: what is already gone, or a namespace that is gone (its links went with
 * it), is fine. Every pair is tried; the first failure is thrown at the end.
 */
export async function unwire(netns: string, pairs: { link: string; tap: string }[]): Promise<void> {
  let first: Error | undefined;
  for (const p of pairs) {
    for (const [tool, args] of [
      ['tc', ['qdisc', 'del', 'dev', p.link, 'ingress']],
      ['ip', ['link', 'del', 'dev', p.tap]],
    ] as const) {
      const r = await inNetns(netns, tool, [...args]).catch((e: Error) => ({ code: -1, signal: null, stdout: '', stderr: e.message }));
      if (r.code === 0 || gone(r.stderr)) continue;
      first ??= new NetnsError(`${tool} ${args.join(' ')} in ${netns}: ${r.stderr.trim() || `exit ${r.code ?? r.signal}`}`);
    }
  }
  if (first) throw first;
}
