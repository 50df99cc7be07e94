// The shim's configuration: TOML with Kata's key names where they map, found where Kata users look
// for it, and overridable per pod by the annotations the config allows.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { INTERNETWORKING_MODELS, type InternetworkingModel } from './network/pod-network.js';
import { TCG_CUTS, type TcgCut } from '../vmm/config.js';

export interface QemuConfig {
  path: string;
  /** A katats guest image manifest (guest/ builds it): kernel, initrd, image and command line from one file. */
  guest_manifest: string;
  kernel: string;
  initrd: string;
  image: string;
  machine_type: string;
  kernel_params: string;
  default_vcpus: number;
  default_memory: number;
  /** Kata's cap on a VM's vCPUs; 0: the host's online CPUs. Never above those. */
  default_maxvcpus: number;
  /** Kata's cap on a VM's memory in MiB; 0: the host's MemTotal. Never above that. */
  default_maxmemory: number;
  shared_fs: 'virtio-9p' | 'virtio-fs' | 'none';
  /** PCIe root ports for hot-plugged disks (q35): one per image layer a pod uses at once. */
  pcie_root_port: number;
  /** QEMU's 9p security model for shared_fs = virtio-9p (see vmm/config.ts SharedDirConfig). */
  virtio_9p_security_model: 'mapped-xattr' | 'none';
  virtio_fs_daemon: string;
  /** 'auto' probes KVM with a hard time limit and falls back to TCG. */
  accel: 'auto' | 'kvm' | 'tcg';
  /**
   * TCG's translated-code buffer per VM in MiB (QEMU's tb-size); 0: QEMU's default (1 GiB, filled
   * as code is translated: ~80 MiB by an idle clone's start). Unused under KVM. See bench/density.ts.
   */
  tcg_tb_size: number;
  /** The guest agent's JIT: auto = off under TCG, on under KVM (VmConfig.guestNodeJit). */
  node_jit: TcgCut;
  /** ASLR of the guest's crun commands that start no process: auto = off under TCG (VmConfig.guestCrunAslr). */
  crun_aslr: TcgCut;
  /** Regexes of annotation keys (after the io.katacontainers.config.hypervisor. prefix) a pod may set. */
  enable_annotations: string[];
}

/**
 * [hypervisor.clh], Kata's configuration-clh.toml keys. cloud-hypervisor shares the guest only
 * over virtio-fs (it has no 9p). `vmm` says what serves its API: the real binary at `path`, or
 * katats-chv (the same API on QEMU, run per [hypervisor.qemu]'s path, accel and machine_type).
 */
export interface ClhConfig {
  path: string;
  guest_manifest: string;
  kernel: string;
  initrd: string;
  image: string;
  kernel_params: string;
  default_vcpus: number;
  default_memory: number;
  default_maxvcpus: number;
  default_maxmemory: number;
  shared_fs: 'virtio-fs' | 'none';
  virtio_fs_daemon: string;
  enable_annotations: string[];
  /** 'auto': the real binary when it runs here (it needs /dev/kvm or /dev/mshv), else katats-chv. */
  vmm: 'auto' | 'cloud-hypervisor' | 'katats-chv';
  /** Seconds one API call may take (vm.boot has boot_timeout): Kata's fixed 1 s half-booted guests. */
  api_timeout: number;
  /** Seconds vm.boot may take to be answered. */
  boot_timeout: number;
}

export type HypervisorKind = 'qemu' | 'clh';

export interface KatatsConfig {
  hypervisor: { qemu: QemuConfig; clh: ClhConfig };
  agent: { katats: { dial_timeout: number; debug_console_enabled: boolean; kernel_modules: string[] } };
  runtime: {
    /**
     * Which [hypervisor.X] runs the pods. Empty in a file: the one hypervisor table the file has
     * (a Kata configuration-clh.toml has only [hypervisor.clh]), qemu when it has both or none.
     * Always resolved after parsing.
     */
    hypervisor: '' | HypervisorKind;
    enable_debug: boolean;
    sandbox_cgroup_only: boolean;
    log_dir: string;
    state_dir: string;
    /** Kata's key: how the pod's network namespace reaches the VM (tcfilter: TAPs glued to the veths by tc; none: not at all). */
    internetworking_model: InternetworkingModel;
  };
  /**
   * Kata's [factory]: with enable_template a pod's VM is a clone of a template booted once (`katats
   * factory init`) under template_path (a tmpfs; init mounts one there when it is not), when the
   * pod's VM has the template's shape; else a cold boot, with a log line saying why. QEMU only.
   */
  factory: { enable_template: boolean; template_path: string };
  /**
   * [attestation] snp_socket: the control socket of the node's emulated SEV-SNP firmware (`katats snp
   * serve`). Set, each pod's VM is registered at launch with its MEASUREMENT and HOST_DATA and gets
   * a virtio-serial port (katats.snp.0) to its own report socket; empty (the default): none. QEMU only.
   */
  attestation: { snp_socket: string };
  /** Where the config came from, for `katats env` and logs. */
  source: string;
}

