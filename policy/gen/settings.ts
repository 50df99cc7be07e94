// Platform facts `katats policy gen` needs, in the role genpolicy-settings.json has for Kata:
// what containerd's CRI plugin puts into every OCI spec, how our shim rewrites paths for the
// guest, the pause image, and the defaults for requests that are not about one container.
// The defaults describe Debian bookworm's containerd 1.6 with the katats shim sharing rootfs over
// virtio-9p/virtio-fs (captured from a real CRI pod); another containerd or layout is another
// settings file (`katats policy gen --settings FILE`, `--print-settings` prints these).
import fs from 'node:fs';

export interface PolicyMount {
  destination: string;
  /** An anchored regular expression where the source is a path chosen at run time; else the exact source. */
  source: string;
  type_: string;
  options: string[];
}

export interface PolicyStorage {
  driver: string;
  driver_options: string[];
  source: string;
  fstype: string;
  options: string[];
  mount_point: string;
  fs_group: null | { group_id: number; group_change_policy: number };
  shared: boolean;
}

export interface ContainerTemplate {
  /** The mounts containerd's default spec and CRI add to every such container, before the pod's volumes. */
  Mounts: PolicyMount[];
  /** Annotation values are anchored regular expressions; `$(...)` placeholders are filled per pod. */
  Annotations: Record<string, string>;
  MaskedPaths: string[];
  ReadonlyPaths: string[];
  Sysctl: Record<string, string>;
}

export interface Settings {
  /** The runtime-spec version containerd writes into every OCI spec. */
  oci_version: string;
  pause_container: ContainerTemplate & {
    /** The pause image's command when the image itself is not among the inputs. */
    Args: string[];
    NoNewPrivileges: boolean;
  };
  other_container: ContainerTemplate & {
    /** Mounts kubelet or CRI add only for some containers: allowed, not required, and only these destinations. */
    OptionalMounts: PolicyMount[];
  };
  /** Environment when an image has none (containerd's defaultUnixEnv). */
  default_env: string[];
  common: {
    /** Where the guest sees the shared directory. */
    cpath: string;
    /** A container's rootfs in the guest; $(bundle-id) is the container id. */
    root_path: string;
    /** Prefix (regex) of the files and directories the shim shares into one container. */
    sfprefix: string;
    /** Guest-local sandbox storage (block volumes). */
    spath: string;
    /** With the tardev snapshotter: where the guest mounts each verified layer (a directory per layer name). */
    layers_path: string;
    /** With the tardev snapshotter: a container's rootfs in the guest (the overlay of its layers); $(bundle-id) is the container id. */
    layer_root_path: string;
    /** With the tardev snapshotter: a layer disk's source, its PCI path in the guest. */
    layer_source: string;
    ipv4_a: string;
    ip_p: string;
    svc_name_downward_env: string;
    dns_label: string;
    uuid: string;
    default_caps: string[];
    privileged_caps: string[];
  };
  sandbox: {
    /** Each CreateSandbox storage must equal one of these. */
    storages: PolicyStorage[];
  };
  /** Annotations CRI may pass through from the pod or container (runtime config), key regex -> value regex. */
  runtime_anno_patterns: Record<string, string>;
  cluster_config: {
    /** containerd's sandbox_image. */
    pause_container_image: string;
    /**
     * The snapshotter CRI uses for the pods: "tardev" pins each container's verified layers (root
     * hashes, order, mount points) and its rootfs in the guest; anything else (the default,
     * "overlayfs") means a rootfs shared with the guest, and no storages for containers.
     */
    snapshotter: string;
  };
  request_defaults: {
    CreateContainerRequest: { allow_env_regex: string[] };
    /** Regexes of guest paths the host may write with CopyFile. */
    CopyFileRequest: string[];
    ExecProcessRequest: { allowed_commands: string[][]; regex: string[] };
    UpdateRoutesRequest: { forbidden_device_names: string[]; forbidden_source_regex: string[] };
    UpdateInterfaceRequest: { allow_raw_flags: number; forbidden_names: string[]; forbidden_hw_addrs: string[] };
    AddARPNeighborsRequest: { forbidden_device_names: string[]; forbidden_cidrs_regex: string[]; allowed_states: number[] };
    CloseStdinRequest: boolean;
    GetDiagnosticDataRequest: boolean;
    ReadStreamRequest: boolean;
    UpdateEphemeralMountsRequest: boolean;
    WriteStreamRequest: boolean;
  };
}

const NOSUID_NOEXEC_NODEV = ['nosuid', 'noexec', 'nodev'];

/** containerd's default spec mounts (oci/spec.go populateDefaultUnixSpec), as CRI leaves them. */
function containerdMounts(cgroup: boolean): PolicyMount[] {
  return [
    { destination: '/proc', source: 'proc', type_: 'proc', options: NOSUID_NOEXEC_NODEV },
    { destination: '/dev', source: 'tmpfs', type_: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', source: 'devpts', type_: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/mqueue', source: 'mqueue', type_: 'mqueue', options: NOSUID_NOEXEC_NODEV },
    { destination: '/sys', source: 'sysfs', type_: 'sysfs', options: [...NOSUID_NOEXEC_NODEV, 'ro'] },
    ...(cgroup ? [{ destination: '/sys/fs/cgroup', source: 'cgroup', type_: 'cgroup', options: [...NOSUID_NOEXEC_NODEV, 'relatime', 'ro'] }] : []),
  ];
}

