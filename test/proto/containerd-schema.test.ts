// The containerd wire schemas under proto/schema, checked against facts from upstream containerd,
// containerd/cgroups and containerd/ttrpc: method sets, message names and field numbers. A field
// number that drifts breaks a Go peer silently, so the numbers are spelled out here, not derived.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { beforeAll, describe, expect, it } from 'vitest';

const SCHEMA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../proto/schema');

const FILES = [
  'containerd/runtime/task/v2/shim.proto',
  'containerd/runtime/task/v3/shim.proto',
  'containerd/events/task.proto',
  'containerd/services/ttrpc/events/v1/events.proto',
  'containerd/services/snapshots/v1/snapshots.proto',
  'containerd/services/content/v1/content.proto',
  'containerd/cgroups/v2/metrics.proto',
  'containerd/cgroups/v1/metrics.proto',
  'ttrpc/request.proto',
  'containerd/runtimeoptions/v1/api.proto',
];

let root: protobuf.Root;

function loadRoot(): protobuf.Root {
  const r = new protobuf.Root();
  // Imports are written relative to proto/schema; protobufjs serves google/protobuf/* itself.
  r.resolvePath = (_origin, target) => path.join(SCHEMA_DIR, target);
  r.loadSync(FILES, { keepCase: true });
  r.resolveAll();
  return r;
}

function fieldsOf(typeName: string): Record<string, { id: number; type: string; repeated: boolean }> {
  const t = root.lookupType(typeName);
  const out: Record<string, { id: number; type: string; repeated: boolean }> = {};
  for (const f of t.fieldsArray) out[f.name] = { id: f.id, type: f.type, repeated: f.repeated };
  return out;
}

function expectField(typeName: string, field: string, id: number, type: string, repeated = false): void {
  const f = fieldsOf(typeName)[field];
  expect(f, `${typeName}.${field}`).toBeDefined();
  expect(f, `${typeName}.${field}`).toEqual({ id, type, repeated });
}

beforeAll(() => {
  root = loadRoot();
});

describe('containerd.task.v3.Task', () => {
  // containerd 2.x calls v3 on a shim that bootstraps as version 3; the shim serves one
  // implementation under both names, which is right only while the two match field for field.
  it('has the rpcs of v2 (upstream adds a streaming Events, left out) with the same messages', () => {
    const v2 = root.lookupService('containerd.task.v2.Task');
    const v3 = root.lookupService('containerd.task.v3.Task');
    const sig = (s: protobuf.Service) => Object.fromEntries(s.methodsArray.map((m) => [m.name, `${m.requestType} -> ${m.responseType}`]));
    expect(sig(v3)).toEqual(sig(v2));
    for (const m of v3.methodsArray) {
      for (const t of [m.requestType, m.responseType]) {
        if (t.startsWith('google.')) continue;
        expect(fieldsOf(`containerd.task.v3.${t}`), t).toEqual(fieldsOf(`containerd.task.v2.${t}`));
      }
    }
  });
});

