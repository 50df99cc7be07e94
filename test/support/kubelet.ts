// What the kubelet sends over CRI for a pod manifest, for tests that run pods through containerd's
// CRI plugin without a Kubernetes node: the sandbox config, and per container its command, args,
// environment (values, ConfigMap/Secret keys, envFrom, the downward API; $(VAR) expanded), the
// volume mounts backed by host directories this module writes (ConfigMap, Secret, emptyDir),
// kubelet's own mounts (/etc/hosts, the termination log), security context, default masked and
// read-only paths and labels. Written independently of policy/gen, on purpose: a generated
// policy is checked against what this produces and containerd builds from it. Host-network pods
// only (no CNI here); no service links (no API server), no service account token.
import fs from 'node:fs';
import path from 'node:path';
import type { Init } from '../../proto/registry.js';
import { runtime } from '../../proto/gen/types.js';

const { POD, CONTAINER, NODE } = runtime.v1.NamespaceMode;

type Obj = Record<string, unknown>;

export interface KubeletPod {
  name: string;
  namespace: string;
  uid: string;
  sandbox: Init<runtime.v1.PodSandboxConfig>;
  containers: { name: string; config: Init<runtime.v1.ContainerConfig> }[];
  /** Host files and dirs made for the pod (removed by the caller with the dir it gave). */
  dir: string;
}

const MASKED = ['/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware'];
const READONLY = ['/proc/asound', '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

function expandVars(s: string, env: Map<string, string>): string {
  return s.replace(/\$\$|\$\(([^)]*)\)/g, (m, name: string | undefined) => (m === '$$' ? '$' : env.has(name!) ? env.get(name!)! : m));
}

/**
 * The CRI requests kubelet would send for `pod` (a Pod manifest as a JS object), with host files
 * for its volumes under `dir`. `configs` are the ConfigMaps and Secrets (kind, metadata.name, data).
 */
