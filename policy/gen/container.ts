// One container's entry in policy_data: the OCI spec containerd's CRI plugin will build for it
// (from the pod template, the image config and the platform settings) after our shim rewrote its
// paths for the guest, in the shape the agent sees it (Kata's KataSpec: PascalCase OCI fields,
// snake_case mount fields, `type_`).
import { expand, isExact, kubeletEnv, literal, text, toRegex, type Patterns, type Template } from './env.js';
import { parseGroup, parsePasswd, type ResolvedImage } from './image.js';
import { ManifestError, reEscape, type ConfigSource, type ContainerLike, type PodTemplate, type VolumeLike } from './manifest.js';
import type { PolicyMount, PolicyStorage, Settings } from './settings.js';
import { LAYER_OVERLAY_FSTYPE, LAYER_STORAGE_FSTYPE, layerOverlayOptions, layerStorageOptions, ZERO_SALT_HEX } from '../../proto/layer-storage.js';
import { LAYER_SRC_PREFIX } from '../../proto/layer-mounts.js';
import { checkKbsUrl, KBS_URL_ANNOTATION } from '../../attestation/kbs-url.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';

export interface ContainerPolicy {
  name: string;
  OCI: {
    Version: string;
    Process: {
      Terminal: boolean;
      User: { UID: number; GID: number; AdditionalGids: number[]; Username: string };
      Args: string[];
      Env: string[];
      Cwd: string;
      Capabilities: { Ambient: string[]; Bounding: string[]; Effective: string[]; Inheritable: string[]; Permitted: string[] };
      NoNewPrivileges: boolean;
    };
    Root: { Path: string; Readonly: boolean };
    Mounts: PolicyMount[];
    Annotations: Record<string, string>;
    Linux: {
      Namespaces: { Type: string; Path: string }[];
      MaskedPaths: string[];
      ReadonlyPaths: string[];
      Devices: { Type: string; Path: string }[];
      Sysctl: Record<string, string>;
    };
  };
  args_regex?: string[];
  env_regex: string[];
  optional_mounts: string[];
  /** On verified layers: one `blk` storage per layer (topmost first), then the overlay; else none. */
  storages: PolicyStorage[];
  devices: unknown[];
  sandbox_pidns: boolean;
  exec_commands: string[][];
  /** The image the container runs: its manifest and, per layer (base first), the diff_id and, on verified layers, the root hash. */
  image: { name: string; manifest: string; layers: { diff_id: string; root_hash?: string }[] };
}

/** The pod-level annotations `katats policy gen` reads (and the kubelet ignores). */
export const GEN_ANNOTATIONS = {
  /** JSON array of argv arrays every container of the pod may be exec'd with. */
  allowExec: 'policy.katats.io/allow-exec',
  /** "true": the host may read the containers' stdout/stderr (logs, exec output). */
  allowLogs: 'policy.katats.io/allow-log-streaming',
  /** "true": the host may write to the containers' stdin. */
  allowStdin: 'policy.katats.io/allow-stdin',
} as const;

export interface PodContext {
  pod: PodTemplate;
  settings: Settings;
  configs: ConfigSource[];
  pat: Patterns;
  /** The namespace pattern (regex text, unanchored). */
  namespaceRe: string;
  /** The pod's images by the reference its containers use. */
  images: Map<string, ResolvedImage>;
}

