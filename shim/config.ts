// The shim's configuration: TOML with Kata's key names where they map, found where Kata users look
// for it, and overridable per pod by the annotations the config allows.
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';

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
  shared_fs: 'virtio-9p' | 'virtio-fs' | 'none';
  /** QEMU's 9p security model for shared_fs = virtio-9p (see vmm/config.ts SharedDirConfig). */
  virtio_9p_security_model: 'mapped-xattr' | 'none';
  virtio_fs_daemon: string;
  /** 'auto' probes KVM with a hard time limit and falls back to TCG. */
  accel: 'auto' | 'kvm' | 'tcg';
  /** Regexes of annotation keys (after the io.katacontainers.config.hypervisor. prefix) a pod may set. */
  enable_annotations: string[];
}

export interface KatatsConfig {
  hypervisor: { qemu: QemuConfig };
  agent: { katats: { dial_timeout: number; debug_console_enabled: boolean; kernel_modules: string[] } };
  runtime: { enable_debug: boolean; sandbox_cgroup_only: boolean; log_dir: string; state_dir: string };
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
      shared_fs: 'virtio-9p',
      virtio_9p_security_model: 'none',
      virtio_fs_daemon: '',
      accel: 'auto',
      enable_annotations: ['default_vcpus', 'default_memory', 'kernel_params'],
    },
  },
  agent: { katats: { dial_timeout: 60, debug_console_enabled: false, kernel_modules: [] } },
  runtime: { enable_debug: false, sandbox_cgroup_only: false, log_dir: '/var/log/katats', state_dir: '/run/katats' },
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

function checkSharedFs(q: QemuConfig, where: string): void {
  if (!SHARED_FS.includes(q.shared_fs)) throw new ConfigError(`${where}: hypervisor.qemu.shared_fs must be virtio-9p, virtio-fs or none, not ${JSON.stringify(q.shared_fs)}`);
  if (!['mapped-xattr', 'none'].includes(q.virtio_9p_security_model)) {
    throw new ConfigError(`${where}: hypervisor.qemu.virtio_9p_security_model must be mapped-xattr or none, not ${JSON.stringify(q.virtio_9p_security_model)}`);
  }
}

/** Parses TOML text over the defaults; unknown keys and wrong types are errors naming the key. */
export function parseConfig(text: string, source = '<inline>'): KatatsConfig {
  let doc: Section;
  try {
    doc = parseToml(text) as Section;
  } catch (e) {
    throw new ConfigError(`${source}: ${(e as Error).message}`);
  }
  const cfg = merge(DEFAULTS as unknown as Section, doc, source) as unknown as KatatsConfig;
  const q = cfg.hypervisor.qemu;
  checkSharedFs(q, source);
  if (!['auto', 'kvm', 'tcg'].includes(q.accel)) throw new ConfigError(`${source}: hypervisor.qemu.accel must be auto, kvm or tcg`);
  if (!Number.isInteger(q.default_vcpus) || q.default_vcpus < 1) throw new ConfigError(`${source}: hypervisor.qemu.default_vcpus must be a positive integer`);
  if (!Number.isInteger(q.default_memory) || q.default_memory < 64) throw new ConfigError(`${source}: hypervisor.qemu.default_memory must be at least 64 (MiB)`);
  // Kata's key, kept so its configs parse; silently ignoring a list would run pods without the modules.
  if (cfg.agent.katats.kernel_modules.length) throw new ConfigError(`${source}: agent.katats.kernel_modules: loading guest kernel modules is not supported (guest images carry only their boot modules); leave the list empty`);
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
  return { ...structuredClone(DEFAULTS), source: '<defaults>' };
}

const ANNOTATION_PREFIX = 'io.katacontainers.config.hypervisor.';

/**
 * Applies pod annotations such as io.katacontainers.config.hypervisor.default_vcpus, but only
 * the keys that enable_annotations allows: a pod must not pick its own kernel unless the node
 * operator said so.
 */
export function applyAnnotations(cfg: KatatsConfig, annotations: Record<string, string>): KatatsConfig {
  const out = structuredClone(cfg);
  const q = out.hypervisor.qemu as unknown as Record<string, unknown>;
  const allowed = cfg.hypervisor.qemu.enable_annotations.map((r) => new RegExp(`^(?:${r})$`));
  for (const [key, value] of Object.entries(annotations)) {
    if (!key.startsWith(ANNOTATION_PREFIX)) continue;
    const name = key.slice(ANNOTATION_PREFIX.length);
    if (!(name in q)) throw new ConfigError(`annotation ${key}: no such hypervisor option`);
    if (!allowed.some((r) => r.test(name))) throw new ConfigError(`annotation ${key} is not allowed by hypervisor.qemu.enable_annotations`);
    const cur = q[name];
    if (typeof cur === 'number') {
      const n = Number(value);
      if (!Number.isInteger(n) || n <= 0) throw new ConfigError(`annotation ${key}: "${value}" is not a positive integer`);
      q[name] = n;
    } else if (typeof cur === 'boolean') {
      q[name] = value === 'true';
    } else if (typeof cur === 'string') {
      q[name] = value;
    } else {
      throw new ConfigError(`annotation ${key}: option cannot be set by annotation`);
    }
  }
  checkSharedFs(out.hypervisor.qemu, `annotations ${ANNOTATION_PREFIX}*`);
  return out;
}
