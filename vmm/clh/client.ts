// A client for cloud-hypervisor's REST API (HTTP/1.1 on its --api-socket, under /api/v1/). Every
// body is checked against its JSON schema before it is sent; every call has its own named time
// limit (Kata's fixed 1 s for create+boot left half-booted guests behind: kata-containers#9152);
// an error answer (a JSON array of messages) becomes a ClhApiError with the status and messages.
import { type FdSource, httpRequest, type HttpResponse } from './http.js';
import { check, type SchemaName } from './schemas.js';
import type {
  DeviceConfig,
  DiskConfig,
  FsConfig,
  NetConfig,
  PciDeviceInfo,
  PmemConfig,
  ReceiveMigrationData,
  RestoreConfig,
  SendMigrationData,
  VmConfig,
  VmCounters,
  VmInfo,
  VmmPingResponse,
  VmResize,
  VsockConfig,
} from './types.js';

export const CLH_API_TIMEOUT = 'KATATS_CLH_API_TIMEOUT';
export const API_ROOT = '/api/v1';

export type Endpoint =
  | 'vmm.ping' | 'vmm.shutdown'
  | 'vm.create' | 'vm.boot' | 'vm.info' | 'vm.counters' | 'vm.pause' | 'vm.resume' | 'vm.shutdown' | 'vm.reboot' | 'vm.power-button' | 'vm.delete'
  | 'vm.add-disk' | 'vm.add-fs' | 'vm.add-net' | 'vm.add-vsock' | 'vm.add-device' | 'vm.add-pmem' | 'vm.remove-device'
  | 'vm.resize' | 'vm.snapshot' | 'vm.restore' | 'vm.send-migration' | 'vm.receive-migration';

export interface EndpointSpec {
  method: 'GET' | 'PUT';
  /** the request body's schema; none: the call takes no body */
  body?: SchemaName;
  /** the 200 answer's schema; none: 204 is the only success */
  response?: SchemaName;
  /** default time limit (ms) */
  timeoutMs: number;
}

/**
 * The API this client speaks, as cloud-hypervisor's OpenAPI document lists it. Time limits: what a
 * loaded 2-core TCG host needs with room (a guest's hotplug answer, a boot that loads kernel and
 * initrd), never the 1 s that cut Kata's boots short.
 */
