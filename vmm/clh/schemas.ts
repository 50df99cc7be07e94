// JSON schemas for cloud-hypervisor's request bodies (and the responses the client reads), field
// names and required lists from its OpenAPI document. The client checks every body against these
// before it is sent; katats-chv's routes validate with the very same compiled validators, so a body
// one accepts the other accepts. Unknown fields are errors (a typo must not vanish silently).
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

type Schema = Record<string, unknown>;

const int = { type: 'integer' };
const int0 = { type: 'integer', minimum: 0 };
const str = { type: 'string' };
const bool = { type: 'boolean' };
const obj = { type: 'object' };
const strict = (properties: Record<string, Schema>, required: string[] = []): Schema => ({ type: 'object', properties, required, additionalProperties: false });

const tokenBucket = strict({ size: int0, one_time_burst: int0, refill_time: int0 }, ['size', 'refill_time']);
const rateLimiter = strict({ bandwidth: tokenBucket, ops: tokenBucket });
const consoleMode = { enum: ['Off', 'Pty', 'Tty', 'File', 'Socket', 'Null'] };
const pciPlace = { pci_segment: int0, pci_device_id: int0 };

export const PayloadConfig = strict({ firmware: str, kernel: str, cmdline: str, initramfs: str, igvm: str, host_data: { type: 'string', pattern: '^[0-9a-fA-F]*$' } });
export const CpusConfig = strict(
  { boot_vcpus: { type: 'integer', minimum: 1 }, max_vcpus: { type: 'integer', minimum: 1 }, topology: obj, kvm_hyperv: bool, max_phys_bits: int, nested: bool, affinity: { type: 'array' }, features: obj, core_scheduling: { enum: ['Vm', 'Vcpu', 'Off'] } },
  ['boot_vcpus', 'max_vcpus'],
);
export const MemoryConfig = strict(
  { size: { type: 'integer', minimum: 1 }, hotplug_size: int0, hotplugged_size: int0, mergeable: bool, hotplug_method: str, shared: bool, hugepages: bool, hugepage_size: int0, prefault: bool, reserve: bool, thp: bool, zones: { type: 'array' } },
  ['size'],
);
export const DiskConfig = strict({
  path: str, readonly: bool, direct: bool, iommu: bool, num_queues: { type: 'integer', minimum: 1 }, queue_size: { type: 'integer', minimum: 1 }, vhost_user: bool, vhost_socket: str,
  rate_limiter_config: rateLimiter, ...pciPlace, id: str, serial: str, rate_limit_group: str, queue_affinity: { type: 'array' }, backing_files: bool, sparse: bool,
  image_type: { enum: ['FlatVmdk', 'FixedVhd', 'Qcow2', 'Raw', 'Vhdx', 'Unknown'] }, lock_granularity: { enum: ['ByteRange', 'Full'] },
});
export const NetConfig = strict({
  tap: str, ip: str, mask: str, mac: { type: 'string', pattern: '^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$' }, host_mac: str, mtu: { type: 'integer', minimum: 68, maximum: 65535 }, iommu: bool,
  num_queues: { type: 'integer', minimum: 1 }, queue_size: { type: 'integer', minimum: 1 }, vhost_user: bool, vhost_socket: str, vhost_mode: { enum: ['Client', 'Server'] }, id: str, ...pciPlace,
  rate_limiter_config: rateLimiter, offload_tso: bool, offload_ufo: bool, offload_csum: bool,
  // The VMM's numbers for the TAP fds that came with vm.add-net (it reports them in vm.info).
  fds: { type: 'array', items: int },
});
export const FsConfig = strict({ tag: { type: 'string', minLength: 1, maxLength: 36 }, socket: { type: 'string', minLength: 1 }, num_queues: { type: 'integer', minimum: 1 }, queue_size: { type: 'integer', minimum: 1 }, ...pciPlace, id: str }, ['num_queues', 'queue_size', 'socket', 'tag']);
export const PmemConfig = strict({ file: { type: 'string', minLength: 1 }, size: int0, iommu: bool, discard_writes: bool, ...pciPlace, id: str }, ['file']);
export const DeviceConfig = strict({ path: str, iommu: bool, ...pciPlace, id: str, x_nv_gpudirect_clique: int, x_exclude_mmap_bars: { type: 'array' } });
export const VsockConfig = strict({ cid: { type: 'integer', minimum: 3 }, socket: { type: 'string', minLength: 1 }, iommu: bool, ...pciPlace, id: str }, ['cid', 'socket']);
export const SerialConfig = strict({ file: str, socket: str, mode: consoleMode }, ['mode']);
export const ConsoleConfig = strict({ file: str, socket: str, mode: consoleMode, iommu: bool, id: str, ...pciPlace }, ['mode']);
export const RngConfig = strict({ id: str, ...pciPlace, iommu: bool, src: str }, ['src']);

