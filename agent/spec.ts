// The OCI runtime spec as the agent API carries it (grpc.Spec, Go field names) turned back into
// the runtime-spec JSON that crun reads from config.json, with the checks the agent owes the
// host: absolute paths only, no `..` escapes. Zero stands for "unset" where the protobuf can
// not express absence (limits, shares, periods), as upstream's converters treat it; -1 in a
// device rule's major/minor is the wildcard.
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import { invalid } from './errors.js';

/** The subset of the OCI runtime spec JSON the agent writes (field names as in config.json). */
export type OciSpec = Record<string, unknown> & {
  ociVersion: string;
  process?: OciProcess;
  root?: { path: string; readonly?: boolean };
  hostname?: string;
  mounts?: OciMount[];
  hooks?: Record<string, OciHook[]>;
  annotations?: Record<string, string>;
  linux?: OciLinux;
};
export interface OciProcess {
  terminal?: boolean;
  consoleSize?: { height: number; width: number };
  user: { uid: number; gid: number; additionalGids?: number[]; umask?: number };
  args: string[];
  env?: string[];
  cwd: string;
  capabilities?: Record<string, string[]>;
  rlimits?: { type: string; hard: number; soft: number }[];
  noNewPrivileges?: boolean;
  apparmorProfile?: string;
  oomScoreAdj?: number;
  selinuxLabel?: string;
}
export interface OciMount {
  destination: string;
  source?: string;
  type?: string;
  options?: string[];
}
export interface OciHook {
  path: string;
  args?: string[];
  env?: string[];
  timeout?: number;
}
export interface OciDevice {
  path: string;
  type: string;
  major: number;
  minor: number;
  fileMode?: number;
  uid?: number;
  gid?: number;
}
export interface OciLinux {
  uidMappings?: { containerID: number; hostID: number; size: number }[];
  gidMappings?: { containerID: number; hostID: number; size: number }[];
  sysctl?: Record<string, string>;
  resources?: OciResources;
  cgroupsPath?: string;
  namespaces?: { type: string; path?: string }[];
  devices?: OciDevice[];
  seccomp?: Record<string, unknown>;
  rootfsPropagation?: string;
  maskedPaths?: string[];
  readonlyPaths?: string[];
  mountLabel?: string;
  intelRdt?: { l3CacheSchema?: string };
  /** Never from the host (Kata's grpc.Spec has no such field): set by the agent, see Crun.createFlags. */
  personality?: { domain: 'LINUX' | 'LINUX32'; flags?: string[] };
}
export type OciResources = Record<string, unknown> & {
  devices?: { allow: boolean; type?: string; major?: number; minor?: number; access?: string }[];
  memory?: Record<string, number | boolean | undefined>;
  cpu?: Record<string, number | string | undefined>;
  pids?: { limit: number };
};

/** An absolute path without `..` components, or an InvalidArgument naming the field. */
export function checkAbsolute(p: string, what: string): string {
  if (!p) throw invalid(`${what}: empty path`);
  if (!path.isAbsolute(p)) throw invalid(`${what}: path ${JSON.stringify(p)} is not absolute`);
  if (p.split('/').includes('..')) throw invalid(`${what}: path ${JSON.stringify(p)} escapes with '..'`);
  if (p.includes('\0')) throw invalid(`${what}: path contains a NUL byte`);
  return p;
}