function sorted<T>(xs: Iterable<T>): T[] {
  return [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

function sortedRecord(r: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of sorted(Object.keys(r))) out[k] = r[k]!;
  return out;
}

/** Settings placeholders resolved at generation time; $(bundle-id) stays for the rules to fill in. */
function fill(s: string, ctx: PodContext, extra: Record<string, string> = {}): string {
  const c = ctx.settings.common;
  const vars: Record<string, string> = {
    sfprefix: c.sfprefix,
    cpath: c.cpath,
    spath: c.spath,
    uuid: c.uuid,
    'sandbox-name': ctx.pod.nameRegex,
    'sandbox-namespace': ctx.namespaceRe,
    ...extra,
  };
  // sfprefix contains $(cpath): fill until nothing changes (bounded: settings are not recursive beyond that)
  for (let round = 0; round < 4; round++) {
    const next = s.replace(/\$\(([a-z0-9_-]+)\)/g, (m, name: string) => vars[name] ?? m);
    if (next === s) break;
    s = next;
  }
  return s;
}

// ---- user and groups ----

interface User {
  uid: number;
  gid: number;
  gids: Set<number>;
}

/** containerd's oci.WithUser on an image user ("uid", "name", "uid:gid", "name:group"). */
function imageUser(img: ResolvedImage, spec: string, keepGroup: boolean): User {
  const passwd = parsePasswd(img.passwd);
  const groups = parseGroup(img.group);
  const [u, g] = spec.split(':');
  let uid = 0;
  if (u && /^[0-9]+$/.test(u)) uid = Number(u);
  else if (u) {
    const e = passwd.find((p) => p.name === u);
    if (!e) throw new ManifestError(`image ${img.name}: user ${u} is not in its /etc/passwd`);
    uid = e.uid;
  }
  let gid = passwd.find((p) => p.uid === uid)?.gid ?? 0;
  if (keepGroup && g) {
    if (/^[0-9]+$/.test(g)) gid = Number(g);
    else {
      const e = groups.find((x) => x.name === g);
      if (!e) throw new ManifestError(`image ${img.name}: group ${g} is not in its /etc/group`);
      gid = e.gid;
    }
  }
  return { uid, gid, gids: new Set() };
}

/** Groups /etc/group lists the user in (containerd's WithAdditionalGIDs), the primary gid first. */
function memberGids(img: ResolvedImage, uid: number, gid: number): number[] {
  const name = parsePasswd(img.passwd).find((p) => p.uid === uid)?.name;
  const out = [gid];
  if (name) for (const g of parseGroup(img.group)) if (g.members.includes(name) && g.name !== name) out.push(g.gid);
  return out;
}

function containerUser(ctx: PodContext, c: ContainerLike, img: ResolvedImage): User {
  const psc = ctx.pod.spec.securityContext ?? {};
  const sc = c.securityContext ?? {};
  const runAsUser = sc.runAsUser ?? psc.runAsUser;
  const runAsGroup = sc.runAsGroup ?? psc.runAsGroup;
  // kubelet passes the image's user id (run_as_user) or name; a group part of the image's user is dropped.
  let user: User =
    runAsUser !== undefined
      ? { uid: runAsUser, gid: parsePasswd(img.passwd).find((p) => p.uid === runAsUser)?.gid ?? 0, gids: new Set() }
      : imageUser(img, img.config.User ?? '', false);
  if (runAsGroup !== undefined) user = { ...user, gid: runAsGroup };
  for (const g of memberGids(img, user.uid, user.gid)) user.gids.add(g);
  if (runAsGroup !== undefined) user.gids.add(runAsGroup);
  for (const g of psc.supplementalGroups ?? []) user.gids.add(g);
  if (psc.fsGroup !== undefined) user.gids.add(psc.fsGroup);
  return user;
}

function pauseUser(ctx: PodContext, img: ResolvedImage | undefined): User {
  const psc = ctx.pod.spec.securityContext ?? {};
  const imageHasUser = !!img?.config.User;
  let user: User = img && imageHasUser ? imageUser(img, img.config.User!, true) : { uid: 0, gid: 0, gids: new Set() };
  if (psc.runAsUser !== undefined) {
    const gid = img ? parsePasswd(img.passwd).find((p) => p.uid === psc.runAsUser)?.gid : undefined;
    user = { ...user, uid: psc.runAsUser, gid: gid ?? user.gid };
  }
  if (psc.runAsGroup !== undefined) user = { ...user, gid: psc.runAsGroup };
  if (imageHasUser || psc.runAsUser !== undefined || psc.runAsGroup !== undefined) user.gids.add(user.gid);
  else {
    for (const g of psc.supplementalGroups ?? []) user.gids.add(g);
    if (psc.fsGroup !== undefined) user.gids.add(psc.fsGroup);
  }
  return user;
}

// ---- capabilities ----

function capName(c: string): string {
  const u = c.toUpperCase();
  return u.startsWith('CAP_') ? u : `CAP_${u}`;
}

function capabilities(ctx: PodContext, c: ContainerLike): string[] {
  const set = [...ctx.settings.common.default_caps];
  const caps = c.securityContext?.capabilities;
  let out = set;
  for (const d of caps?.drop ?? []) {
    if (d.toUpperCase() === 'ALL') out = [];
    else out = out.filter((x) => x !== capName(d));
  }
  for (const a of caps?.add ?? []) {
    if (a.toUpperCase() === 'ALL') out = [...ctx.settings.common.privileged_caps];
    else if (!out.includes(capName(a))) out.push(capName(a));
  }
  return out;
}

// ---- mounts ----

function bindOptions(readOnly: boolean, propagation?: string): string[] {
  const prop = propagation === 'Bidirectional' ? 'rshared' : propagation === 'HostToContainer' ? 'rslave' : 'rprivate';
  return ['rbind', prop, readOnly ? 'ro' : 'rw'];
}

/** The source of a host path the shim shares into the container (anything but /dev, /proc, /sys). */
function sharedSource(ctx: PodContext): string {
  return fill('$(sfprefix)[0-9a-f]{12}-[^/]+$', ctx);
}

function volumeMounts(ctx: PodContext, c: ContainerLike): PolicyMount[] {
  const out: PolicyMount[] = [];
  const vols = new Map<string, VolumeLike>((ctx.pod.spec.volumes ?? []).map((v) => [v.name, v]));
  for (const vm of c.volumeMounts ?? []) {
    const where = `${ctx.pod.origin} container ${c.name} volumeMount ${vm.mountPath}`;
    if (vm.subPath || vm.subPathExpr) throw new ManifestError(`${where}: subPath is not supported (the shim shares whole volumes)`);
    const v = vols.get(vm.name);
    if (!v) throw new ManifestError(`${where}: no volume named ${vm.name}`);
    // kubelet mounts these read-only whatever the volumeMount says
    const alwaysRo = v.configMap !== undefined || v.secret !== undefined || v.projected !== undefined || v.downwardAPI !== undefined;
    const readOnly = alwaysRo || vm.readOnly === true;
    let source = sharedSource(ctx);
    if (v.hostPath) {
      const p = v.hostPath.path;
      // The shim leaves /dev, /proc and /sys paths as they are: the guest's own.
      if (/^\/(dev|proc|sys)(\/|$)/.test(p)) source = p;
    } else if (!alwaysRo && v.emptyDir === undefined && v.persistentVolumeClaim === undefined && v.ephemeral === undefined) {
      const kind = Object.keys(v).find((k) => k !== 'name') ?? 'unknown';
      throw new ManifestError(`${where}: volume type ${kind} is not supported`);
    }
    out.push({ destination: vm.mountPath, source, type_: 'bind', options: bindOptions(readOnly, vm.mountPropagation) });
  }
  // Image volumes CRI backs with a directory of its own (containerd copies the image's content).
  for (const dest of sorted(Object.keys(ctx.images.get(c.image)?.config.Volumes ?? {}))) {
    const d = dest.replace(/\/+/g, '/');
    if (out.some((m) => m.destination === d)) continue;
    out.push({ destination: d, source: sharedSource(ctx), type_: 'bind', options: ['rbind', 'rprivate', 'rw'] });
  }
  return out;
}

// ---- process ----

/** A list the API types as []string: YAML's unquoted true or 8080 is refused, as the API server refuses it. */
function strings(v: unknown, what: string): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new ManifestError(`${what}: must be a list of strings (quote values like true or 8080)`);
  return v as string[];
}