describe('containerd.task.v2.Task', () => {
  it('has exactly the 17 upstream rpcs with upstream request/response types', () => {
    const svc = root.lookupService('containerd.task.v2.Task');
    const sig = Object.fromEntries(
      Object.values(svc.methods).map((m) => [m.name, `${m.requestType} -> ${m.responseType}`]),
    );
    expect(sig).toEqual({
      State: 'StateRequest -> StateResponse',
      Create: 'CreateTaskRequest -> CreateTaskResponse',
      Start: 'StartRequest -> StartResponse',
      Delete: 'DeleteRequest -> DeleteResponse',
      Pids: 'PidsRequest -> PidsResponse',
      Pause: 'PauseRequest -> google.protobuf.Empty',
      Resume: 'ResumeRequest -> google.protobuf.Empty',
      Checkpoint: 'CheckpointTaskRequest -> google.protobuf.Empty',
      Kill: 'KillRequest -> google.protobuf.Empty',
      Exec: 'ExecProcessRequest -> google.protobuf.Empty',
      ResizePty: 'ResizePtyRequest -> google.protobuf.Empty',
      CloseIO: 'CloseIORequest -> google.protobuf.Empty',
      Update: 'UpdateTaskRequest -> google.protobuf.Empty',
      Wait: 'WaitRequest -> WaitResponse',
      Stats: 'StatsRequest -> StatsResponse',
      Connect: 'ConnectRequest -> ConnectResponse',
      Shutdown: 'ShutdownRequest -> google.protobuf.Empty',
    });
    for (const m of Object.values(svc.methods)) {
      expect(m.requestStream ?? false).toBe(false);
      expect(m.responseStream ?? false).toBe(false);
    }
  });

  it('runtimeoptions.v1.Options (CRI\'s options for non-runc runtimes)', () => {
    const T = 'runtimeoptions.v1.Options';
    expectField(T, 'type_url', 1, 'string');
    expectField(T, 'config_path', 2, 'string');
    expectField(T, 'config_body', 3, 'bytes');
  });

  it('CreateTaskRequest field numbers', () => {
    const T = 'containerd.task.v2.CreateTaskRequest';
    expectField(T, 'id', 1, 'string');
    expectField(T, 'bundle', 2, 'string');
    expectField(T, 'rootfs', 3, 'containerd.types.Mount', true);
    expectField(T, 'terminal', 4, 'bool');
    expectField(T, 'stdin', 5, 'string');
    expectField(T, 'stdout', 6, 'string');
    expectField(T, 'stderr', 7, 'string');
    expectField(T, 'checkpoint', 8, 'string');
    expectField(T, 'parent_checkpoint', 9, 'string');
    expectField(T, 'options', 10, 'google.protobuf.Any');
  });

  it('StateResponse, WaitResponse, DeleteResponse, KillRequest, ExecProcessRequest', () => {
    const S = 'containerd.task.v2.StateResponse';
    expect(Object.entries(fieldsOf(S)).map(([n, f]) => [n, f.id])).toEqual([
      ['id', 1],
      ['bundle', 2],
      ['pid', 3],
      ['status', 4],
      ['stdin', 5],
      ['stdout', 6],
      ['stderr', 7],
      ['terminal', 8],
      ['exit_status', 9],
      ['exited_at', 10],
      ['exec_id', 11],
    ]);
    expectField(S, 'status', 4, 'containerd.v1.types.Status');
    expectField(S, 'exited_at', 10, 'google.protobuf.Timestamp');

    expectField('containerd.task.v2.WaitResponse', 'exit_status', 1, 'uint32');
    expectField('containerd.task.v2.WaitResponse', 'exited_at', 2, 'google.protobuf.Timestamp');
    expectField('containerd.task.v2.DeleteResponse', 'pid', 1, 'uint32');
    expectField('containerd.task.v2.DeleteResponse', 'exit_status', 2, 'uint32');
    expectField('containerd.task.v2.DeleteResponse', 'exited_at', 3, 'google.protobuf.Timestamp');

    expectField('containerd.task.v2.KillRequest', 'signal', 3, 'uint32');
    expectField('containerd.task.v2.KillRequest', 'all', 4, 'bool');
    expectField('containerd.task.v2.ExecProcessRequest', 'exec_id', 2, 'string');
    expectField('containerd.task.v2.ExecProcessRequest', 'spec', 7, 'google.protobuf.Any');
    expectField('containerd.task.v2.StatsResponse', 'stats', 1, 'google.protobuf.Any');
    expectField('containerd.task.v2.ConnectResponse', 'shim_pid', 1, 'uint32');
    expectField('containerd.task.v2.ConnectResponse', 'task_pid', 2, 'uint32');
    expectField('containerd.task.v2.ConnectResponse', 'version', 3, 'string');
    expectField('containerd.task.v2.ShutdownRequest', 'now', 2, 'bool');
    expectField('containerd.task.v2.PidsResponse', 'processes', 1, 'containerd.v1.types.ProcessInfo', true);

    const ann = root.lookupType('containerd.task.v2.UpdateTaskRequest').fields['annotations'];
    expect(ann).toBeInstanceOf(protobuf.MapField);
    expect(ann?.id).toBe(3);
  });

  it('shared types: Mount, Status, ProcessInfo', () => {
    expect(Object.entries(fieldsOf('containerd.types.Mount')).map(([n, f]) => [n, f.id, f.repeated])).toEqual([
      ['type', 1, false],
      ['source', 2, false],
      ['target', 3, false],
      ['options', 4, true],
    ]);
    expect(root.lookupEnum('containerd.v1.types.Status').values).toEqual({
      UNKNOWN: 0,
      CREATED: 1,
      RUNNING: 2,
      STOPPED: 3,
      PAUSED: 4,
      PAUSING: 5,
    });
    expectField('containerd.v1.types.ProcessInfo', 'pid', 1, 'uint32');
    expectField('containerd.v1.types.ProcessInfo', 'info', 2, 'google.protobuf.Any');
  });

  it('encodes a KillRequest byte-for-byte as Go would', () => {
    const Kill = root.lookupType('containerd.task.v2.KillRequest');
    const bytes = Kill.encode(Kill.create({ id: 'c1', signal: 9, all: true })).finish();
    // 0a 02 "c1" | 18 09 | 20 01
    expect(Buffer.from(bytes).toString('hex')).toBe('0a0263311809' + '2001');
  });
});