export const VmConfig = strict(
  {
    cpus: CpusConfig, memory: MemoryConfig, payload: PayloadConfig, rate_limit_groups: { type: 'array' }, disks: { type: 'array', items: DiskConfig }, net: { type: 'array', items: NetConfig },
    rng: RngConfig, balloon: obj, fs: { type: 'array', items: FsConfig }, generic_vhost_user: { type: 'array' }, pmem: { type: 'array', items: PmemConfig }, serial: SerialConfig, console: ConsoleConfig,
    debug_console: obj, devices: { type: 'array', items: DeviceConfig }, user_devices: { type: 'array' }, vdpa: { type: 'array' }, vsock: VsockConfig, numa: { type: 'array' }, iommu: bool, watchdog: bool,
    rtc: obj, pvpanic: bool, pci_segments: { type: 'array' }, platform: obj, tpm: obj, landlock_enable: bool, landlock_rules: { type: 'array' },
  },
  ['payload'],
);
export const VmResize = strict({ desired_vcpus: { type: 'integer', minimum: 1 }, desired_ram: int0, desired_balloon: int0 });
export const VmRemoveDevice = strict({ id: { type: 'string', minLength: 1 } }, ['id']);
export const VmSnapshotConfig = strict({ destination_url: { type: 'string', minLength: 1 } }, ['destination_url']);
export const RestoreConfig = strict({ source_url: { type: 'string', minLength: 1 }, prefault: bool, memory_restore_mode: { enum: ['Copy', 'OnDemand', 'CopyOnWrite'] }, resume: bool, zone_updates: { type: 'array' } }, ['source_url']);
export const ReceiveMigrationData = strict({ receiver_url: { type: 'string', minLength: 1 }, tls_dir: str, zone_updates: { type: 'array' } }, ['receiver_url']);
export const SendMigrationData = strict({ destination_url: { type: 'string', minLength: 1 }, local: bool, preserve_source: bool, downtime_ms: { type: 'integer', minimum: 1 }, memory_mode: { enum: ['MemFDs', 'Precopy', 'Postcopy'] }, timeout_s: int0, timeout_strategy: { enum: ['Cancel', 'Ignore'] }, connections: int0, tls_dir: str });

// Responses: read leniently (a newer server may add fields), but what katats uses must be there.
export const VmmPingResponse = { type: 'object', properties: { build_version: str, version: str, pid: int, features: { type: 'array', items: str } }, required: ['version'] };
export const PciDeviceInfo = { type: 'object', properties: { id: str, bdf: str }, required: ['id', 'bdf'] };
export const VmInfo = {
  type: 'object',
  properties: { config: { type: 'object' }, state: { enum: ['Created', 'Running', 'Shutdown', 'Paused', 'BreakPoint'] }, memory_actual_size: int, device_tree: { type: 'object' } },
  required: ['config', 'state'],
};
export const VmCounters = { type: 'object', additionalProperties: { type: 'object', additionalProperties: { type: 'integer' } } };
/** cloud-hypervisor's error body: the error's messages, outermost first. */
export const ErrorBody = { type: 'array', items: str };

export const SCHEMAS = {
  VmConfig, DiskConfig, NetConfig, FsConfig, PmemConfig, DeviceConfig, VsockConfig,
  VmResize, VmRemoveDevice, VmSnapshotConfig, RestoreConfig, ReceiveMigrationData, SendMigrationData,
  VmmPingResponse, PciDeviceInfo, VmInfo, VmCounters, ErrorBody,
} as const;
export type SchemaName = keyof typeof SCHEMAS;

const ajv = new Ajv({ allErrors: true, strict: true, coerceTypes: false, useDefaults: false, removeAdditional: false });
const compiled = new Map<SchemaName, ValidateFunction>();

/** The one compiled validator per schema, shared by the client and katats-chv. */
export function validator(name: SchemaName): ValidateFunction {
  let v = compiled.get(name);
  if (!v) {
    v = ajv.compile(SCHEMAS[name]);
    compiled.set(name, v);
  }
  return v;
}

/** Messages in cloud-hypervisor's style, one per violation: "DiskConfig: /readonly must be boolean". */
export function schemaMessages(name: SchemaName, errors: ErrorObject[] | null | undefined): string[] {
  return (errors ?? []).map((e) => {
    const where = e.instancePath || '/';
    const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperty?: string }).additionalProperty)})` : e.keyword === 'enum' ? ` (${(e.params as { allowedValues?: unknown[] }).allowedValues?.join(', ')})` : '';
    return `${name}: ${where} ${e.message ?? e.keyword}${extra}`;
  });
}

/** The violations of `value` against schema `name`; empty when it conforms. */
export function check(name: SchemaName, value: unknown): string[] {
  const v = validator(name);
  return v(value) ? [] : schemaMessages(name, v.errors);
}