const POD_SHM = '/run/kata-containers/sandbox/shm';

export const DEFAULT_SETTINGS: Settings = {
  oci_version: '1.0.2-dev',
  pause_container: {
    Args: ['/pause'],
    NoNewPrivileges: true,
    Mounts: [
      ...containerdMounts(false),
      // The sandbox keeps containerd's own /dev/shm tmpfs entry and gets the pod's shm bound over it.
      { destination: '/dev/shm', source: 'shm', type_: 'tmpfs', options: [...NOSUID_NOEXEC_NODEV, 'mode=1777', 'size=65536k'] },
      { destination: '/dev/shm', source: `^${POD_SHM}$`, type_: 'bind', options: ['rbind', 'ro'] },
      { destination: '/etc/resolv.conf', source: '$(sfprefix)[0-9a-f]{12}-resolv\\.conf$', type_: 'bind', options: ['rbind', 'ro'] },
    ],
    Annotations: {
      'io.kubernetes.cri.container-type': '^sandbox$',
      'io.kubernetes.cri.sandbox-id': '^$(bundle-id)$',
      'io.kubernetes.cri.sandbox-name': '^$(sandbox-name)$',
      'io.kubernetes.cri.sandbox-namespace': '^$(sandbox-namespace)$',
      'io.kubernetes.cri.sandbox-uid': '^$(uuid)$',
      'io.kubernetes.cri.sandbox-log-directory': '^/var/log/pods/$(sandbox-namespace)_$(sandbox-name)_$(uuid)$',
    },
    MaskedPaths: ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi'],
    ReadonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    Sysctl: { 'net.ipv4.ip_unprivileged_port_start': '0', 'net.ipv4.ping_group_range': '0 2147483647' },
  },
  other_container: {
    Mounts: [
      ...containerdMounts(true),
      { destination: '/etc/hostname', source: '$(sfprefix)[0-9a-f]{12}-hostname$', type_: 'bind', options: ['rbind', 'rprivate', '$(rootfs-access)'] },
      { destination: '/etc/resolv.conf', source: '$(sfprefix)[0-9a-f]{12}-resolv\\.conf$', type_: 'bind', options: ['rbind', 'rprivate', '$(rootfs-access)'] },
      { destination: '/dev/shm', source: `^${POD_SHM}$`, type_: 'bind', options: ['rbind', 'rprivate', 'rw'] },
    ],
    OptionalMounts: [
      // kubelet's hosts file and the container's termination log (its path per container).
      { destination: '/etc/hosts', source: '$(sfprefix)[0-9a-f]{12}-[^/]+$', type_: 'bind', options: ['rbind', 'rprivate', 'rw'] },
      { destination: '$(termination-log)', source: '$(sfprefix)[0-9a-f]{12}-[^/]+$', type_: 'bind', options: ['rbind', 'rprivate', 'rw'] },
    ],
    Annotations: {
      'io.kubernetes.cri.container-type': '^container$',
      'io.kubernetes.cri.container-name': '^$(container-name)$',
      'io.kubernetes.cri.sandbox-id': '^[0-9a-f]{64}$',
      'io.kubernetes.cri.sandbox-name': '^$(sandbox-name)$',
      'io.kubernetes.cri.sandbox-namespace': '^$(sandbox-namespace)$',
      'io.kubernetes.cri.sandbox-uid': '^$(uuid)$',
    },
    MaskedPaths: ['/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware'],
    ReadonlyPaths: ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    Sysctl: { 'net.ipv4.ip_unprivileged_port_start': '0', 'net.ipv4.ping_group_range': '0 2147483647' },
  },
  default_env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  common: {
    cpath: '/run/kata-containers/shared/containers',
    root_path: '^$(cpath)/$(bundle-id)/rootfs$',
    sfprefix: '^$(cpath)/$(bundle-id)/mounts/',
    spath: '/run/kata-containers/sandbox/storage',
    layers_path: '/run/kata-containers/sandbox/layers',
    layer_root_path: '^/run/kata-containers/containers/$(bundle-id)/rootfs$',
    layer_source: '^[0-9a-f]{2}(/[0-9a-f]{2}){0,7}$',
    ipv4_a: '(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])',
    ip_p: '[0-9]{1,5}',
    svc_name_downward_env: '[A-Z](?:[A-Z0-9_]{0,61}[A-Z0-9])?',
    dns_label: '[a-zA-Z0-9_\\.\\-]+',
    uuid: '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
    default_caps: [
      'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
      'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
    ],
    privileged_caps: [
      'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
      'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW',
      'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT',
      'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD',
      'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
      'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
    ],
  },
  sandbox: {
    storages: [
      {
        driver: '9p', driver_options: [], source: 'kataShared', fstype: '9p',
        options: ['trans=virtio', 'version=9p2000.L', 'msize=512000', 'cache=mmap'],
        mount_point: '/run/kata-containers/shared/containers', fs_group: null, shared: false,
      },
      {
        driver: 'virtio-fs', driver_options: [], source: 'kataShared', fstype: 'virtiofs',
        options: [], mount_point: '/run/kata-containers/shared/containers', fs_group: null, shared: false,
      },
      {
        driver: 'ephemeral', driver_options: [], source: 'shm', fstype: 'tmpfs',
        options: ['noexec', 'nosuid', 'nodev', 'mode=1777', 'size=67108864'],
        mount_point: POD_SHM, fs_group: null, shared: false,
      },
    ],
  },
  runtime_anno_patterns: {
    // CRI names the image as it resolved it (not always as the pod spelled it).
    '^io\\.kubernetes\\.cri\\.image-name$': '^.+$',
  },
  cluster_config: {
    pause_container_image: 'katats.local/pause:latest',
    snapshotter: 'overlayfs',
  },
  request_defaults: {
    CreateContainerRequest: {
      allow_env_regex: [
        '^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)=(tcp|udp|sctp)://$(ipv4_a):$(ip_p)$',
        '^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PROTO=(tcp|udp|sctp)$',
        '^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_PORT=$(ip_p)$',
        '^$(svc_name_downward_env)_PORT_$(ip_p)_(TCP|UDP|SCTP)_ADDR=$(ipv4_a)$',
        '^$(svc_name_downward_env)_SERVICE_HOST=$(ipv4_a)$',
        '^$(svc_name_downward_env)_SERVICE_PORT=$(ip_p)$',
        '^$(svc_name_downward_env)_SERVICE_PORT_$(dns_label)=$(ip_p)$',
        '^$(svc_name_downward_env)_PORT=(tcp|udp|sctp)://$(ipv4_a):$(ip_p)$',
      ],
    },
    CopyFileRequest: [],
    ExecProcessRequest: { allowed_commands: [], regex: [] },
    UpdateRoutesRequest: {
      forbidden_device_names: ['lo'],
      forbidden_source_regex: ['^(?:0{0,4}:){0,7}0{0,3}1$', '^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$'],
    },
    UpdateInterfaceRequest: { allow_raw_flags: 128, forbidden_names: ['lo'], forbidden_hw_addrs: ['00:00:00:00:00:00'] },
    AddARPNeighborsRequest: {
      forbidden_device_names: ['lo'],
      forbidden_cidrs_regex: ['^127\\.(?:[0-9]{1,3}\\.){2}[0-9]{1,3}$'],
      allowed_states: [2, 128],
    },
    CloseStdinRequest: false,
    GetDiagnosticDataRequest: false,
    ReadStreamRequest: false,
    UpdateEphemeralMountsRequest: false,
    WriteStreamRequest: false,
  },
};

