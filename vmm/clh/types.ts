// cloud-hypervisor's API objects, with the field names of its OpenAPI document
// (vmm/src/api/openapi/cloud-hypervisor.yaml). Only what katats reads or sets is typed closely;
// the schemas in schemas.ts name every field the document has for these objects.

export type VmState = 'Created' | 'Running' | 'Shutdown' | 'Paused' | 'BreakPoint';
export type ConsoleMode = 'Off' | 'Pty' | 'Tty' | 'File' | 'Socket' | 'Null';

export interface VmmPingResponse {
  build_version?: string;
  version: string;
  pid?: number;
  features?: string[];
}

export interface PayloadConfig {
  firmware?: string;
  kernel?: string;
  cmdline?: string;
  initramfs?: string;
  igvm?: string;
  /** hex: SEV-SNP's HOST_DATA (katats' launch data) */
  host_data?: string;
}

export interface CpusConfig {
  boot_vcpus: number;
  max_vcpus: number;
  kvm_hyperv?: boolean;
  max_phys_bits?: number;
  nested?: boolean;
  topology?: Record<string, number>;
}

export interface MemoryConfig {
  size: number;
  hotplug_size?: number;
  hotplugged_size?: number;
  mergeable?: boolean;
  hotplug_method?: string;
  shared?: boolean;
  hugepages?: boolean;
  hugepage_size?: number;
  prefault?: boolean;
  thp?: boolean;
}

export interface DiskConfig {
  path?: string;
  readonly?: boolean;
  direct?: boolean;
  iommu?: boolean;
  num_queues?: number;
  queue_size?: number;
  vhost_user?: boolean;
  vhost_socket?: string;
  pci_segment?: number;
  id?: string;
  serial?: string;
  image_type?: 'FlatVmdk' | 'FixedVhd' | 'Qcow2' | 'Raw' | 'Vhdx' | 'Unknown';
}

export interface NetConfig {
  tap?: string;
  ip?: string;
  mask?: string;
  mac?: string;
  host_mac?: string;
  mtu?: number;
  iommu?: boolean;
  num_queues?: number;
  queue_size?: number;
  vhost_user?: boolean;
  vhost_socket?: string;
  vhost_mode?: string;
  id?: string;
  pci_segment?: number;
  offload_tso?: boolean;
  offload_ufo?: boolean;
  offload_csum?: boolean;
  fds?: number[];
}

export interface FsConfig {
  tag: string;
  socket: string;
  num_queues: number;
  queue_size: number;
  pci_segment?: number;
  id?: string;
}

export interface PmemConfig {
  file: string;
  size?: number;
  iommu?: boolean;
  discard_writes?: boolean;
  pci_segment?: number;
  id?: string;
}

export interface DeviceConfig {
  path?: string;
  iommu?: boolean;
  pci_segment?: number;
  id?: string;
}

export interface VsockConfig {
  cid: number;
  socket: string;
  iommu?: boolean;
  pci_segment?: number;
  id?: string;
}

export interface SerialConfig {
  mode: ConsoleMode;
  file?: string;
  socket?: string;
}

export interface ConsoleConfig extends SerialConfig {
  iommu?: boolean;
}

export interface RngConfig {
  src: string;
  iommu?: boolean;
}

export interface VmConfig {
  cpus?: CpusConfig;
  memory?: MemoryConfig;
  payload: PayloadConfig;
  disks?: DiskConfig[];
  net?: NetConfig[];
  rng?: RngConfig;
  fs?: FsConfig[];
  pmem?: PmemConfig[];
  serial?: SerialConfig;
  console?: ConsoleConfig;
  devices?: DeviceConfig[];
  vsock?: VsockConfig;
  iommu?: boolean;
  watchdog?: boolean;
  pvpanic?: boolean;
  platform?: Record<string, unknown>;
}

export interface DeviceNode {
  id?: string;
  resources?: Record<string, unknown>[];
  children?: string[];
  pci_bdf?: string;
}

export interface VmInfo {
  config: VmConfig;
  state: VmState;
  memory_actual_size?: number;
  device_tree?: Record<string, DeviceNode>;
}

/** device id -> counter name -> value */
export type VmCounters = Record<string, Record<string, number>>;

export interface PciDeviceInfo {
  id: string;
  /** segment:bus:device.function, "0000:00:05.0" */
  bdf: string;
}

export interface VmResize {
  desired_vcpus?: number;
  desired_ram?: number;
  desired_balloon?: number;
}

export interface VmRemoveDevice {
  id: string;
}

export interface VmSnapshotConfig {
  destination_url: string;
}

export interface RestoreConfig {
  source_url: string;
  prefault?: boolean;
  memory_restore_mode?: 'Copy' | 'OnDemand' | 'CopyOnWrite';
  resume?: boolean;
}

export interface ReceiveMigrationData {
  receiver_url: string;
}

export interface SendMigrationData {
  destination_url: string;
  local?: boolean;
  downtime_ms?: number;
}