describe('containerd.events', () => {
  it('defines every task event message', () => {
    const ns = root.lookup('containerd.events') as protobuf.Namespace;
    const names = ns.nestedArray.filter((o) => o instanceof protobuf.Type).map((o) => o.name).sort();
    expect(names).toEqual(
      [
        'TaskCheckpointed',
        'TaskCreate',
        'TaskDelete',
        'TaskExecAdded',
        'TaskExecStarted',
        'TaskExit',
        'TaskIO',
        'TaskOOM',
        'TaskPaused',
        'TaskResumed',
        'TaskStart',
      ].sort(),
    );
    const exit = 'containerd.events.TaskExit';
    expectField(exit, 'container_id', 1, 'string');
    expectField(exit, 'id', 2, 'string');
    expectField(exit, 'pid', 3, 'uint32');
    expectField(exit, 'exit_status', 4, 'uint32');
    expectField(exit, 'exited_at', 5, 'google.protobuf.Timestamp');
    expectField('containerd.events.TaskCreate', 'io', 4, 'TaskIO');
    expectField('containerd.events.TaskCreate', 'pid', 6, 'uint32');
    expectField('containerd.events.TaskDelete', 'id', 5, 'string');
    expectField('containerd.events.TaskExecStarted', 'pid', 3, 'uint32');
  });

  it('Events.Forward and the Envelope', () => {
    const svc = root.lookupService('containerd.services.events.ttrpc.v1.Events');
    expect(Object.keys(svc.methods)).toEqual(['Forward']);
    expect(svc.methods['Forward']?.requestType).toBe('ForwardRequest');
    expect(svc.methods['Forward']?.responseType).toBe('google.protobuf.Empty');
    const E = 'containerd.services.events.ttrpc.v1.Envelope';
    expectField(E, 'timestamp', 1, 'google.protobuf.Timestamp');
    expectField(E, 'namespace', 2, 'string');
    expectField(E, 'topic', 3, 'string');
    expectField(E, 'event', 4, 'google.protobuf.Any');
    expectField('containerd.services.events.ttrpc.v1.ForwardRequest', 'envelope', 1, 'Envelope');
  });

  it('round-trips a TaskExit packed into an Envelope Any', () => {
    const TaskExit = root.lookupType('containerd.events.TaskExit');
    const Forward = root.lookupType('containerd.services.events.ttrpc.v1.ForwardRequest');
    const exit = {
      container_id: 'pod-a',
      id: 'exec-1',
      pid: 4242,
      exit_status: 137,
      exited_at: { seconds: 1_700_000_000, nanos: 123_000_000 },
    };
    expect(TaskExit.verify(exit)).toBeNull();
    const inner = TaskExit.encode(TaskExit.fromObject(exit)).finish();
    const req = Forward.fromObject({
      envelope: {
        timestamp: { seconds: 1_700_000_001, nanos: 5 },
        namespace: 'k8s.io',
        topic: '/tasks/exit',
        // containerd's typeurl names proto messages by bare full name, without a URL prefix.
        event: { type_url: 'containerd.events.TaskExit', value: inner },
      },
    });
    const wire = Forward.encode(req).finish();

    const back = Forward.toObject(Forward.decode(wire), { longs: Number, defaults: true }) as {
      envelope: { namespace: string; topic: string; timestamp: { seconds: number; nanos: number }; event: { type_url: string; value: Uint8Array } };
    };
    expect(back.envelope.namespace).toBe('k8s.io');
    expect(back.envelope.topic).toBe('/tasks/exit');
    expect(back.envelope.timestamp).toEqual({ seconds: 1_700_000_001, nanos: 5 });
    expect(back.envelope.event.type_url).toBe('containerd.events.TaskExit');
    const typeName = back.envelope.event.type_url.slice(back.envelope.event.type_url.lastIndexOf('/') + 1);
    const decoded = root.lookupType(typeName).decode(back.envelope.event.value);
    expect(TaskExit.toObject(decoded, { longs: Number })).toEqual(exit);
  });
});