export const ENDPOINTS: Record<Endpoint, EndpointSpec> = {
  'vmm.ping': { method: 'GET', response: 'VmmPingResponse', timeoutMs: 5_000 },
  'vmm.shutdown': { method: 'PUT', timeoutMs: 10_000 },
  'vm.create': { method: 'PUT', body: 'VmConfig', timeoutMs: 10_000 },
  'vm.boot': { method: 'PUT', timeoutMs: 60_000 },
  'vm.info': { method: 'GET', response: 'VmInfo', timeoutMs: 5_000 },
  'vm.counters': { method: 'GET', response: 'VmCounters', timeoutMs: 5_000 },
  'vm.pause': { method: 'PUT', timeoutMs: 10_000 },
  'vm.resume': { method: 'PUT', timeoutMs: 10_000 },
  'vm.shutdown': { method: 'PUT', timeoutMs: 10_000 },
  'vm.reboot': { method: 'PUT', timeoutMs: 60_000 },
  'vm.power-button': { method: 'PUT', timeoutMs: 5_000 },
  'vm.delete': { method: 'PUT', timeoutMs: 10_000 },
  'vm.add-disk': { method: 'PUT', body: 'DiskConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.add-fs': { method: 'PUT', body: 'FsConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.add-net': { method: 'PUT', body: 'NetConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.add-vsock': { method: 'PUT', body: 'VsockConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.add-device': { method: 'PUT', body: 'DeviceConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.add-pmem': { method: 'PUT', body: 'PmemConfig', response: 'PciDeviceInfo', timeoutMs: 30_000 },
  'vm.remove-device': { method: 'PUT', body: 'VmRemoveDevice', timeoutMs: 30_000 },
  'vm.resize': { method: 'PUT', body: 'VmResize', timeoutMs: 30_000 },
  'vm.snapshot': { method: 'PUT', body: 'VmSnapshotConfig', timeoutMs: 120_000 },
  'vm.restore': { method: 'PUT', body: 'RestoreConfig', timeoutMs: 120_000 },
  'vm.send-migration': { method: 'PUT', body: 'SendMigrationData', timeoutMs: 300_000 },
  'vm.receive-migration': { method: 'PUT', body: 'ReceiveMigrationData', timeoutMs: 300_000 },
};

/** An answer other than success: cloud-hypervisor's status and its messages, outermost first. */
export class ClhApiError extends Error {
  override readonly name = 'ClhApiError';
  constructor(
    readonly endpoint: Endpoint,
    readonly status: number,
    readonly messages: string[],
  ) {
    super(`cloud-hypervisor ${endpoint}: ${status}${messages.length ? `: ${messages.join(': ')}` : ''}`);
  }
}

/** A body refused here, before it was sent: the schema's messages. */
export class ClhRequestError extends Error {
  override readonly name = 'ClhRequestError';
  constructor(
    readonly endpoint: Endpoint,
    readonly messages: string[],
  ) {
    super(`cloud-hypervisor ${endpoint}: request body invalid: ${messages.join('; ')}`);
  }
}

export interface ClhClientOptions {
  /** per-endpoint time limits (ms) over ENDPOINTS' defaults */
  timeoutsMs?: Partial<Record<Endpoint, number>>;
  /** every call not named in timeoutsMs gets at least this much (ms) */
  minTimeoutMs?: number;
  /** called after every call with its round trip (bench, logs) */
  onCall?: (endpoint: Endpoint, status: number, ms: number) => void;
}

export interface CallOptions {
  timeoutMs?: number;
  fds?: FdSource[];
}

/** The messages of an error body: a JSON array of strings, or the raw text when it is not one. */
export function errorMessages(res: HttpResponse): string[] {
  const text = res.body.toString('utf8');
  if (!text) return [];
  try {
    const v: unknown = JSON.parse(text);
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v;
  } catch {
    // not JSON: said as it came
  }
  return [text.slice(0, 1000)];
}

export class ClhClient {
  constructor(
    readonly socketPath: string,
    private readonly o: ClhClientOptions = {},
  ) {}

  timeoutOf(endpoint: Endpoint): number {
    return this.o.timeoutsMs?.[endpoint] ?? Math.max(ENDPOINTS[endpoint].timeoutMs, this.o.minTimeoutMs ?? 0);
  }

  /** One call: the body checked, sent, the answer checked against the endpoint's response schema. */
  async call<T = undefined>(endpoint: Endpoint, body?: unknown, co: CallOptions = {}): Promise<T | undefined> {
    const spec = ENDPOINTS[endpoint];
    if (spec.body) {
      if (body === undefined) throw new ClhRequestError(endpoint, [`${spec.body}: a body is required`]);
      const errs = check(spec.body, body);
      if (errs.length) throw new ClhRequestError(endpoint, errs);
    } else if (body !== undefined) throw new ClhRequestError(endpoint, ['this call takes no body']);
    const timeoutMs = co.timeoutMs ?? this.timeoutOf(endpoint);
    const t0 = performance.now();
    const res = await httpRequest(this.socketPath, spec.method, `${API_ROOT}/${endpoint}`, body === undefined ? undefined : Buffer.from(JSON.stringify(body)), {
      timeoutMs,
      code: CLH_API_TIMEOUT,
      what: `cloud-hypervisor ${endpoint} on ${this.socketPath}`,
      ...(co.fds ? { fds: co.fds } : {}),
    });
    this.o.onCall?.(endpoint, res.status, performance.now() - t0);
    if (res.status === 204) return undefined;
    if (res.status === 200) {
      if (!spec.response) return undefined;
      let v: unknown;
      try {
        v = JSON.parse(res.body.toString('utf8'));
      } catch {
        throw new ClhApiError(endpoint, 200, [`the answer is not JSON: ${res.body.toString('utf8').slice(0, 200)}`]);
      }
      const errs = check(spec.response, v);
      if (errs.length) throw new ClhApiError(endpoint, 200, ['the answer does not match its schema', ...errs]);
      return v as T;
    }
    throw new ClhApiError(endpoint, res.status, errorMessages(res));
  }

  async ping(): Promise<VmmPingResponse> {
    return (await this.call<VmmPingResponse>('vmm.ping'))!;
  }
  async shutdownVmm(): Promise<void> {
    await this.call('vmm.shutdown');
  }
  async create(config: VmConfig): Promise<void> {
    await this.call('vm.create', config);
  }
  async boot(): Promise<void> {
    await this.call('vm.boot');
  }
  async info(): Promise<VmInfo> {
    return (await this.call<VmInfo>('vm.info'))!;
  }
  async counters(): Promise<VmCounters> {
    return (await this.call<VmCounters>('vm.counters')) ?? {};
  }
  async pause(): Promise<void> {
    await this.call('vm.pause');
  }
  async resume(): Promise<void> {
    await this.call('vm.resume');
  }
  async shutdown(): Promise<void> {
    await this.call('vm.shutdown');
  }
  async reboot(): Promise<void> {
    await this.call('vm.reboot');
  }
  async powerButton(): Promise<void> {
    await this.call('vm.power-button');
  }
  async delete(): Promise<void> {
    await this.call('vm.delete');
  }
  /** 200 with where it landed on a running VM; undefined (204) when added before boot. */
  addDisk(d: DiskConfig): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-disk', d);
  }
  addFs(f: FsConfig): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-fs', f);
  }
  /** The TAP fds (one per queue pair) travel as SCM_RIGHTS with the request. */
  addNet(n: NetConfig, fds: FdSource[] = []): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-net', n, { fds });
  }
  addVsock(v: VsockConfig): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-vsock', v);
  }
  addDevice(d: DeviceConfig): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-device', d);
  }
  addPmem(p: PmemConfig): Promise<PciDeviceInfo | undefined> {
    return this.call<PciDeviceInfo>('vm.add-pmem', p);
  }
  async removeDevice(id: string): Promise<void> {
    await this.call('vm.remove-device', { id });
  }
  async resize(r: VmResize): Promise<void> {
    await this.call('vm.resize', r);
  }
  /** destination_url is file:///DIR; the VM must be paused. */
  async snapshot(destinationUrl: string): Promise<void> {
    await this.call('vm.snapshot', { destination_url: destinationUrl });
  }
  async restore(r: RestoreConfig): Promise<void> {
    await this.call('vm.restore', r);
  }
  async sendMigration(m: SendMigrationData): Promise<void> {
    await this.call('vm.send-migration', m);
  }
  async receiveMigration(m: ReceiveMigrationData): Promise<void> {
    await this.call('vm.receive-migration', m);
  }
}

/**
 * "0000:00:05.0" -> "05": the PCI path the agent looks a device up by (Kata's grpc.Device.id, one
 * slot per bus from the root). cloud-hypervisor puts every device on the root bus of its segment,
 * so a bdf names the path; a device behind a bridge would need the bridge's slot, which a bdf lacks.
 */
export function bdfToPciPath(bdf: string): string {
  const m = /^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/.exec(bdf);
  if (!m) throw new Error(`not a PCI address: ${JSON.stringify(bdf)}`);
  if (Number.parseInt(m[1] ?? '0', 16) !== 0 || m[2] !== '00') throw new Error(`PCI address ${bdf} is not on segment 0's root bus: its PCI path cannot be told from it`);
  return m[3]!.toLowerCase();
}
