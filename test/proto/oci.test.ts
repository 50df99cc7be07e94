import { describe, expect, it } from 'vitest';
import { jsonName, ociToGrpcSpec, ociToGrpcResources, OciSpecError } from '../../proto/oci.js';
import { decode, encode } from '../../proto/registry.js';

describe('OCI config.json -> grpc.Spec', () => {
  it('maps Go field names to runtime-spec JSON names', () => {
    expect(jsonName('grpc.Process', 'OOMScoreAdj')).toBe('oomScoreAdj');
    expect(jsonName('grpc.Linux', 'UIDMappings')).toBe('uidMappings');
    expect(jsonName('grpc.LinuxIDMapping', 'HostID')).toBe('hostID');
    expect(jsonName('grpc.LinuxResources', 'CPU')).toBe('cpu');
    expect(jsonName('grpc.LinuxResources', 'BlockIO')).toBe('blockIO');
    expect(jsonName('grpc.LinuxBlockIO', 'ThrottleReadIOPSDevice')).toBe('throttleReadIOPSDevice');
    expect(jsonName('grpc.LinuxIntelRdt', 'L3CacheSchema')).toBe('l3CacheSchema');
    expect(jsonName('grpc.User', 'UID')).toBe('uid');
    expect(jsonName('grpc.Spec', 'Version')).toBe('ociVersion');
    expect(jsonName('grpc.LinuxHugepageLimit', 'Pagesize')).toBe('pageSize');
    expect(jsonName('grpc.Mount', 'destination')).toBe('destination');
  });

  it('converts a containerd-style config.json and survives the wire', () => {
    const config = {
      ociVersion: '1.0.2-dev',
      process: {
        terminal: false,
        user: { uid: 0, gid: 0, additionalGids: [10] },
        args: ['sh', '-c', 'echo hi'],
        env: ['PATH=/bin'],
        cwd: '/',
        capabilities: { bounding: ['CAP_KILL'], effective: ['CAP_KILL'], permitted: ['CAP_KILL'] },
        rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
        noNewPrivileges: true,
        oomScoreAdj: 100,
      },
      root: { path: 'rootfs', readonly: true },
      hostname: 'pod',
      mounts: [{ destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid'] }],
      annotations: { 'io.kubernetes.cri.sandbox-id': 'abc' },
      linux: {
        uidMappings: [{ containerID: 0, hostID: 1000, size: 1 }],
        resources: {
          devices: [{ allow: false, access: 'rwm' }],
          memory: { limit: 1 << 28, disableOOMKiller: false },
          cpu: { shares: 1024, quota: 50000, period: 100000 },
          pids: { limit: 100 },
          hugepageLimits: [{ pageSize: '2MB', limit: 0 }],
        },
        cgroupsPath: '/k8s/pod',
        namespaces: [{ type: 'pid' }, { type: 'mount' }],
        seccomp: { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', errnoRet: 1 }] },
        maskedPaths: ['/proc/kcore'],
        personality: { domain: 'LINUX' },
      },
    };
    const spec = ociToGrpcSpec(config);
    const back = decode('grpc.Spec', encode('grpc.Spec', spec));
    expect(back.Version).toBe('1.0.2-dev');
    expect(back.Process?.Args).toEqual(['sh', '-c', 'echo hi']);
    expect(back.Process?.User?.AdditionalGids).toEqual([10]);
    expect(back.Process?.OOMScoreAdj).toBe(100);
    expect(back.Process?.Rlimits[0]).toMatchObject({ Type: 'RLIMIT_NOFILE', Hard: 1024, Soft: 1024 });
    expect(back.Root).toMatchObject({ Path: 'rootfs', Readonly: true });
    expect(back.Mounts[0]).toMatchObject({ destination: '/proc', type: 'proc', options: ['nosuid'] });
    expect(back.Annotations['io.kubernetes.cri.sandbox-id']).toBe('abc');
    expect(back.Linux?.UIDMappings[0]).toMatchObject({ ContainerID: 0, HostID: 1000, Size: 1 });
    expect(back.Linux?.Resources?.Memory?.Limit).toBe(1 << 28);
    expect(back.Linux?.Resources?.CPU).toMatchObject({ Shares: 1024, Quota: 50000, Period: 100000 });
    expect(back.Linux?.Resources?.HugepageLimits[0]?.Pagesize).toBe('2MB');
    expect(back.Linux?.Namespaces.map((n) => n.Type)).toEqual(['pid', 'mount']);
    expect(back.Linux?.Seccomp?.Syscalls[0]?.errnoret).toBe(1);
    expect(back.Linux?.MaskedPaths).toEqual(['/proc/kcore']);
  });

  it('names the offending key when a field has the wrong type', () => {
    expect(() => ociToGrpcSpec({ process: { args: 'sh' } })).toThrow(OciSpecError);
    expect(() => ociToGrpcSpec({ process: { args: 'sh' } })).toThrow('spec.process.args: expected an array');
    expect(() => ociToGrpcSpec({ linux: { resources: { pids: { limit: '5' } } } })).toThrow('spec.linux.resources.pids.limit');
    expect(() => ociToGrpcSpec('nope')).toThrow('spec: expected an object');
  });

  it('converts an Update request resources object', () => {
    const r = ociToGrpcResources({ memory: { limit: 64 << 20 }, cpu: { quota: 20000, period: 100000 } });
    expect(r.Memory?.Limit).toBe(64 << 20);
    expect(r.CPU?.Quota).toBe(20000);
  });
});