describe('containerd.services.snapshots.v1.Snapshots', () => {
  it('has every upstream rpc, List server-streaming', () => {
    const svc = root.lookupService('containerd.services.snapshots.v1.Snapshots');
    const sig = Object.fromEntries(
      Object.values(svc.methods).map((m) => [
        m.name,
        `${m.requestType} -> ${m.responseStream ? 'stream ' : ''}${m.responseType}`,
      ]),
    );
    expect(sig).toEqual({
      Prepare: 'PrepareSnapshotRequest -> PrepareSnapshotResponse',
      View: 'ViewSnapshotRequest -> ViewSnapshotResponse',
      Mounts: 'MountsRequest -> MountsResponse',
      Commit: 'CommitSnapshotRequest -> google.protobuf.Empty',
      Remove: 'RemoveSnapshotRequest -> google.protobuf.Empty',
      Stat: 'StatSnapshotRequest -> StatSnapshotResponse',
      Update: 'UpdateSnapshotRequest -> UpdateSnapshotResponse',
      List: 'ListSnapshotsRequest -> stream ListSnapshotsResponse',
      Usage: 'UsageRequest -> UsageResponse',
      Cleanup: 'CleanupRequest -> google.protobuf.Empty',
    });
  });

  it('PrepareSnapshotRequest, Info, Kind, Usage', () => {
    const P = 'containerd.services.snapshots.v1.PrepareSnapshotRequest';
    expectField(P, 'snapshotter', 1, 'string');
    expectField(P, 'key', 2, 'string');
    expectField(P, 'parent', 3, 'string');
    const labels = root.lookupType(P).fields['labels'];
    expect(labels).toBeInstanceOf(protobuf.MapField);
    expect(labels?.id).toBe(4);

    const I = 'containerd.services.snapshots.v1.Info';
    expectField(I, 'name', 1, 'string');
    expectField(I, 'parent', 2, 'string');
    expectField(I, 'kind', 3, 'Kind');
    expectField(I, 'created_at', 4, 'google.protobuf.Timestamp');
    expectField(I, 'updated_at', 5, 'google.protobuf.Timestamp');
    expect(root.lookupType(I).fields['labels']?.id).toBe(6);

    expect(root.lookupEnum('containerd.services.snapshots.v1.Kind').values).toEqual({
      UNKNOWN: 0,
      VIEW: 1,
      ACTIVE: 2,
      COMMITTED: 3,
    });
    expectField('containerd.services.snapshots.v1.PrepareSnapshotResponse', 'mounts', 1, 'containerd.types.Mount', true);
    expectField('containerd.services.snapshots.v1.CommitSnapshotRequest', 'name', 2, 'string');
    expectField('containerd.services.snapshots.v1.CommitSnapshotRequest', 'key', 3, 'string');
    expectField('containerd.services.snapshots.v1.UpdateSnapshotRequest', 'update_mask', 3, 'google.protobuf.FieldMask');
    expectField('containerd.services.snapshots.v1.ListSnapshotsResponse', 'info', 1, 'Info', true);
    expectField('containerd.services.snapshots.v1.UsageResponse', 'size', 1, 'int64');
    expectField('containerd.services.snapshots.v1.UsageResponse', 'inodes', 2, 'int64');
  });
});