export const DEFAULT_CONFIG_PATHS = ['/etc/katats/configuration.toml', '/usr/share/defaults/katats/configuration.toml'];

export const DEFAULTS: Omit<KatatsConfig, 'source'> = {
  hypervisor: {
    qemu: {
      path: '/usr/bin/qemu-system-x86_64',
      guest_manifest: '/usr/share/katats/guest/manifest.json',
      kernel: '',
      initrd: '',
      image: '',
      machine_type: 'q35',
      kernel_params: '',
      default_vcpus: 1,
      default_memory: 512,
      default_maxvcpus: 0,
      default_maxmemory: 0,
      shared_fs: 'virtio-9p',
      pcie_root_port: 8,
      virtio_9p_security_model: 'none',
      virtio_fs_daemon: '',
      accel: 'auto',
      tcg_tb_size: 64,
      node_jit: 'auto',
      crun_aslr: 'auto',
      enable_annotations: ['default_vcpus', 'default_memory', 'kernel_params'],
    },
    clh: {
      path: '/usr/bin/cloud-hypervisor',
      guest_manifest: '/usr/share/katats/guest/manifest.json',
      kernel: '',
      initrd: '',
      image: '',
      kernel_params: '',
      default_vcpus: 1,
      default_memory: 512,
      default_maxvcpus: 0,
      default_maxmemory: 0,
      shared_fs: 'virtio-fs',
      virtio_fs_daemon: '',
      enable_annotations: ['default_vcpus', 'default_memory', 'kernel_params'],
      vmm: 'auto',
      api_timeout: 10,
      boot_timeout: 60,
    },
  },
  agent: { katats: { dial_timeout: 60, debug_console_enabled: false, kernel_modules: [] } },
  runtime: { hypervisor: '', enable_debug: false, sandbox_cgroup_only: false, log_dir: '/var/log/katats', state_dir: '/run/katats', internetworking_model: 'tcfilter' },
  factory: { enable_template: false, template_path: '/run/katats/template' },
  attestation: { snp_socket: '' },
};

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type Section = Record<string, unknown>;

function merge<T extends Section>(base: T, over: Section | undefined, where: string): T {
  if (over === undefined) return base;
  const out: Section = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (!(k in base)) throw new ConfigError(`${where}: unknown key "${k}" (known: ${Object.keys(base).join(', ')})`);
    const b = base[k];
    if (b !== null && typeof b === 'object' && !Array.isArray(b)) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ConfigError(`${where}.${k}: expected a table`);
      out[k] = merge(b as Section, v as Section, `${where}.${k}`);
    } else if (Array.isArray(b)) {
      if (!Array.isArray(v)) throw new ConfigError(`${where}.${k}: expected an array`);
      out[k] = v;
    } else if (typeof v !== typeof b) {
      throw new ConfigError(`${where}.${k}: expected a ${typeof b}, got ${Array.isArray(v) ? 'array' : typeof v}`);
    } else {
      out[k] = v;
    }
  }
  return out as T;
}

const SHARED_FS = ['virtio-9p', 'virtio-fs', 'none'];

function checkSharedFs(cfg: Omit<KatatsConfig, 'source'>, where: string): void {
  const q = cfg.hypervisor.qemu;
  if (!SHARED_FS.includes(q.shared_fs)) throw new ConfigError(`${where}: hypervisor.qemu.shared_fs must be virtio-9p, virtio-fs or none, not ${JSON.stringify(q.shared_fs)}`);
  if (!Number.isInteger(q.pcie_root_port) || q.pcie_root_port < 0 || q.pcie_root_port > 32) {
    throw new ConfigError(`${where}: hypervisor.qemu.pcie_root_port must be an integer 0..32, not ${q.pcie_root_port}`);
  }
  if (!['mapped-xattr', 'none'].includes(q.virtio_9p_security_model)) {
    throw new ConfigError(`${where}: hypervisor.qemu.virtio_9p_security_model must be mapped-xattr or none, not ${JSON.stringify(q.virtio_9p_security_model)}`);
  }
  if (!['virtio-fs', 'none'].includes(cfg.hypervisor.clh.shared_fs)) throw new ConfigError(`${where}: hypervisor.clh.shared_fs must be virtio-fs or none (cloud-hypervisor has no 9p), not ${JSON.stringify(cfg.hypervisor.clh.shared_fs)}`);
}

