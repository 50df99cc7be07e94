// Checks the Kata agent API schemas in proto/schema/kata against facts taken from
// upstream Kata Containers (src/libs/protocols/protos/*.proto): method names, field
// numbers and a full encode/decode round trip.
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import protobuf from 'protobufjs';

const schemaDir = fileURLToPath(new URL('../../proto/schema/', import.meta.url));

function loadKata(): protobuf.Root {
  const root = new protobuf.Root();
  // Imports are written relative to proto/schema ("kata/types.proto").
  root.resolvePath = (_origin, target) => path.join(schemaDir, target);
  root.loadSync(['kata/agent.proto', 'kata/health.proto'], { keepCase: true });
  root.resolveAll();
  return root;
}

const root = loadKata();

function fieldId(typeName: string, field: string): number {
  const f = root.lookupType(typeName).fields[field];
  if (!f) throw new Error(`${typeName} has no field ${field}`);
  return f.id;
}

const UPSTREAM_AGENT_METHODS = [
  'CreateContainer',
  'StartContainer',
  'RemoveContainer',
  'ExecProcess',
  'SignalProcess',
  'WaitProcess',
  'UpdateContainer',
  'UpdateEphemeralMounts',
  'StatsContainer',
  'PauseContainer',
  'ResumeContainer',
  'RemoveStaleVirtiofsShareMounts',
  'WriteStdin',
  'ReadStdout',
  'ReadStderr',
  'CloseStdin',
  'TtyWinResize',
  'UpdateInterface',
  'UpdateRoutes',
  'ListInterfaces',
  'ListRoutes',
  'AddARPNeighbors',
  'GetIPTables',
  'SetIPTables',
  'GetMetrics',
  'MemAgentMemcgSet',
  'MemAgentCompactSet',
  'CreateSandbox',
  'DestroySandbox',
  'OnlineCPUMem',
  'ReseedRandomDev',
  'GetGuestDetails',
  'MemHotplugByProbe',
  'SetGuestDateTime',
  'CopyFile',
  'GetOOMEvent',
  'AddSwap',
  'AddSwapPath',
  'GetDiagnosticData',
  'GetVolumeStats',
  'ResizeVolume',
  'SetPolicy',
];