describe('containerd.services.content.v1.Content', () => {
  it('has every upstream rpc, List and Read server-streaming, Write bidirectional', () => {
    const svc = root.lookupService('containerd.services.content.v1.Content');
    const sig = Object.fromEntries(
      Object.values(svc.methods).map((m) => [m.name, `${m.requestStream ? 'stream ' : ''}${m.requestType} -> ${m.responseStream ? 'stream ' : ''}${m.responseType}`]),
    );
    expect(sig).toEqual({
      Info: 'InfoRequest -> InfoResponse',
      Update: 'UpdateRequest -> UpdateResponse',
      List: 'ListContentRequest -> stream ListContentResponse',
      Delete: 'DeleteContentRequest -> google.protobuf.Empty',
      Read: 'ReadContentRequest -> stream ReadContentResponse',
      Status: 'StatusRequest -> StatusResponse',
      ListStatuses: 'ListStatusesRequest -> ListStatusesResponse',
      Write: 'stream WriteContentRequest -> stream WriteContentResponse',
      Abort: 'AbortRequest -> google.protobuf.Empty',
    });
  });

  it('Info, Read and List messages', () => {
    const C = 'containerd.services.content.v1.';
    expectField(C + 'Info', 'digest', 1, 'string');
    expectField(C + 'Info', 'size', 2, 'int64');
    expectField(C + 'Info', 'created_at', 3, 'google.protobuf.Timestamp');
    expectField(C + 'Info', 'updated_at', 4, 'google.protobuf.Timestamp');
    const labels = root.lookupType(C + 'Info').fields['labels'];
    expect(labels).toBeInstanceOf(protobuf.MapField);
    expect(labels?.id).toBe(5);
    expectField(C + 'InfoRequest', 'digest', 1, 'string');
    expectField(C + 'InfoResponse', 'info', 1, 'Info');
    expectField(C + 'ReadContentRequest', 'digest', 1, 'string');
    expectField(C + 'ReadContentRequest', 'offset', 2, 'int64');
    expectField(C + 'ReadContentRequest', 'size', 3, 'int64');
    expectField(C + 'ReadContentResponse', 'offset', 1, 'int64');
    expectField(C + 'ReadContentResponse', 'data', 2, 'bytes');
    expectField(C + 'ListContentRequest', 'filters', 1, 'string', true);
    expectField(C + 'ListContentResponse', 'info', 1, 'Info', true);
    expectField(C + 'UpdateRequest', 'update_mask', 2, 'google.protobuf.FieldMask');
    expectField(C + 'WriteContentRequest', 'labels', 7, 'string');
    expect(root.lookupEnum(C + 'WriteAction').values).toEqual({ STAT: 0, WRITE: 1, COMMIT: 2 });
  });

  it('encodes a ReadContentRequest byte-for-byte as Go would', () => {
    const R = root.lookupType('containerd.services.content.v1.ReadContentRequest');
    const bytes = R.encode(R.create({ digest: 'sha256:ab', offset: 4096, size: 0 })).finish();
    // 0a 09 "sha256:ab" | 10 80 20
    expect(Buffer.from(bytes).toString('hex')).toBe('0a09' + Buffer.from('sha256:ab').toString('hex') + '108020');
  });
});