export class SettingsError extends Error {
  override readonly name = 'SettingsError';
  readonly code = 'KATATS_POLICY_SETTINGS';
}

/** The shape check: every key of the defaults present with the same kind of value, nothing unknown. */
function check(v: unknown, ref: unknown, at: string): void {
  const kind = (x: unknown) => (x === null ? 'null' : Array.isArray(x) ? 'array' : typeof x);
  if (ref === null) return; // fs_group: null or an object
  if (kind(v) !== kind(ref)) throw new SettingsError(`settings: ${at} must be ${kind(ref) === 'object' ? 'an object' : `a ${kind(ref)}`}, got ${kind(v)}`);
  if (Array.isArray(ref) && Array.isArray(v)) {
    if (ref.length > 0) v.forEach((x, i) => check(x, ref[0], `${at}[${i}]`));
    return;
  }
  if (kind(ref) !== 'object') return;
  const r = ref as Record<string, unknown>;
  const o = v as Record<string, unknown>;
  // Maps keyed by the user (annotations, sysctls, patterns): values only.
  if (/(Annotations|Sysctl|runtime_anno_patterns)$/.test(at)) {
    for (const [k, x] of Object.entries(o)) if (typeof x !== 'string') throw new SettingsError(`settings: ${at}.${k} must be a string`);
    return;
  }
  for (const k of Object.keys(o)) if (!(k in r)) throw new SettingsError(`settings: unknown key ${at ? `${at}.` : ''}${k}`);
  for (const k of Object.keys(r)) {
    if (!(k in o)) throw new SettingsError(`settings: missing key ${at ? `${at}.` : ''}${k}`);
    check(o[k], r[k], at ? `${at}.${k}` : k);
  }
}

export function parseSettings(text: string, file = 'settings'): Settings {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new SettingsError(`${file}: not JSON: ${(e as Error).message}`);
  }
  try {
    check(v, DEFAULT_SETTINGS, '');
  } catch (e) {
    if (e instanceof SettingsError) throw new SettingsError(`${file}: ${e.message}`);
    throw e;
  }
  return v as Settings;
}

export function loadSettings(file: string | undefined): Settings {
  if (!file) return DEFAULT_SETTINGS;
  return parseSettings(fs.readFileSync(file, 'utf8'), file);
}