describe('kata agent schema', () => {
  it('AgentService has exactly the upstream methods', () => {
    const svc = root.lookupService('grpc.AgentService');
    expect(Object.keys(svc.methods).sort()).toEqual([...UPSTREAM_AGENT_METHODS].sort());
    expect(Object.keys(svc.methods)).toHaveLength(42);
  });

  it('methods use the upstream request and response types', () => {
    const m = root.lookupService('grpc.AgentService').methods;
    const io = (name: string): [string, string] => {
      const method = m[name];
      if (!method) throw new Error(`no method ${name}`);
      return [method.resolvedRequestType!.fullName, method.resolvedResponseType!.fullName];
    };
    expect(io('CreateContainer')).toEqual(['.grpc.CreateContainerRequest', '.google.protobuf.Empty']);
    expect(io('WaitProcess')).toEqual(['.grpc.WaitProcessRequest', '.grpc.WaitProcessResponse']);
    expect(io('WriteStdin')).toEqual(['.grpc.WriteStreamRequest', '.grpc.WriteStreamResponse']);
    expect(io('ReadStderr')).toEqual(['.grpc.ReadStreamRequest', '.grpc.ReadStreamResponse']);
    expect(io('UpdateInterface')).toEqual(['.grpc.UpdateInterfaceRequest', '.types.Interface']);
    expect(io('GetVolumeStats')).toEqual(['.grpc.VolumeStatsRequest', '.grpc.VolumeStatsResponse']);
    expect(io('MemAgentMemcgSet')).toEqual(['.grpc.MemAgentMemcgConfig', '.google.protobuf.Empty']);
    expect(io('GetOOMEvent')).toEqual(['.grpc.GetOOMEventRequest', '.grpc.OOMEvent']);
  });

  it('Health has Check and Version', () => {
    const svc = root.lookupService('grpc.Health');
    expect(Object.keys(svc.methods).sort()).toEqual(['Check', 'Version']);
    expect(svc.methods['Version']!.requestType).toBe('CheckRequest');
    const status = root.lookupEnum('grpc.HealthCheckResponse.ServingStatus');
    expect(status.values).toEqual({ UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2 });
  });

  it('field numbers match upstream', () => {
    const cases: Array<[string, string, number]> = [
      ['grpc.CreateContainerRequest', 'container_id', 1],
      ['grpc.CreateContainerRequest', 'OCI', 6],
      ['grpc.CreateContainerRequest', 'sandbox_pidns', 7],
      ['grpc.CreateContainerRequest', 'shared_mounts', 8],
      ['grpc.CreateContainerRequest', 'stderr_port', 11],
      ['grpc.ExecProcessRequest', 'process', 4],
      ['grpc.ExecProcessRequest', 'stdin_port', 5],
      ['grpc.WaitProcessResponse', 'status', 1],
      ['grpc.ReadStreamRequest', 'len', 3],
      ['grpc.ReadStreamResponse', 'data', 1],
      ['grpc.ReseedRandomDevRequest', 'data', 2],
      ['grpc.Storage', 'fstype', 4],
      ['grpc.Storage', 'mount_point', 6],
      ['grpc.Storage', 'fs_group', 7],
      ['grpc.FSGroup', 'group_id', 2],
      ['grpc.Device', 'vm_path', 3],
      ['grpc.Device', 'container_path', 4],
      ['grpc.CopyFileRequest', 'file_size', 2],
      ['grpc.CopyFileRequest', 'offset', 7],
      ['grpc.CopyFileRequest', 'data', 8],
      ['grpc.StatsContainerResponse', 'network_stats', 2],
      ['grpc.CgroupStats', 'blkio_stats', 4],
      ['grpc.CgroupStats', 'hugetlb_stats', 5],
      ['grpc.Spec', 'Process', 2],
      ['grpc.Spec', 'Annotations', 7],
      ['grpc.Spec', 'Linux', 8],
      ['grpc.Process', 'Cwd', 6],
      ['grpc.Process', 'OOMScoreAdj', 11],
      ['grpc.Mount', 'destination', 1],
      ['grpc.Mount', 'options', 4],
      ['grpc.LinuxSyscall', 'errnoret', 3],
      ['types.Interface', 'IPAddresses', 3],
      ['types.Interface', 'devicePath', 6],
      ['types.Route', 'flags', 7],
      ['types.Route', 'mtu', 8],
      ['grpc.Storage', 'shared', 8],
      ['grpc.AddSwapPathRequest', 'path', 1],
      ['grpc.GetDiagnosticDataRequest', 'log_type', 1],
      ['grpc.GetDiagnosticDataRequest', 'container_id', 2],
      ['grpc.GetDiagnosticDataResponse', 'data', 1],
      ['types.Interface', 'raw_flags', 8],
      ['types.Route', 'family', 6],
    ];
    for (const [type, field, id] of cases) {
      expect(fieldId(type, field), `${type}.${field}`).toBe(id);
    }
  });

  it('types, repeated and map fields match upstream', () => {
    const ccr = root.lookupType('grpc.CreateContainerRequest');
    expect(ccr.fields['devices']!.repeated).toBe(true);
    expect(ccr.fields['OCI']!.type).toBe('Spec');
    const cg = root.lookupType('grpc.CgroupStats');
    expect(cg.fields['hugetlb_stats']!.map).toBe(true);
    expect(root.lookupType('grpc.MemoryStats').fields['stats']!.map).toBe(true);
    expect(root.lookupType('grpc.WaitProcessResponse').fields['status']!.type).toBe('int32');
    expect(root.lookupType('grpc.CopyFileRequest').fields['uid']!.type).toBe('int32');
    expect(root.lookupType('grpc.CopyFileRequest').fields['file_size']!.type).toBe('int64');
    expect(root.lookupType('grpc.Process').fields['OOMScoreAdj']!.type).toBe('int64');
    expect(root.lookupType('grpc.User').fields['AdditionalGids']!.repeated).toBe(true);
    expect(root.lookupType('types.Interface').fields['mtu']!.type).toBe('uint64');
    expect(root.lookupEnum('types.IPFamily').values).toEqual({ v4: 0, v6: 1 });
    expect(root.lookupEnum('types.FSGroupChangePolicy').values).toEqual({ Always: 0, OnRootMismatch: 1 });
    expect(root.lookupEnum('grpc.VolumeUsage.Unit').values).toEqual({ UNKNOWN: 0, BYTES: 1, INODES: 2 });
    const memcg = root.lookupType('grpc.MemAgentMemcgConfig');
    expect(memcg.fields['swappiness_max']!.options?.['proto3_optional']).toBe(true);
  });

  it('a CreateContainerRequest with a nested OCI spec round-trips', () => {
    const CCR = root.lookupType('grpc.CreateContainerRequest');
    // Only non-default values: proto3 does not put zero values on the wire, so they
    // would not come back with defaults: false.
    const value = {
      container_id: 'c1',
      exec_id: 'c1',
      devices: [{ id: 'vda', type: 'blk', vm_path: '/dev/vda', options: ['ro'] }],
      storages: [
        {
          driver: 'virtio-fs',
          source: 'kataShared',
          fstype: 'virtiofs',
          options: ['nodev'],
          mount_point: '/run/kata-containers/shared/containers/c1/rootfs',
          fs_group: { group_id: 1000, group_change_policy: 1 },
        },
      ],
      OCI: {
        Version: '1.1.0',
        Process: {
          User: { UID: 1000, GID: 1000, AdditionalGids: [10, 20] },
          Args: ['/bin/sh', '-c', 'echo hi'],
          Env: ['PATH=/usr/bin:/bin'],
          Cwd: '/',
          OOMScoreAdj: -998,
          Rlimits: [{ Type: 'RLIMIT_NOFILE', Hard: 1024, Soft: 1024 }],
        },
        Root: { Path: 'rootfs', Readonly: true },
        Hostname: 'pod',
        Mounts: [{ destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid'] }],
        Annotations: { 'io.kubernetes.cri.container-type': 'container' },
        Linux: {
          Namespaces: [{ Type: 'pid' }, { Type: 'network', Path: '/var/run/netns/cni-1' }],
          Resources: { Memory: { Limit: 268435456 }, CPU: { Quota: 50000, Period: 100000 } },
          MaskedPaths: ['/proc/kcore'],
          Seccomp: {
            DefaultAction: 'SCMP_ACT_ERRNO',
            Syscalls: [{ Names: ['read'], Action: 'SCMP_ACT_ALLOW', errnoret: 1 }],
          },
        },
      },
      sandbox_pidns: true,
      stdout_port: 1025,
    };
    expect(CCR.verify(value)).toBeNull();
    const bytes = CCR.encode(CCR.fromObject(value)).finish();
    // Field 1 (container_id), wire type 2: first byte is 0x0a.
    expect(bytes[0]).toBe(0x0a);
    const back = CCR.toObject(CCR.decode(bytes), { longs: Number, enums: Number, defaults: false, oneofs: false });
    expect(back).toEqual(value);
  });
});
