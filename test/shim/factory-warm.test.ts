// The template's warm container (shim/factory-warm.ts) against the specs containerd sends: every
// kind of message a containerd spec carries must have passed through the template's agent once,
// or each clone generates its codec and compiles its handling itself. The template build that
// runs this spec for real is in factory.test.ts.
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { ociToGrpcSpec } from '../../proto/oci.js';
import { messageType } from '../../proto/registry.js';
import { warmSpec } from '../../shim/factory-warm.js';

const CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE'];

/** A container's config.json as containerd's CRI writes one: ctr's defaults and a pod's resources, sysctls and seccomp. */
const CRI_SPEC = {
  ociVersion: '1.1.0',
  process: {
    user: { uid: 65534, gid: 65534, additionalGids: [65534] },
    args: ['sleep', 'infinity'],
    env: ['PATH=/bin', 'HOSTNAME=web'],
    cwd: '/',
    capabilities: { bounding: CAPS, effective: CAPS, permitted: CAPS },
    rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
    noNewPrivileges: true,
    oomScoreAdj: 1000,
  },
  root: { path: 'rootfs', readonly: false },
  hostname: 'web',
  mounts: [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ],
  annotations: { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'abc' },
  linux: {
    sysctl: { 'net.ipv4.ip_unprivileged_port_start': '0' },
    resources: {
      devices: [{ allow: false, access: 'rwm' }, { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }],
      memory: { limit: 268435456, swap: 268435456 },
      cpu: { shares: 102, quota: 50000, period: 100000 },
      pids: { limit: 100 },
    },
    cgroupsPath: 'kubepods-besteffort-pod1.slice:cri-containerd:abc',
    namespaces: [{ type: 'pid' }, { type: 'ipc', path: '/proc/1/ns/ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network', path: '/proc/1/ns/net' }],
    seccomp: {
      defaultAction: 'SCMP_ACT_ERRNO',
      architectures: ['SCMP_ARCH_X86_64'],
      syscalls: [
        { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' },
        { names: ['personality'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 0, op: 'SCMP_CMP_EQ' }] },
      ],
    },
    maskedPaths: ['/proc/kcore', '/proc/keys'],
    readonlyPaths: ['/proc/sys'],
  },
};

/** The message types a decoded object carries, by field path (repeated and map values included). */
function carriedTypes(type: protobuf.Type, value: Record<string, unknown>, out = new Set<string>()): Set<string> {
  for (const field of type.fieldsArray) {
    const v = value[field.name];
    if (v === undefined || v === null || !(field.resolve().resolvedType instanceof protobuf.Type)) continue;
    const sub = field.resolvedType as protobuf.Type;
    const items = field.map ? Object.values(v as object) : field.repeated ? (v as unknown[]) : [v];
    for (const item of items) {
      out.add(sub.fullName);
      carriedTypes(sub, item as Record<string, unknown>, out);
    }
  }
  return out;
}

describe('the template warm container', () => {
  const spec = messageType('grpc.Spec');
  const warm = carriedTypes(spec, warmSpec('/run/kata-containers/shared/containers/warm/rootfs') as unknown as Record<string, unknown>);

  it("carries every kind of message a CRI container's spec carries", () => {
    const cri = carriedTypes(spec, ociToGrpcSpec(CRI_SPEC) as unknown as Record<string, unknown>);
    expect(cri.size).toBeGreaterThan(8);
    expect([...cri].filter((t) => !warm.has(t))).toEqual([]);
  });

  it('survives the wire as it is (what the agent decodes is what was meant)', () => {
    const bytes = spec.encode(spec.fromObject(warmSpec('/r'))).finish();
    const back = spec.toObject(spec.decode(bytes), { defaults: false }) as Record<string, unknown>;
    expect(carriedTypes(spec, back)).toEqual(warm);
  });
});
