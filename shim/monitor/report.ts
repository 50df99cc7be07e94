// What a shim tells `katats monitor` about its pod: one JSON document per request on the shim's
// monitor socket (endpoint.ts serves it, client.ts fetches and checks it, render.ts turns it into
// Prometheus text). JSON with a schema rather than Prometheus text from each shim: the monitor alone
// decides metric names and labels, and a shim cannot add series of its own or break the exposition.

/** The monitor socket's name in the pod's sandbox state dir (layout.ts sandboxDir). */
export const MONITOR_SOCKET = 'monitor.sock';
/** The one path the shim serves on it. */
export const REPORT_PATH = '/sandbox';
export const REPORT_VERSION = 1;

export interface SandboxReport {
  version: typeof REPORT_VERSION;
  sandboxId: string;
  /** containerd's namespace of the pod's tasks. */
  namespace: string;
  /** The Kubernetes pod, from the CRI sandbox's annotations (none without CRI). */
  cri?: { name: string; namespace: string; uid: string };
  /** The VM's state (sandbox-vm.ts). */
  vmState: string;
  bootPath?: 'template' | 'cold';
  accel?: 'kvm' | 'tcg';
  /** Pod-start step -> milliseconds (pod-steps.ts). */
  steps: Record<string, number>;
  containers: number;
  /** Health.Check timed now, or why it failed. */
  agent?: { rttMs: number } | { error: string };
  /** The guest kernel's view (the agent's kata_guest_meminfo), in bytes. */
  guestMemory?: { totalBytes: number; freeBytes: number; availableBytes: number };
  /** Host PSS (smaps_rollup) of the shim and its VMM, in bytes. */
  pss: { shimBytes?: number; vmmBytes?: number };
}

const count = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;
const label = { type: 'string', maxLength: 253 } as const;

/** The shape the monitor accepts (ajv): bounded strings, a bounded set of snake_case step names. */
export const REPORT_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['version', 'sandboxId', 'namespace', 'vmState', 'steps', 'containers', 'pss'],
  properties: {
    version: { const: REPORT_VERSION },
    sandboxId: { type: 'string', pattern: '^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$', maxLength: 76 },
    namespace: { type: 'string', pattern: '^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$', maxLength: 76 },
    cri: { type: 'object', additionalProperties: false, required: ['name', 'namespace', 'uid'], properties: { name: label, namespace: label, uid: label } },
    vmState: { enum: ['stopped', 'booting', 'ready', 'dead', 'stopping'] },
    bootPath: { enum: ['template', 'cold'] },
    accel: { enum: ['kvm', 'tcg'] },
    steps: { type: 'object', maxProperties: 32, propertyNames: { pattern: '^[a-z][a-z0-9_]{0,62}$' }, additionalProperties: count },
    containers: count,
    agent: {
      oneOf: [
        { type: 'object', additionalProperties: false, required: ['rttMs'], properties: { rttMs: { type: 'number', minimum: 0, maximum: 1e9 } } },
        { type: 'object', additionalProperties: false, required: ['error'], properties: { error: { type: 'string', maxLength: 1024 } } },
      ],
    },
    guestMemory: {
      type: 'object',
      additionalProperties: false,
      required: ['totalBytes', 'freeBytes', 'availableBytes'],
      properties: { totalBytes: count, freeBytes: count, availableBytes: count },
    },
    pss: { type: 'object', additionalProperties: false, properties: { shimBytes: count, vmmBytes: count } },
  },
} as const;
