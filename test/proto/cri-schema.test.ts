// The CRI runtime.v1 subset under proto/schema/cri, checked against facts from upstream
// (kubernetes cri-api pkg/apis/runtime/v1/api.proto): service and method names as gRPC paths
// carry them, and field numbers of the messages the harness sends. A drifted number makes
// containerd read a different field without any error, so the numbers are spelled out here.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { decode, encode } from '../../proto/registry.js';

const SCHEMA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../proto/schema');

let root: protobuf.Root;

function field(typeName: string, name: string): { id: number; type: string; repeated: boolean; map: boolean } | undefined {
  const f = root.lookupType(typeName).fields[name];
  return f && { id: f.id, type: f.type, repeated: f.repeated, map: f instanceof protobuf.MapField };
}

function expectFields(typeName: string, want: Record<string, [number, string]>): void {
  for (const [name, [id, type]] of Object.entries(want)) {
    expect(field(typeName, name), `${typeName}.${name}`).toMatchObject({ id, type });
  }
}

beforeAll(() => {
  root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(SCHEMA_DIR, target);
  root.loadSync(['cri/runtime/v1/api.proto'], { keepCase: true });
  root.resolveAll();
});

describe('runtime.v1 services', () => {
  it('name the rpcs the harness calls with upstream request/response types', () => {
    const rs = root.lookupService('runtime.v1.RuntimeService');
    const sig = (s: protobuf.Service) => Object.fromEntries(s.methodsArray.map((m) => [m.name, `${m.requestType} -> ${m.responseType}`]));
    expect(sig(rs)).toMatchObject({
      Version: 'VersionRequest -> VersionResponse',
      RunPodSandbox: 'RunPodSandboxRequest -> RunPodSandboxResponse',
      StopPodSandbox: 'StopPodSandboxRequest -> StopPodSandboxResponse',
      RemovePodSandbox: 'RemovePodSandboxRequest -> RemovePodSandboxResponse',
      PodSandboxStatus: 'PodSandboxStatusRequest -> PodSandboxStatusResponse',
      ListPodSandbox: 'ListPodSandboxRequest -> ListPodSandboxResponse',
      CreateContainer: 'CreateContainerRequest -> CreateContainerResponse',
      StartContainer: 'StartContainerRequest -> StartContainerResponse',
      StopContainer: 'StopContainerRequest -> StopContainerResponse',
      RemoveContainer: 'RemoveContainerRequest -> RemoveContainerResponse',
      ListContainers: 'ListContainersRequest -> ListContainersResponse',
      ContainerStatus: 'ContainerStatusRequest -> ContainerStatusResponse',
      ExecSync: 'ExecSyncRequest -> ExecSyncResponse',
    });
    expect(sig(root.lookupService('runtime.v1.ImageService'))).toMatchObject({
      ListImages: 'ListImagesRequest -> ListImagesResponse',
      ImageStatus: 'ImageStatusRequest -> ImageStatusResponse',
    });
  });
});