export function kubeletPod(pod: Obj, configs: Obj[], dir: string, uid: string): KubeletPod {
  const meta = pod.metadata as Obj;
  const spec = pod.spec as Obj;
  const name = meta.name as string;
  const namespace = (meta.namespace as string | undefined) ?? 'default';
  const cfg = (kind: string, n: string): Record<string, string> => {
    const c = configs.find((x) => x.kind === kind && (x.metadata as Obj).name === n);
    if (!c) throw new Error(`kubelet: ${kind} ${n} not found`);
    const data = (c.data ?? {}) as Record<string, string>;
    return kind === 'Secret' ? Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()])) : { ...data };
  };
  const podDir = path.join(dir, 'pods', uid);
  fs.mkdirSync(path.join(podDir, 'volumes'), { recursive: true });
  fs.writeFileSync(path.join(podDir, 'etc-hosts'), `# Kubernetes-managed hosts file (host network).\n127.0.0.1\tlocalhost\n`);
  // Volumes as kubelet lays them out: one host dir per volume.
  const volumeDirs = new Map<string, string>();
  for (const v of (spec.volumes ?? []) as Obj[]) {
    const vname = v.name as string;
    let kindDir = 'kubernetes.io~empty-dir';
    let files: Record<string, string> = {};
    if (v.configMap) {
      kindDir = 'kubernetes.io~configmap';
      files = cfg('ConfigMap', (v.configMap as Obj).name as string);
    } else if (v.secret) {
      kindDir = 'kubernetes.io~secret';
      files = cfg('Secret', (v.secret as Obj).secretName as string);
    } else if (!v.emptyDir) throw new Error(`kubelet: volume ${vname}: only configMap, secret and emptyDir here`);
    const d = path.join(podDir, 'volumes', kindDir, vname);
    fs.mkdirSync(d, { recursive: true });
    for (const [f, content] of Object.entries(files)) fs.writeFileSync(path.join(d, f), content);
    volumeDirs.set(vname, d);
  }
  const hostNetwork = spec.hostNetwork === true;
  const nsOptions = { network: hostNetwork ? NODE : POD, pid: spec.shareProcessNamespace ? POD : CONTAINER, ipc: POD };
  const psc = (spec.securityContext ?? {}) as Obj;
  const sandbox: Init<runtime.v1.PodSandboxConfig> = {
    metadata: { name, uid, namespace, attempt: 0 },
    log_directory: `/var/log/pods/${namespace}_${name}_${uid}`,
    labels: { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': namespace, 'io.kubernetes.pod.uid': uid },
    // The pod's own annotations (a policy among them), then kubelet's.
    annotations: { ...((meta.annotations ?? {}) as Record<string, string>), 'kubernetes.io/config.source': 'api' },
    linux: {
      security_context: {
        namespace_options: nsOptions,
        ...(psc.runAsUser !== undefined ? { run_as_user: { value: psc.runAsUser as number } } : {}),
        ...(psc.runAsGroup !== undefined ? { run_as_group: { value: psc.runAsGroup as number } } : {}),
        supplemental_groups: [...((psc.supplementalGroups as number[] | undefined) ?? []), ...(psc.fsGroup !== undefined ? [psc.fsGroup as number] : [])],
      },
      sysctls: Object.fromEntries(((psc.sysctls ?? []) as Obj[]).map((s) => [s.name as string, s.value as string])),
    },
  };
  const containers = ((spec.containers ?? []) as Obj[]).map((c) => {
    const cname = c.name as string;
    const env = new Map<string, string>();
    for (const from of (c.envFrom ?? []) as Obj[]) {
      const ref = (from.configMapRef ?? from.secretRef) as Obj;
      for (const [k, v] of Object.entries(cfg(from.configMapRef ? 'ConfigMap' : 'Secret', ref.name as string))) env.set(`${(from.prefix as string | undefined) ?? ''}${k}`, v);
    }
    for (const e of (c.env ?? []) as Obj[]) {
      const vf = e.valueFrom as Obj | undefined;
      let value: string;
      if (!vf) value = expandVars((e.value as string | undefined) ?? '', env);
      else if (vf.configMapKeyRef) value = cfg('ConfigMap', (vf.configMapKeyRef as Obj).name as string)[(vf.configMapKeyRef as Obj).key as string]!;
      else if (vf.secretKeyRef) value = cfg('Secret', (vf.secretKeyRef as Obj).name as string)[(vf.secretKeyRef as Obj).key as string]!;
      else {
        const fp = (vf.fieldRef as Obj).fieldPath as string;
        value = ({ 'metadata.name': name, 'metadata.namespace': namespace, 'metadata.uid': uid, 'status.podIP': '127.0.0.1', 'status.hostIP': '127.0.0.1', 'spec.nodeName': 'node-1' } as Record<string, string>)[fp]!;
        if (value === undefined) throw new Error(`kubelet: fieldRef ${fp} not supported here`);
      }
      env.set(e.name as string, value);
    }
    const termDir = path.join(podDir, 'containers', cname);
    fs.mkdirSync(termDir, { recursive: true });
    const termFile = path.join(termDir, 'f00dbabe');
    fs.writeFileSync(termFile, '');
    const mounts: Init<runtime.v1.Mount>[] = [];
    for (const vm of (c.volumeMounts ?? []) as Obj[]) {
      const v = ((spec.volumes ?? []) as Obj[]).find((x) => x.name === vm.name)!;
      const ro = vm.readOnly === true || v.configMap !== undefined || v.secret !== undefined;
      mounts.push({ container_path: vm.mountPath as string, host_path: volumeDirs.get(vm.name as string)!, readonly: ro });
    }
    mounts.push({ container_path: '/etc/hosts', host_path: path.join(podDir, 'etc-hosts') });
    mounts.push({ container_path: (c.terminationMessagePath as string | undefined) ?? '/dev/termination-log', host_path: termFile });
    const sc = (c.securityContext ?? {}) as Obj;
    const caps = (sc.capabilities ?? {}) as Obj;
    const runAsUser = (sc.runAsUser ?? psc.runAsUser) as number | undefined;
    const runAsGroup = (sc.runAsGroup ?? psc.runAsGroup) as number | undefined;
    const config: Init<runtime.v1.ContainerConfig> = {
      metadata: { name: cname, attempt: 0 },
      image: { image: c.image as string },
      command: ((c.command ?? []) as string[]).map((a) => expandVars(a, env)),
      args: ((c.args ?? []) as string[]).map((a) => expandVars(a, env)),
      working_dir: (c.workingDir as string | undefined) ?? '',
      envs: [...env].map(([key, value]) => ({ key, value })),
      mounts,
      labels: { 'io.kubernetes.container.name': cname, 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': namespace, 'io.kubernetes.pod.uid': uid },
      annotations: { 'io.kubernetes.container.restartCount': '0', 'io.kubernetes.container.terminationMessagePath': '/dev/termination-log' },
      log_path: `${cname}/0.log`,
      tty: c.tty === true,
      stdin: c.stdin === true,
      linux: {
        resources: { cpu_shares: 2, oom_score_adj: 1000 },
        security_context: {
          namespace_options: nsOptions,
          capabilities: { add_capabilities: (caps.add ?? []) as string[], drop_capabilities: (caps.drop ?? []) as string[] },
          ...(runAsUser !== undefined ? { run_as_user: { value: runAsUser } } : { run_as_user: { value: 0 } }),
          ...(runAsGroup !== undefined ? { run_as_group: { value: runAsGroup } } : {}),
          readonly_rootfs: sc.readOnlyRootFilesystem === true,
          no_new_privs: sc.allowPrivilegeEscalation === false,
          supplemental_groups: [...((psc.supplementalGroups as number[] | undefined) ?? []), ...(psc.fsGroup !== undefined ? [psc.fsGroup as number] : [])],
          masked_paths: MASKED,
          readonly_paths: READONLY,
        },
      },
    };
    return { name: cname, config };
  });
  return { name, namespace, uid, sandbox, containers, dir: podDir };
}