function processArgs(c: ContainerLike, img: ResolvedImage, vars: Map<string, Template>): Template[] {
  // kubelet expands $(VAR) in command and args; containerd fills in the image's Entrypoint/Cmd.
  const lookup = (n: string) => vars.get(n);
  const command = (strings(c.command, `container ${c.name} command`) ?? []).map((a) => expand(a, lookup));
  let args = (strings(c.args, `container ${c.name} args`) ?? []).map((a) => expand(a, lookup));
  let cmd = command;
  if (command.length === 0) {
    if (args.length === 0) args = (img.config.Cmd ?? []).map(literal);
    if (c.command === undefined) cmd = (img.config.Entrypoint ?? []).map(literal);
  }
  const all = [...cmd, ...args];
  if (all.length === 0) throw new ManifestError(`container ${c.name}: no command: neither the manifest nor image ${img.name} names one`);
  return all;
}

function execCommands(ctx: PodContext, c: ContainerLike): string[][] {
  const out: string[][] = [];
  const add = (raw: unknown) => {
    const cmd = strings(raw, `${ctx.pod.origin} container ${c.name} exec command`);
    if (cmd && cmd.length && !out.some((x) => JSON.stringify(x) === JSON.stringify(cmd))) out.push(cmd);
  };
  for (const p of [c.livenessProbe, c.readinessProbe, c.startupProbe, c.lifecycle?.postStart, c.lifecycle?.preStop]) add(p?.exec?.command);
  const extra = ctx.pod.metadata.annotations?.[GEN_ANNOTATIONS.allowExec];
  if (extra) {
    let list: unknown;
    try {
      list = JSON.parse(extra);
    } catch (e) {
      throw new ManifestError(`${ctx.pod.origin}: annotation ${GEN_ANNOTATIONS.allowExec}: not JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(list) || !list.every((x) => Array.isArray(x) && x.every((s) => typeof s === 'string'))) {
      throw new ManifestError(`${ctx.pod.origin}: annotation ${GEN_ANNOTATIONS.allowExec}: want a JSON array of argv arrays`);
    }
    for (const cmd of list as string[][]) add(cmd);
  }
  return out;
}

function namespaces(ctx: PodContext, sandbox: boolean): { Type: string; Path: string }[] {
  const s = ctx.pod.spec;
  if (s.hostPID) throw new ManifestError(`${ctx.pod.origin}: hostPID is not supported (the pod has its own kernel)`);
  const out: { Type: string; Path: string }[] = [{ Type: 'pid', Path: '' }];
  if (!s.hostIPC) out.push({ Type: 'ipc', Path: '' });
  // A host-network sandbox keeps the node's UTS namespace; its containers get their own.
  if (!(sandbox && s.hostNetwork)) out.push({ Type: 'uts', Path: '' });
  out.push({ Type: 'mount', Path: '' });
  return out;
}

function annotations(ctx: PodContext, template: Record<string, string>, containerName: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(template)) out[k] = fill(v, ctx, { 'container-name': reEscape(containerName) });
  // The pod's KBS, pinned: HOST_DATA binds this policy, so the KBS the pod trusts is measured with it.
  const kbs = ctx.pod.metadata.annotations?.[KBS_URL_ANNOTATION];
  if (kbs !== undefined) {
    try {
      checkKbsUrl(kbs);
    } catch (e) {
      throw new ManifestError(`${ctx.pod.origin}: annotation ${KBS_URL_ANNOTATION}: ${(e as Error).message}`);
    }
    out[KBS_URL_ANNOTATION] = `^${reEscape(kbs)}$`;
  }
  return sortedRecord(out);
}

function sysctls(ctx: PodContext, template: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = { ...template };
  for (const s of ctx.pod.spec.securityContext?.sysctls ?? []) out[s.name] = s.value;
  return sortedRecord(out);
}

function imageRef(img: ResolvedImage | undefined, fallback: string): ContainerPolicy['image'] {
  return {
    name: img?.name ?? fallback,
    manifest: img?.manifestDigest ?? '',
    layers: (img?.layers ?? []).map((l) => ({ diff_id: l.diffId, ...(l.rootHash ? { root_hash: l.rootHash } : {}) })),
  };
}

/** Whether the pods run on the tardev snapshotter's verified layers. */
export const onLayers = (ctx: Pick<PodContext, 'settings'>): boolean => ctx.settings.cluster_config.snapshotter === 'tardev';

function rootPath(ctx: PodContext): string {
  return fill(onLayers(ctx) ? ctx.settings.common.layer_root_path : ctx.settings.common.root_path, ctx);
}

/**
 * What the shim sends for a container on verified layers (shim/layer-disks.ts), pinned: one `blk`
 * storage per image layer, topmost first, named by its chain id, with the root hash and data size
 * of the layer file the snapshotter builds from it; then the overlay that assembles them with a
 * writable upper (CRI always prepares an active snapshot). Where the host chooses a value at run
 * time (the disk's PCI path, the snapshotter's directory, the container id) the entry is an
 * anchored pattern: policy options starting with ^ are patterns.
 */
function layerStorages(ctx: PodContext, img: ResolvedImage | undefined, what: string): PolicyStorage[] {
  if (!onLayers(ctx)) return [];
  if (!img) throw new ManifestError(`${what}: the image is not among the inputs, so its layers cannot be pinned (snapshotter tardev)`);
  const c = ctx.settings.common;
  let chain = '';
  const layers = img.layers.map((l) => {
    chain = chainIdOf(chain, l.diffId);
    if (!l.rootHash || !l.dataBytes) throw new ManifestError(`${what}: image ${img.name} layer ${l.diffId}: no root hash (resolve the image with verity)`);
    return { name: layerName(chain), rootHash: l.rootHash, dataBytes: l.dataBytes };
  });
  layers.reverse();
  const storage = (s: Pick<PolicyStorage, 'driver' | 'source' | 'fstype' | 'options' | 'mount_point'>): PolicyStorage => ({ driver_options: [], fs_group: null, shared: false, ...s });
  const overlay = layerOverlayOptions('/', layers, true);
  overlay[0] = `^${reEscape(LAYER_SRC_PREFIX)}/.*$`;
  return [
    ...layers.map((l) =>
      storage({
        driver: 'blk',
        source: c.layer_source,
        fstype: LAYER_STORAGE_FSTYPE,
        options: layerStorageOptions({ name: l.name, rootHash: l.rootHash, dataBytes: l.dataBytes, salt: ZERO_SALT_HEX }),
        mount_point: `${c.layers_path}/${l.name}`,
      }),
    ),
    storage({ driver: 'overlayfs', source: 'none', fstype: LAYER_OVERLAY_FSTYPE, options: overlay, mount_point: rootPath(ctx) }),
  ];
}

/** The pause (sandbox) container: containers[0]. */
export function sandboxPolicy(ctx: PodContext, pauseImage: ResolvedImage | undefined): ContainerPolicy {
  const t = ctx.settings.pause_container;
  const user = pauseUser(ctx, pauseImage);
  const args = pauseImage ? [...(pauseImage.config.Entrypoint ?? []), ...(pauseImage.config.Cmd ?? [])] : t.Args;
  const env = pauseImage ? (pauseImage.config.Env ?? ctx.settings.default_env) : [];
  const caps = ctx.settings.common.default_caps;
  return {
    name: '',
    OCI: {
      Version: ctx.settings.oci_version,
      Process: {
        Terminal: false,
        User: { UID: user.uid, GID: user.gid, AdditionalGids: sorted(user.gids), Username: '' },
        Args: args,
        Env: [...env],
        Cwd: pauseImage?.config.WorkingDir || '/',
        Capabilities: { Ambient: [], Bounding: caps, Effective: caps, Inheritable: [], Permitted: caps },
        NoNewPrivileges: t.NoNewPrivileges,
      },
      Root: { Path: rootPath(ctx), Readonly: true },
      Mounts: t.Mounts.map((m) => ({ ...m, source: fill(m.source, ctx) })),
      Annotations: annotations(ctx, t.Annotations, ''),
      Linux: {
        Namespaces: namespaces(ctx, true),
        MaskedPaths: t.MaskedPaths,
        ReadonlyPaths: t.ReadonlyPaths,
        Devices: [],
        Sysctl: sysctls(ctx, t.Sysctl),
      },
    },
    env_regex: [],
    optional_mounts: [],
    storages: layerStorages(ctx, pauseImage, `${ctx.pod.origin} sandbox (pause) container`),
    devices: [],
    sandbox_pidns: false,
    exec_commands: [],
    image: imageRef(pauseImage, ctx.settings.cluster_config.pause_container_image),
  };
}

export function workloadPolicy(ctx: PodContext, c: ContainerLike, img: ResolvedImage): ContainerPolicy {
  const t = ctx.settings.other_container;
  const where = `${ctx.pod.origin} container ${c.name}`;
  if (c.securityContext?.privileged) throw new ManifestError(`${where}: privileged containers are not supported`);
  if (c.volumeDevices?.length) throw new ManifestError(`${where}: volumeDevices are not supported`);
  const seccomp = c.securityContext?.seccompProfile?.type ?? ctx.pod.spec.securityContext?.seccompProfile?.type;
  if (seccomp && seccomp !== 'Unconfined') throw new ManifestError(`${where}: seccompProfile ${seccomp}: the policy requires containers without a seccomp filter from the host`);

  // Environment: the image's (or containerd's default), HOSTNAME, TERM for a terminal, then kubelet's.
  const vars = new Map<string, Template>();
  for (const e of img.config.Env ?? ctx.settings.default_env) {
    const eq = e.indexOf('=');
    vars.set(eq < 0 ? e : e.slice(0, eq), literal(eq < 0 ? '' : e.slice(eq + 1)));
  }
  // containerd's HOSTNAME: the node's for a host-network pod, else the pod's hostname (its name, at most 63 characters)
  let hostname: Template = [{ re: ctx.pod.nameRegex }];
  if (ctx.pod.spec.hostNetwork) hostname = [{ re: ctx.pat.dnsLabel }];
  else if (ctx.pod.spec.hostname) hostname = literal(ctx.pod.spec.hostname);
  else if (ctx.pod.exactName) hostname = literal(ctx.pod.exactName.slice(0, 63));
  vars.set('HOSTNAME', hostname);
  if (c.tty) vars.set('TERM', literal('xterm'));
  const kube = kubeletEnv(ctx.pod, c, ctx.configs, ctx.pat);
  for (const [k, v] of kube) vars.set(k, v);
  const env: string[] = [];
  const envRegex: string[] = [];
  for (const [k, v] of vars) {
    if (isExact(v)) env.push(`${k}=${text(v)}`);
    else envRegex.push(`^${toRegex([`${k}=`, ...v])}$`);
  }

  // kubelet expands $(VAR) in command and args with the container's variables only.
  const args = processArgs(c, img, new Map(kube));
  const exactArgs = args.every(isExact);

  const user = containerUser(ctx, c, img);
  const caps = capabilities(ctx, c);
  const ro = c.securityContext?.readOnlyRootFilesystem === true;
  const access = ro ? 'ro' : 'rw';
  const termination = c.terminationMessagePath ?? '/dev/termination-log';
  const base = t.Mounts.map((m) => ({ ...m, source: fill(m.source, ctx), options: m.options.map((o) => (o === '$(rootfs-access)' ? access : o)) }));
  const optional = t.OptionalMounts.map((m) => ({ ...m, destination: m.destination === '$(termination-log)' ? termination : m.destination, source: fill(m.source, ctx) }));
  const vols = volumeMounts(ctx, c);
  const optionalDests = optional.map((m) => m.destination);
  // The service account token kubelet mounts unless the pod opts out.
  if (ctx.pod.spec.automountServiceAccountToken !== false && !vols.some((m) => m.destination === '/var/run/secrets/kubernetes.io/serviceaccount')) {
    optional.push({ destination: '/var/run/secrets/kubernetes.io/serviceaccount', source: sharedSource(ctx), type_: 'bind', options: ['rbind', 'rprivate', 'ro'] });
    optionalDests.push('/var/run/secrets/kubernetes.io/serviceaccount');
  }
  // A volume on a destination CRI also mounts replaces CRI's (containerd skips its own then).
  const volDests = new Set(vols.map((m) => m.destination));
  const mounts = [...base.filter((m) => !volDests.has(m.destination)), ...vols, ...optional.filter((m) => !volDests.has(m.destination))];

  return {
    name: c.name,
    OCI: {
      Version: ctx.settings.oci_version,
      Process: {
        Terminal: c.tty === true,
        User: { UID: user.uid, GID: user.gid, AdditionalGids: sorted(user.gids), Username: '' },
        Args: args.map(text),
        Env: env,
        Cwd: c.workingDir || img.config.WorkingDir || '/',
        Capabilities: { Ambient: [], Bounding: caps, Effective: caps, Inheritable: [], Permitted: caps },
        NoNewPrivileges: c.securityContext?.allowPrivilegeEscalation === false,
      },
      Root: { Path: rootPath(ctx), Readonly: ro },
      Mounts: mounts,
      Annotations: annotations(ctx, t.Annotations, c.name),
      Linux: {
        Namespaces: namespaces(ctx, false),
        MaskedPaths: t.MaskedPaths,
        ReadonlyPaths: t.ReadonlyPaths,
        Devices: [],
        Sysctl: sysctls(ctx, t.Sysctl),
      },
    },
    ...(exactArgs ? {} : { args_regex: args.map((a) => `^${toRegex(a)}$`) }),
    env_regex: envRegex,
    optional_mounts: sorted(new Set(optionalDests.filter((d) => !volDests.has(d)))),
    storages: layerStorages(ctx, img, where),
    devices: [],
    sandbox_pidns: ctx.pod.spec.shareProcessNamespace === true,
    exec_commands: execCommands(ctx, c),
    image: imageRef(img, c.image),
  };
}