describe('runtime.v1 field numbers', () => {
  it('RunPodSandbox and the pod config', () => {
    expectFields('runtime.v1.RunPodSandboxRequest', { config: [1, 'PodSandboxConfig'], runtime_handler: [2, 'string'] });
    expectFields('runtime.v1.PodSandboxConfig', {
      metadata: [1, 'PodSandboxMetadata'],
      hostname: [2, 'string'],
      log_directory: [3, 'string'],
      dns_config: [4, 'DNSConfig'],
      port_mappings: [5, 'PortMapping'],
      labels: [6, 'string'],
      annotations: [7, 'string'],
      linux: [8, 'LinuxPodSandboxConfig'],
    });
    expect(field('runtime.v1.PodSandboxConfig', 'annotations')?.map).toBe(true);
    expectFields('runtime.v1.PodSandboxMetadata', { name: [1, 'string'], uid: [2, 'string'], namespace: [3, 'string'], attempt: [4, 'uint32'] });
    // run_as_group was added after seccomp_profile_path and got 8; seccomp/apparmor profiles 9 and 10.
    expectFields('runtime.v1.LinuxSandboxSecurityContext', {
      namespace_options: [1, 'NamespaceOption'],
      run_as_user: [3, 'Int64Value'],
      privileged: [6, 'bool'],
      seccomp_profile_path: [7, 'string'],
      run_as_group: [8, 'Int64Value'],
      seccomp: [9, 'SecurityProfile'],
      apparmor: [10, 'SecurityProfile'],
    });
    expectFields('runtime.v1.NamespaceOption', { network: [1, 'NamespaceMode'], pid: [2, 'NamespaceMode'], ipc: [3, 'NamespaceMode'], target_id: [4, 'string'] });
    expect(root.lookupEnum('runtime.v1.NamespaceMode').values).toEqual({ POD: 0, CONTAINER: 1, NODE: 2, TARGET: 3 });
  });

  it('CreateContainer, mounts and the container security context', () => {
    expectFields('runtime.v1.CreateContainerRequest', { pod_sandbox_id: [1, 'string'], config: [2, 'ContainerConfig'], sandbox_config: [3, 'PodSandboxConfig'] });
    expectFields('runtime.v1.ContainerConfig', {
      metadata: [1, 'ContainerMetadata'],
      image: [2, 'ImageSpec'],
      command: [3, 'string'],
      args: [4, 'string'],
      envs: [6, 'KeyValue'],
      mounts: [7, 'Mount'],
      log_path: [11, 'string'],
      tty: [14, 'bool'],
      linux: [15, 'LinuxContainerConfig'],
    });
    expectFields('runtime.v1.Mount', { container_path: [1, 'string'], host_path: [2, 'string'], readonly: [3, 'bool'], propagation: [5, 'MountPropagation'] });
    expectFields('runtime.v1.ImageSpec', { image: [1, 'string'], annotations: [2, 'string'], user_specified_image: [18, 'string'], runtime_handler: [19, 'string'] });
    // run_as_group is 12, not 7: numbers follow history, not the order of the declaration.
    expectFields('runtime.v1.LinuxContainerSecurityContext', {
      namespace_options: [3, 'NamespaceOption'],
      run_as_user: [5, 'Int64Value'],
      readonly_rootfs: [7, 'bool'],
      run_as_group: [12, 'Int64Value'],
      seccomp: [15, 'SecurityProfile'],
      apparmor: [16, 'SecurityProfile'],
    });
  });

  it('statuses and ExecSync', () => {
    expectFields('runtime.v1.ContainerStatus', {
      id: [1, 'string'],
      state: [3, 'ContainerState'],
      exit_code: [7, 'int32'],
      reason: [10, 'string'],
      message: [11, 'string'],
      mounts: [14, 'Mount'],
      image_id: [17, 'string'],
    });
    expectFields('runtime.v1.PodSandboxStatus', { id: [1, 'string'], state: [3, 'PodSandboxState'], created_at: [4, 'int64'], runtime_handler: [9, 'string'] });
    expectFields('runtime.v1.ExecSyncRequest', { container_id: [1, 'string'], cmd: [2, 'string'], timeout: [3, 'int64'] });
    expectFields('runtime.v1.ExecSyncResponse', { stdout: [1, 'bytes'], stderr: [2, 'bytes'], exit_code: [3, 'int32'] });
    expect(root.lookupEnum('runtime.v1.ContainerState').values).toEqual({ CONTAINER_CREATED: 0, CONTAINER_RUNNING: 1, CONTAINER_EXITED: 2, CONTAINER_UNKNOWN: 3 });
    expect(root.lookupEnum('runtime.v1.PodSandboxState').values).toEqual({ SANDBOX_READY: 0, SANDBOX_NOTREADY: 1 });
  });

  it('encodes through the generated registry with the upstream wire tags', () => {
    // ImageSpec.user_specified_image = 18, length-delimited: tag (18 << 3 | 2) = 146 = 0x92 0x01.
    const bytes = encode('runtime.v1.ImageSpec', { user_specified_image: 'x' });
    expect([...bytes]).toEqual([0x92, 0x01, 1, 0x78]);
    const back = decode('runtime.v1.ExecSyncResponse', Uint8Array.from([0x18, 7, 0x0a, 2, 0x68, 0x69]));
    expect(back.exit_code).toBe(7);
    expect(Buffer.from(back.stdout).toString()).toBe('hi');
  });
});