const nz = (v: number | null | undefined): number | undefined => (v ? v : undefined);
const ne = <T>(a: T[] | null | undefined): T[] | undefined => (a && a.length ? a : undefined);
function compact<T extends Record<string, unknown>>(o: T): T {
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

export function processToOci(p: grpc.Process, what = 'process'): OciProcess {
  if (!p.Args || p.Args.length === 0) throw invalid(`${what}: args must not be empty`);
  const cwd = p.Cwd || '/';
  checkAbsolute(cwd, `${what}.cwd`);
  const caps = p.Capabilities;
  return compact({
    terminal: p.Terminal || undefined,
    consoleSize: p.ConsoleSize && (p.ConsoleSize.Height || p.ConsoleSize.Width)
      ? { height: p.ConsoleSize.Height, width: p.ConsoleSize.Width }
      : undefined,
    user: compact({
      uid: p.User?.UID ?? 0,
      gid: p.User?.GID ?? 0,
      additionalGids: ne(p.User?.AdditionalGids),
    }),
    args: [...p.Args],
    env: ne(p.Env),
    cwd,
    capabilities: caps
      ? compact({
          bounding: caps.Bounding ?? [],
          effective: caps.Effective ?? [],
          inheritable: caps.Inheritable ?? [],
          permitted: caps.Permitted ?? [],
          ambient: caps.Ambient ?? [],
        })
      : undefined,
    rlimits: ne(p.Rlimits?.map((r) => ({ type: r.Type, hard: r.Hard, soft: r.Soft }))),
    noNewPrivileges: p.NoNewPrivileges || undefined,
    apparmorProfile: p.ApparmorProfile || undefined,
    oomScoreAdj: p.OOMScoreAdj || undefined,
    selinuxLabel: p.SelinuxLabel || undefined,
  });
}

function hooksToOci(h: grpc.Hook[] | undefined, what: string): OciHook[] | undefined {
  if (!h || h.length === 0) return undefined;
  return h.map((x, i) =>
    compact({
      path: checkAbsolute(x.Path, `${what}[${i}].path`),
      args: ne(x.Args),
      env: ne(x.Env),
      timeout: x.Timeout > 0 ? x.Timeout : undefined,
    }),
  );
}

const wildcard = (n: number): number | undefined => (n === -1 ? undefined : n);

export function resourcesToOci(r: grpc.LinuxResources): OciResources {
  const out: OciResources = {};
  if (r.Devices?.length) {
    out.devices = r.Devices.map((d) =>
      compact({ allow: d.Allow, type: d.Type || undefined, major: wildcard(d.Major), minor: wildcard(d.Minor), access: d.Access || undefined }),
    );
  }
  if (r.Memory) {
    const m = r.Memory;
    const mem = compact({
      limit: nz(m.Limit),
      reservation: nz(m.Reservation),
      swap: nz(m.Swap),
      kernel: nz(m.Kernel),
      kernelTCP: nz(m.KernelTCP),
      swappiness: nz(m.Swappiness),
      disableOOMKiller: m.DisableOOMKiller || undefined,
    });
    if (Object.keys(mem).length) out.memory = mem;
  }
  if (r.CPU) {
    const c = r.CPU;
    const cpu = compact({
      shares: nz(c.Shares),
      quota: nz(c.Quota),
      period: nz(c.Period),
      realtimeRuntime: nz(c.RealtimeRuntime),
      realtimePeriod: nz(c.RealtimePeriod),
      cpus: c.Cpus || undefined,
      mems: c.Mems || undefined,
    });
    if (Object.keys(cpu).length) out.cpu = cpu;
  }
  if (r.Pids && r.Pids.Limit) out.pids = { limit: r.Pids.Limit };
  if (r.BlockIO) {
    const b = r.BlockIO;
    const thr = (l: grpc.LinuxThrottleDevice[] | undefined) => ne(l?.map((t) => ({ major: t.Major, minor: t.Minor, rate: t.Rate })));
    const blk = compact({
      weight: nz(b.Weight),
      leafWeight: nz(b.LeafWeight),
      weightDevice: ne(b.WeightDevice?.map((w) => compact({ major: w.Major, minor: w.Minor, weight: nz(w.Weight), leafWeight: nz(w.LeafWeight) }))),
      throttleReadBpsDevice: thr(b.ThrottleReadBpsDevice),
      throttleWriteBpsDevice: thr(b.ThrottleWriteBpsDevice),
      throttleReadIOPSDevice: thr(b.ThrottleReadIOPSDevice),
      throttleWriteIOPSDevice: thr(b.ThrottleWriteIOPSDevice),
    });
    if (Object.keys(blk).length) out.blockIO = blk;
  }
  if (r.HugepageLimits?.length) out.hugepageLimits = r.HugepageLimits.map((h) => ({ pageSize: h.Pagesize, limit: h.Limit }));
  if (r.Network && (r.Network.ClassID || r.Network.Priorities?.length)) {
    out.network = compact({
      classID: nz(r.Network.ClassID),
      priorities: ne(r.Network.Priorities?.map((p) => ({ name: p.Name, priority: p.Priority }))),
    });
  }
  return out;
}

function seccompToOci(s: grpc.LinuxSeccomp): Record<string, unknown> {
  return compact({
    defaultAction: s.DefaultAction,
    architectures: ne(s.Architectures),
    flags: ne(s.Flags),
    syscalls: ne(
      s.Syscalls?.map((sc) =>
        compact({
          names: sc.Names,
          action: sc.Action,
          // A oneof: present on the wire or not (protobufjs puts the default on the prototype).
          errnoRet: Object.prototype.hasOwnProperty.call(sc, 'errnoret') && sc.errnoret != null ? sc.errnoret : undefined,
          args: ne(sc.Args?.map((a) => compact({ index: a.Index, value: a.Value, valueTwo: nz(a.ValueTwo), op: a.Op }))),
        }),
      ),
    ),
  });
}

function linuxToOci(l: grpc.Linux): OciLinux {
  const idmap = (m: grpc.LinuxIDMapping[] | undefined) => ne(m?.map((x) => ({ containerID: x.ContainerID, hostID: x.HostID, size: x.Size })));
  return compact({
    uidMappings: idmap(l.UIDMappings),
    gidMappings: idmap(l.GIDMappings),
    sysctl: l.Sysctl && Object.keys(l.Sysctl).length ? { ...l.Sysctl } : undefined,
    resources: l.Resources ? resourcesToOci(l.Resources) : undefined,
    cgroupsPath: l.CgroupsPath || undefined,
    namespaces: l.Namespaces?.map((n) => compact({ type: n.Type, path: n.Path || undefined })),
    devices: ne(
      l.Devices?.map((d, i) =>
        compact({
          path: checkAbsolute(d.Path, `linux.devices[${i}].path`),
          type: d.Type,
          major: d.Major,
          minor: d.Minor,
          fileMode: d.FileMode || undefined,
          uid: d.UID,
          gid: d.GID,
        }),
      ),
    ),
    seccomp: l.Seccomp && (l.Seccomp.DefaultAction || l.Seccomp.Syscalls?.length) ? seccompToOci(l.Seccomp) : undefined,
    rootfsPropagation: l.RootfsPropagation || undefined,
    maskedPaths: ne(l.MaskedPaths),
    readonlyPaths: ne(l.ReadonlyPaths),
    mountLabel: l.MountLabel || undefined,
    intelRdt: l.IntelRdt?.L3CacheSchema ? { l3CacheSchema: l.IntelRdt.L3CacheSchema } : undefined,
  });
}

const BIND_TYPES = new Set(['bind', 'rbind']);

/**
 * The ociVersion written for crun. containerd 2.x writes 1.2.x; crun before 1.15 (bookworm's 1.8.1
 * runs in the guest) refuses any version without "1.0" in it ("unknown version specified"), though
 * 1.1.0 passes. Everything this file writes is defined by runtime-spec 1.1.0 (grpc.Spec has no newer
 * field), so a newer 1.x is written as 1.1.0; a major version other than 1 is left for crun to refuse.
 */
export function ociVersionFor(v: string): string {
  if (!v) return '1.0.2';
  const m = /^1\.(\d+)\./.exec(v);
  return m && Number(m[1]) > 1 ? '1.1.0' : v;
}

/** grpc.Spec -> config.json contents. Throws InvalidArgument for paths the agent will not use. */
export function specToOci(s: grpc.Spec): OciSpec {
  if (!s.Process) throw invalid('spec has no process');
  if (!s.Root || !s.Root.Path) throw invalid('spec has no root path');
  checkAbsolute(s.Root.Path, 'root.path');
  const mounts = (s.Mounts ?? []).map((m, i) => {
    checkAbsolute(m.destination, `mounts[${i}].destination`);
    const isBind = BIND_TYPES.has(m.type) || m.options?.includes('bind') || m.options?.includes('rbind');
    if (isBind) checkAbsolute(m.source, `mounts[${i}].source`);
    else if (m.source?.split('/').includes('..')) throw invalid(`mounts[${i}].source: path ${JSON.stringify(m.source)} escapes with '..'`);
    return compact({ destination: m.destination, source: m.source || undefined, type: m.type || undefined, options: ne(m.options) });
  });
  const hooks: Record<string, OciHook[]> = {};
  if (s.Hooks) {
    const h = s.Hooks;
    const map: [string, grpc.Hook[]][] = [
      ['prestart', h.Prestart],
      ['poststart', h.Poststart],
      ['poststop', h.Poststop],
      ['createRuntime', h.CreateRuntime],
      ['createContainer', h.CreateContainer],
      ['startContainer', h.StartContainer],
    ];
    for (const [k, v] of map) {
      const o = hooksToOci(v, `hooks.${k}`);
      if (o) hooks[k] = o;
    }
  }
  return compact({
    ociVersion: ociVersionFor(s.Version),
    process: processToOci(s.Process),
    root: { path: s.Root.Path, readonly: s.Root.Readonly || undefined },
    hostname: s.Hostname || undefined,
    mounts,
    hooks: Object.keys(hooks).length ? hooks : undefined,
    annotations: s.Annotations && Object.keys(s.Annotations).length ? { ...s.Annotations } : undefined,
    linux: s.Linux ? linuxToOci(s.Linux) : {},
  }) as OciSpec;
}
