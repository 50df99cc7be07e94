// iproute2's `ip` and `tc` run inside a pod's network namespace. Why iproute2 and not netlink:
// node has no AF_NETLINK socket (netlink would mean a native helper speaking rtnetlink for links,
// addresses, routes, neighbours, qdiscs and u32/mirred filters), while `ip`/`tc` are on every node,
// print JSON (`-j`) to read back and say what failed in words. The namespace is entered with
// util-linux's nsenter, which takes any path (CRI's netns need not live in /run/netns, which
// `ip netns exec` requires). Every call has a time limit and a bounded output.
import fs from 'node:fs';
import path from 'node:path';
import { runTool, type ToolResult } from '../../sys/exec.js';

/** How long one ip/tc call in a pod's namespace may take. */
export const NETNS_TOOL_TIMEOUT_MS = 15_000;
export const NETNS_TOOL_TIMEOUT = 'KATATS_NETNS_TOOL_TIMEOUT';
/** statfs(2) type of a bind-mounted namespace file (nsfs). */
const NSFS_MAGIC = 0x6e736673;

export class NetnsError extends Error {
  override readonly name = 'NetnsError';
}

/**
 * The pod's network namespace path from the spec: absolute, no `..`, and a namespace file (nsfs),
 * so nsenter is never pointed at something else the spec names.
 */
export function checkNetnsPath(p: string): string {
  if (!path.isAbsolute(p) || p.split('/').includes('..') || /[\0\n]/.test(p)) throw new NetnsError(`network namespace path ${JSON.stringify(p)} must be absolute without ..`);
  let type: number;
  try {
    type = Number(fs.statfsSync(p).type);
  } catch (e) {
    throw new NetnsError(`network namespace ${p}: ${(e as Error).message}`);
  }
  if (type !== NSFS_MAGIC) throw new NetnsError(`network namespace ${p} is not a namespace file (statfs type 0x${type.toString(16)})`);
  return p;
}

/** `tool args...` inside `netns`; resolves with the result whatever the exit status. */
export function inNetns(netns: string, tool: 'ip' | 'tc', args: string[], input?: string): Promise<ToolResult> {
  return runTool('nsenter', [`--net=${netns}`, '--', tool, ...args], {
    timeoutMs: NETNS_TOOL_TIMEOUT_MS,
    timeoutCode: NETNS_TOOL_TIMEOUT,
    maxOutputBytes: 1 << 20,
    ...(input !== undefined ? { input } : {}),
  });
}

/** As inNetns, but a failure throws a NetnsError with the tool's own words. */
export async function inNetnsOk(netns: string, tool: 'ip' | 'tc', args: string[], input?: string): Promise<string> {
  const r = await inNetns(netns, tool, args, input);
  if (r.code !== 0) throw new NetnsError(`${tool} ${args.join(' ')} in ${netns}: ${(r.stderr || r.stdout).trim() || `exit ${r.code ?? r.signal}`}`);
  return r.stdout;
}

/** `ip -j ...`'s JSON array (one ip call). */
export async function ipJson<T>(netns: string, args: string[]): Promise<T[]> {
  const out = await inNetnsOk(netns, 'ip', ['-j', ...args]);
  if (!out.trim()) return [];
  try {
    const v = JSON.parse(out) as unknown;
    if (!Array.isArray(v)) throw new Error('not an array');
    return v as T[];
  } catch (e) {
    throw new NetnsError(`ip -j ${args.join(' ')} in ${netns}: unreadable output (${(e as Error).message})`);
  }
}
