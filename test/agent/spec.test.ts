// grpc.Spec -> OCI runtime-spec JSON: field names and meanings as config.json has them.
import { describe, expect, it } from 'vitest';
import { decode, encode } from '../../proto/registry.js';
import { specToOci, resourcesToOci, ociVersionFor } from '../../agent/spec.js';
import { exitCodeFromWaitStatus } from '../../agent/process.js';
import { parseBlkioV1 } from '../../agent/cgroups.js';

describe('spec conversion', () => {
  // Through the wire codec, so defaults are what a real request carries.
  const wire = (s: Parameters<typeof encode<'grpc.Spec'>>[1]) => decode('grpc.Spec', encode('grpc.Spec', s));

  it('converts every section with runtime-spec names', () => {
    const oci = specToOci(
      wire({
        Version: '1.1.0',
        Process: {
          Terminal: true,
          ConsoleSize: { Height: 24, Width: 80 },
          User: { UID: 1000, GID: 1000, AdditionalGids: [10, 20] },
          Args: ['sh'],
          Env: ['A=1'],
          Cwd: '/work',
          Capabilities: { Bounding: ['CAP_KILL'], Effective: ['CAP_KILL'], Permitted: ['CAP_KILL'] },
          Rlimits: [{ Type: 'RLIMIT_NOFILE', Hard: 10, Soft: 5 }],
          NoNewPrivileges: true,
          OOMScoreAdj: 100,
        },
        Root: { Path: '/run/kata-containers/shared/containers/c/rootfs', Readonly: true },
        Hostname: 'h',
        Mounts: [{ destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid'] }],
        Hooks: { Prestart: [{ Path: '/bin/hook', Args: ['hook', 'a'], Timeout: 5 }] },
        Annotations: { 'io.kubernetes.cri.container-type': 'container' },
        Linux: {
          UIDMappings: [{ HostID: 100000, ContainerID: 0, Size: 65536 }],
          Sysctl: { 'net.ipv4.ip_forward': '1' },
          Resources: {
            Devices: [{ Allow: false, Access: 'rwm', Major: -1, Minor: -1 }, { Allow: true, Type: 'c', Major: 1, Minor: 3, Access: 'rwm' }],
            Memory: { Limit: 1 << 30, Swappiness: 0 },
            CPU: { Shares: 1024, Quota: 50000, Period: 100000, Cpus: '0-1' },
            Pids: { Limit: 100 },
            HugepageLimits: [{ Pagesize: '2MB', Limit: 0 }],
          },
          CgroupsPath: '/kubepods/pod1/c',
          Namespaces: [{ Type: 'network', Path: '/proc/1/ns/net' }, { Type: 'mount' }],
          Devices: [{ Path: '/dev/fuse', Type: 'c', Major: 10, Minor: 229, FileMode: 0o666 }],
          Seccomp: { DefaultAction: 'SCMP_ACT_ERRNO', Architectures: ['SCMP_ARCH_X86_64'], Syscalls: [{ Names: ['read'], Action: 'SCMP_ACT_ALLOW' }, { Names: ['mkdir'], Action: 'SCMP_ACT_ERRNO', errnoret: 0 }] },
          MaskedPaths: ['/proc/kcore'],
          ReadonlyPaths: ['/proc/sys'],
          RootfsPropagation: 'rslave',
        },
      }),
    );
    expect(oci.ociVersion).toBe('1.1.0');
    expect(oci.process).toEqual({
      terminal: true,
      consoleSize: { height: 24, width: 80 },
      user: { uid: 1000, gid: 1000, additionalGids: [10, 20] },
      args: ['sh'],
      env: ['A=1'],
      cwd: '/work',
      capabilities: { bounding: ['CAP_KILL'], effective: ['CAP_KILL'], inheritable: [], permitted: ['CAP_KILL'], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 10, soft: 5 }],
      noNewPrivileges: true,
      oomScoreAdj: 100,
    });
    expect(oci.root).toEqual({ path: '/run/kata-containers/shared/containers/c/rootfs', readonly: true });
    expect(oci.mounts).toEqual([{ destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid'] }]);
    expect(oci.hooks).toEqual({ prestart: [{ path: '/bin/hook', args: ['hook', 'a'], timeout: 5 }] });
    expect(oci.annotations).toEqual({ 'io.kubernetes.cri.container-type': 'container' });
    const l = oci.linux!;
    expect(l.uidMappings).toEqual([{ containerID: 0, hostID: 100000, size: 65536 }]);
    expect(l.sysctl).toEqual({ 'net.ipv4.ip_forward': '1' });
    expect(l.resources!.devices).toEqual([{ allow: false, access: 'rwm' }, { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }]);
    expect(l.resources!.memory).toEqual({ limit: 1 << 30 });
    expect(l.resources!.cpu).toEqual({ shares: 1024, quota: 50000, period: 100000, cpus: '0-1' });
    expect(l.resources!.pids).toEqual({ limit: 100 });
    expect(l.resources!.hugepageLimits).toEqual([{ pageSize: '2MB', limit: 0 }]);
    expect(l.cgroupsPath).toBe('/kubepods/pod1/c');
    expect(l.namespaces).toEqual([{ type: 'network', path: '/proc/1/ns/net' }, { type: 'mount' }]);
    expect(l.devices).toEqual([{ path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 }]);
    const sc = l.seccomp as { syscalls: Record<string, unknown>[] };
    expect(sc.syscalls[0]).toEqual({ names: ['read'], action: 'SCMP_ACT_ALLOW' });
    expect(sc.syscalls[1]).toEqual({ names: ['mkdir'], action: 'SCMP_ACT_ERRNO', errnoRet: 0 });
    expect(l.maskedPaths).toEqual(['/proc/kcore']);
    expect(l.rootfsPropagation).toBe('rslave');
    // What crun reads is JSON: no undefined holes, no protobuf objects.
    expect(JSON.parse(JSON.stringify(oci))).toEqual(JSON.parse(JSON.stringify(oci)));
  });

  it('keeps -1 (unlimited) quotas and pids, drops zero values', () => {
    expect(resourcesToOci(decode('grpc.LinuxResources', encode('grpc.LinuxResources', { CPU: { Quota: -1 }, Pids: { Limit: -1 }, Memory: { Limit: 0 } })))).toEqual({
      cpu: { quota: -1 },
      pids: { limit: -1 },
    });
  });

  it('writes an ociVersion the guest crun accepts: containerd 2.x sends 1.2.x', () => {
    expect(ociVersionFor('1.2.1')).toBe('1.1.0');
    expect(ociVersionFor('1.3.0')).toBe('1.1.0');
    expect(ociVersionFor('1.1.0')).toBe('1.1.0');
    expect(ociVersionFor('1.0.2-dev')).toBe('1.0.2-dev');
    expect(ociVersionFor('')).toBe('1.0.2');
    expect(ociVersionFor('2.0.0')).toBe('2.0.0');
  });

  it('computes exit codes as Kata reports them', () => {
    expect(exitCodeFromWaitStatus(3 << 8)).toBe(3);
    expect(exitCodeFromWaitStatus(0)).toBe(0);
    expect(exitCodeFromWaitStatus(9)).toBe(137);
    expect(exitCodeFromWaitStatus(15 | 0x80)).toBe(143); // core dumped flag
  });

  it('parses blkio v1 files, skipping totals', () => {
    expect(parseBlkioV1('8:0 Read 4096\n8:0 Write 0\nTotal 4096\n')).toEqual([
      { major: 8, minor: 0, op: 'Read', value: 4096 },
      { major: 8, minor: 0, op: 'Write', value: 0 },
    ]);
  });
});