describe('cgroups metrics', () => {
  it('v2 Metrics and parts', () => {
    const M = 'io.containerd.cgroups.v2.Metrics';
    expectField(M, 'pids', 1, 'PidsStat');
    expectField(M, 'cpu', 2, 'CPUStat');
    expect(fieldsOf(M)['memory']?.id).toBe(4); // 3 is unused upstream
    expectField(M, 'memory', 4, 'MemoryStat');
    expectField(M, 'rdma', 5, 'RdmaStat');
    expectField(M, 'io', 6, 'IOStat');
    expectField(M, 'hugetlb', 7, 'HugeTlbStat', true);
    expectField(M, 'memory_events', 8, 'MemoryEvents');
    expectField('io.containerd.cgroups.v2.CPUStat', 'usage_usec', 1, 'uint64');
    expectField('io.containerd.cgroups.v2.CPUStat', 'throttled_usec', 6, 'uint64');
    expectField('io.containerd.cgroups.v2.MemoryStat', 'usage', 32, 'uint64');
    expectField('io.containerd.cgroups.v2.MemoryStat', 'usage_limit', 33, 'uint64');
    expectField('io.containerd.cgroups.v2.MemoryStat', 'swap_usage', 34, 'uint64');
    expectField('io.containerd.cgroups.v2.MemoryEvents', 'oom_kill', 5, 'uint64');
    expectField('io.containerd.cgroups.v2.IOStat', 'usage', 1, 'IOEntry', true);
    expectField('io.containerd.cgroups.v2.IOEntry', 'rbytes', 3, 'uint64');
    expectField('io.containerd.cgroups.v2.HugeTlbStat', 'pagesize', 3, 'string');
  });

  it('v1 Metrics and parts', () => {
    const M = 'io.containerd.cgroups.v1.Metrics';
    expectField(M, 'hugetlb', 1, 'HugetlbStat', true);
    expectField(M, 'pids', 2, 'PidsStat');
    expectField(M, 'cpu', 3, 'CPUStat');
    expectField(M, 'memory', 4, 'MemoryStat');
    expectField(M, 'blkio', 5, 'BlkIOStat');
    expectField(M, 'memory_oom_control', 9, 'MemoryOomControl');
    expectField('io.containerd.cgroups.v1.CPUUsage', 'per_cpu', 4, 'uint64', true);
    expectField('io.containerd.cgroups.v1.MemoryStat', 'usage', 33, 'MemoryEntry');
    expectField('io.containerd.cgroups.v1.MemoryStat', 'kernel_tcp', 36, 'MemoryEntry');
  });
});

describe('ttrpc envelope', () => {
  it('Request, Response, KeyValue, StringList, google.rpc.Status', () => {
    expect(Object.entries(fieldsOf('ttrpc.Request')).map(([n, f]) => [n, f.id, f.type, f.repeated])).toEqual([
      ['service', 1, 'string', false],
      ['method', 2, 'string', false],
      ['payload', 3, 'bytes', false],
      ['timeout_nano', 4, 'int64', false],
      ['metadata', 5, 'KeyValue', true],
    ]);
    expectField('ttrpc.Response', 'status', 1, 'google.rpc.Status');
    expectField('ttrpc.Response', 'payload', 2, 'bytes');
    expectField('ttrpc.StringList', 'list', 1, 'string', true);
    expectField('ttrpc.KeyValue', 'key', 1, 'string');
    expectField('ttrpc.KeyValue', 'value', 2, 'string');
    expectField('google.rpc.Status', 'code', 1, 'int32');
    expectField('google.rpc.Status', 'message', 2, 'string');
    expectField('google.rpc.Status', 'details', 3, 'google.protobuf.Any', true);
  });
});