/** The selected hypervisor's section: what sizes, shares and boots the pods' VMs. */
export function hypervisorSection(cfg: Omit<KatatsConfig, 'source'>): QemuConfig | ClhConfig {
  return cfg.runtime.hypervisor === 'clh' ? cfg.hypervisor.clh : cfg.hypervisor.qemu;
}

/** The selected hypervisor (resolved at parse time; qemu for a config built by hand without one). */
export function hypervisorKind(cfg: Omit<KatatsConfig, 'source'>): HypervisorKind {
  return cfg.runtime.hypervisor === 'clh' ? 'clh' : 'qemu';
}

/** Parses TOML text over the defaults; unknown keys and wrong types are errors naming the key. */
export function parseConfig(text: string, source = '<inline>'): KatatsConfig {
  let doc: Section;
  try {
    doc = parseToml(text) as Section;
  } catch (e) {
    throw new ConfigError(`${source}: ${(e as Error).message}`);
  }
  return parseDoc(doc, source);
}

function checkSizes(q: QemuConfig | ClhConfig, where: string): void {
  if (!Number.isInteger(q.default_vcpus) || q.default_vcpus < 1) throw new ConfigError(`${where}.default_vcpus must be a positive integer`);
  if (!Number.isInteger(q.default_memory) || q.default_memory < 64) throw new ConfigError(`${where}.default_memory must be at least 64 (MiB)`);
  for (const k of ['default_maxvcpus', 'default_maxmemory'] as const) {
    if (!Number.isInteger(q[k]) || q[k] < 0) throw new ConfigError(`${where}.${k} must be a non-negative integer (0: the host's limit)`);
  }
  if (q.default_maxvcpus && q.default_vcpus > q.default_maxvcpus) throw new ConfigError(`${where}.default_vcpus (${q.default_vcpus}) exceeds default_maxvcpus (${q.default_maxvcpus})`);
  if (q.default_maxmemory && q.default_memory > q.default_maxmemory) throw new ConfigError(`${where}.default_memory (${q.default_memory}) exceeds default_maxmemory (${q.default_maxmemory})`);
}

function parseDoc(doc: Section, source: string): KatatsConfig {
  const cfg = merge(DEFAULTS as unknown as Section, doc, source) as unknown as KatatsConfig;
  const q = cfg.hypervisor.qemu;
  checkSharedFs(cfg, source);
  if (!['auto', 'kvm', 'tcg'].includes(q.accel)) throw new ConfigError(`${source}: hypervisor.qemu.accel must be auto, kvm or tcg`);
  for (const k of ['node_jit', 'crun_aslr'] as const) if (!TCG_CUTS.includes(q[k])) throw new ConfigError(`${source}: hypervisor.qemu.${k} must be auto, on or off`);
  if (!Number.isInteger(q.tcg_tb_size) || q.tcg_tb_size < 0) throw new ConfigError(`${source}: hypervisor.qemu.tcg_tb_size must be a non-negative integer (MiB; 0: QEMU's default)`);
  checkSizes(q, `${source}: hypervisor.qemu`);
  const clh = cfg.hypervisor.clh;
  checkSizes(clh, `${source}: hypervisor.clh`);
  if (!['auto', 'cloud-hypervisor', 'katats-chv'].includes(clh.vmm)) throw new ConfigError(`${source}: hypervisor.clh.vmm must be auto, cloud-hypervisor or katats-chv`);
  for (const k of ['api_timeout', 'boot_timeout'] as const) {
    if (!(clh[k] > 0)) throw new ConfigError(`${source}: hypervisor.clh.${k} must be a positive number of seconds`);
  }
  const hv = cfg.runtime.hypervisor;
  if (!['', 'qemu', 'clh'].includes(hv)) throw new ConfigError(`${source}: runtime.hypervisor must be "qemu" or "clh", not ${JSON.stringify(hv)}`);
  if (!hv) {
    const tables = Object.keys((doc.hypervisor as Section | undefined) ?? {});
    // A fresh object: merge() shares untouched tables with DEFAULTS.
    cfg.runtime = { ...cfg.runtime, hypervisor: tables.length === 1 && tables[0] === 'clh' ? 'clh' : 'qemu' };
  }
  if (!INTERNETWORKING_MODELS.includes(cfg.runtime.internetworking_model)) {
    throw new ConfigError(`${source}: runtime.internetworking_model must be ${INTERNETWORKING_MODELS.join(' or ')}, not ${JSON.stringify(cfg.runtime.internetworking_model)} (Kata's macvtap is not supported)`);
  }
  // Kata's key, kept so its configs parse; silently ignoring a list would run pods without the modules.
  if (cfg.agent.katats.kernel_modules.length) throw new ConfigError(`${source}: agent.katats.kernel_modules: loading guest kernel modules is not supported (guest images carry only their boot modules); leave the list empty`);
  if (cfg.factory.enable_template && !/^\/[A-Za-z0-9/._-]*$/.test(cfg.factory.template_path)) {
    throw new ConfigError(`${source}: factory.template_path must be an absolute path of letters, digits, '/', '.', '_' and '-'`);
  }
  if (cfg.attestation.snp_socket) {
    if (!path.isAbsolute(cfg.attestation.snp_socket) || Buffer.byteLength(cfg.attestation.snp_socket) > 107) {
      throw new ConfigError(`${source}: attestation.snp_socket must be an absolute path of at most 107 bytes (a unix socket's)`);
    }
    if (cfg.runtime.hypervisor === 'clh') throw new ConfigError(`${source}: attestation.snp_socket is wired for QEMU only; runtime.hypervisor is clh`);
  }
  return { ...cfg, source };
}

/**
 * Loads the config from, in order: an explicit path (runtime options' ConfigPath), the
 * KATATS_CONF_FILE environment variable, then the default locations. No file: defaults.
 */
export function loadConfig(explicit?: string, env: NodeJS.ProcessEnv = process.env): KatatsConfig {
  const candidates = [explicit, env.KATATS_CONF_FILE].filter((p): p is string => !!p);
  for (const p of candidates) {
    if (!fs.existsSync(p)) throw new ConfigError(`config file ${p} does not exist`);
  }
  for (const p of [...candidates, ...DEFAULT_CONFIG_PATHS]) {
    if (fs.existsSync(p)) return parseConfig(fs.readFileSync(p, 'utf8'), path.resolve(p));
  }
  const d = structuredClone(DEFAULTS);
  return { ...d, runtime: { ...d.runtime, hypervisor: 'qemu' }, source: '<defaults>' };
}

const ANNOTATION_PREFIX = 'io.katacontainers.config.hypervisor.';

/**
 * Applies pod annotations such as io.katacontainers.config.hypervisor.default_vcpus, but only
 * the keys that enable_annotations allows: a pod must not pick its own kernel unless the node
 * operator said so.
 */
export function applyAnnotations(cfg: KatatsConfig, annotations: Record<string, string>, host: HostLimits = hostLimits()): KatatsConfig {
  const kind = hypervisorKind(cfg);
  const caps = vmCaps(hypervisorSection(cfg), host, kind);
  const out = structuredClone(cfg);
  const q = hypervisorSection(out) as unknown as Record<string, unknown>;
  const allowed = hypervisorSection(cfg).enable_annotations.map((r) => new RegExp(`^(?:${r})$`));
  for (const [key, value] of Object.entries(annotations)) {
    if (!key.startsWith(ANNOTATION_PREFIX)) continue;
    const name = key.slice(ANNOTATION_PREFIX.length);
    if (!(name in q)) throw new ConfigError(`annotation ${key}: no such hypervisor option`);
    if (!allowed.some((r) => r.test(name))) throw new ConfigError(`annotation ${key} is not allowed by hypervisor.${kind}.enable_annotations`);
    const cur = q[name];
    if (typeof cur === 'number') {
      const n = Number(value);
      if (!Number.isInteger(n) || n <= 0) throw new ConfigError(`annotation ${key}: "${value}" is not a positive integer`);
      // A pod sizes its VM only within the node's caps (and can lower a cap, never raise it).
      const cap = name === 'default_vcpus' || name === 'default_maxvcpus' ? caps.vcpus : name === 'default_memory' || name === 'default_maxmemory' ? caps.memoryMiB : undefined;
      if (cap !== undefined && n > cap.value) throw new ConfigError(`annotation ${key}: ${n} is above ${cap.what} (${cap.value})`);
      q[name] = n;
    } else if (typeof cur === 'boolean') {
      q[name] = value === 'true';
    } else if (typeof cur === 'string') {
      q[name] = value;
    } else {
      throw new ConfigError(`annotation ${key}: option cannot be set by annotation`);
    }
  }
  checkSharedFs(out, `annotations ${ANNOTATION_PREFIX}*`);
  const after = hypervisorSection(out);
  if (after.default_memory < 64) throw new ConfigError(`annotation ${ANNOTATION_PREFIX}default_memory: at least 64 (MiB)`);
  const lowered = vmCaps(after, host, kind);
  if (after.default_vcpus > lowered.vcpus.value) throw new ConfigError(`annotations: default_vcpus ${after.default_vcpus} is above ${lowered.vcpus.what} (${lowered.vcpus.value})`);
  if (after.default_memory > lowered.memoryMiB.value) throw new ConfigError(`annotations: default_memory ${after.default_memory} is above ${lowered.memoryMiB.what} (${lowered.memoryMiB.value})`);
  return out;
}

/** What this host can give one VM: its online CPUs and its memory. */
export interface HostLimits {
  cpus: number;
  memoryMiB: number;
}

export function hostLimits(): HostLimits {
  let memoryMiB = Math.floor(os.totalmem() / (1 << 20));
  try {
    const m = /^MemTotal:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) memoryMiB = Math.floor(Number(m[1]) / 1024);
  } catch {
    // os.totalmem() reads the same number.
  }
  return { cpus: os.availableParallelism(), memoryMiB };
}

/** The caps in force: Kata's default_max* keys (0: the host's), never above the host's limits. */
export function vmCaps(q: QemuConfig | ClhConfig, host: HostLimits, kind: HypervisorKind = 'qemu'): { vcpus: { value: number; what: string }; memoryMiB: { value: number; what: string } } {
  const pick = (configured: number, hostValue: number, key: string, hostWhat: string) =>
    configured > 0 && configured <= hostValue ? { value: configured, what: `hypervisor.${kind}.${key}` } : { value: hostValue, what: hostWhat };
  return {
    vcpus: pick(q.default_maxvcpus, host.cpus, 'default_maxvcpus', "the host's online CPUs"),
    memoryMiB: pick(q.default_maxmemory, host.memoryMiB, 'default_maxmemory', "the host's memory in MiB"),
  };
}

/** CRI's runtimeoptions.v1.Options, decoded (shim/runtime-options.ts). */
export interface RuntimeOptions {
  config_path?: string;
  config_body?: Uint8Array;
}

/**
 * A sandbox's configuration, in one place: the shim's own config (`base`), replaced by the CRI
 * runtime options' ConfigPath or, when CRI sent no path, their config_body (containerd 1.6+ sends
 * the runtime's whole options table as TOML there; a ConfigPath always wins, as in Kata, which
 * reads only the path); then the pod's annotations within the caps. state_dir and log_dir always
 * stay the shim's own: `start` and `delete` never see the options. Errors are ConfigErrors.
 */
export function sandboxConfig(
  base: KatatsConfig,
  opts: RuntimeOptions | null | undefined,
  annotations: Record<string, string>,
  o: { host?: HostLimits; warn?: (fields: Record<string, unknown>, msg: string) => void } = {},
): KatatsConfig {
  let chosen = base;
  if (opts) {
    const body = Buffer.from(opts.config_body ?? []);
    if (opts.config_path) {
      if (body.length) o.warn?.({ configPath: opts.config_path }, 'runtime options carry both ConfigPath and a config body: ConfigPath wins');
      chosen = loadConfig(opts.config_path);
    } else if (body.length) {
      chosen = parseConfigBody(body.toString('utf8'));
    }
  }
  const own = base.runtime;
  if (chosen !== base && (chosen.runtime.state_dir !== own.state_dir || chosen.runtime.log_dir !== own.log_dir)) {
    o.warn?.({ source: chosen.source, ignored: { state_dir: chosen.runtime.state_dir, log_dir: chosen.runtime.log_dir } }, "runtime state_dir and log_dir come from the shim's own configuration, not the runtime options");
  }
  const merged = { ...chosen, runtime: { ...chosen.runtime, state_dir: own.state_dir, log_dir: own.log_dir } };
  return applyAnnotations(merged, annotations, o.host);
}

/** Keys of runtimeoptions.v1.Options itself that CRI leaves in the body: not config keys. */
const OPTIONS_KEYS = ['TypeUrl', 'ConfigPath', 'ConfigBody'];

function parseConfigBody(text: string): KatatsConfig {
  let doc: Section;
  try {
    doc = parseToml(text) as Section;
  } catch (e) {
    throw new ConfigError(`runtime options config body: ${(e as Error).message}`);
  }
  for (const k of OPTIONS_KEYS) delete doc[k];
  return parseDoc(doc, '<runtime options config body>');
}
