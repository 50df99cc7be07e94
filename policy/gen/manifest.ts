// Kubernetes manifests for policy generation: the YAML documents (a List's items too), the pods
// their workloads make (Pod, Deployment, ReplicaSet, ReplicationController, StatefulSet,
// DaemonSet, Job, CronJob) with the name a pod will get as a pattern, and the ConfigMaps and
// Secrets their environment and volumes may reference. The parsed documents are kept, so the
// policy can be written back into each pod template as an annotation.
import { isMap, isSeq, parseAllDocuments, type Document, YAMLMap } from 'yaml';

export const POLICY_ANNOTATION = 'io.katacontainers.config.agent.policy';

export class ManifestError extends Error {
  override readonly name = 'ManifestError';
  readonly code = 'KATATS_POLICY_MANIFEST';
}

/** Kinds that carry no pod and need no policy: passed through untouched. */
const PASSIVE_KINDS = new Set([
  'ClusterRole', 'ClusterRoleBinding', 'LimitRange', 'Namespace', 'NetworkPolicy', 'PersistentVolume', 'PersistentVolumeClaim',
  'PodDisruptionBudget', 'PriorityClass', 'ResourceQuota', 'Role', 'RoleBinding', 'Service', 'ServiceAccount', 'StorageClass',
  'Ingress', 'HorizontalPodAutoscaler', 'RuntimeClass',
]);

/** What the pod spec looks like to the generator (a subset; everything else is ignored). */
export interface PodSpecLike {
  containers?: ContainerLike[];
  initContainers?: ContainerLike[];
  volumes?: VolumeLike[];
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  shareProcessNamespace?: boolean;
  hostname?: string;
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  runtimeClassName?: string;
  securityContext?: PodSecurityContextLike;
}

export interface PodSecurityContextLike {
  runAsUser?: number;
  runAsGroup?: number;
  fsGroup?: number;
  supplementalGroups?: number[];
  sysctls?: { name: string; value: string }[];
  seccompProfile?: { type?: string };
}

export interface ContainerLike {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  workingDir?: string;
  env?: EnvVarLike[];
  envFrom?: { prefix?: string; configMapRef?: { name: string; optional?: boolean }; secretRef?: { name: string; optional?: boolean } }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string; subPathExpr?: string; mountPropagation?: string }[];
  volumeDevices?: unknown[];
  securityContext?: {
    runAsUser?: number;
    runAsGroup?: number;
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
    seccompProfile?: { type?: string };
  };
  tty?: boolean;
  stdin?: boolean;
  terminationMessagePath?: string;
  livenessProbe?: ProbeLike;
  readinessProbe?: ProbeLike;
  startupProbe?: ProbeLike;
  lifecycle?: { postStart?: ProbeLike; preStop?: ProbeLike };
}

export interface ProbeLike {
  exec?: { command?: string[] };
}

export interface EnvVarLike {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    resourceFieldRef?: { resource: string };
    configMapKeyRef?: { name: string; key: string; optional?: boolean };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
  };
}

export interface VolumeLike {
  name: string;
  emptyDir?: { medium?: string };
  hostPath?: { path: string };
  configMap?: unknown;
  secret?: unknown;
  projected?: unknown;
  downwardAPI?: unknown;
  persistentVolumeClaim?: unknown;
  ephemeral?: unknown;
  [other: string]: unknown;
}

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** One pod template and where it came from. */
export interface PodTemplate {
  /** Kind and name of the resource, for messages: "Deployment/web". */
  origin: string;
  kind: string;
  /** The pod's name as an anchored-less regular expression (a Deployment's pods get generated names). */
  nameRegex: string;
  /** The pod's name when the manifest fixes it (a Pod). */
  exactName?: string;
  /** The namespace the manifest names, if any. */
  namespace?: string;
  metadata: ObjectMeta;
  spec: PodSpecLike;
  /** Where the template's annotations live in the document (for the write-back). */
  metadataPath: (string | number)[];
  doc: Document;
}

export interface ConfigSource {
  kind: 'ConfigMap' | 'Secret';
  name: string;
  namespace?: string;
  /** Values as strings (a Secret's data decoded from base64). */
  data: Record<string, string>;
}

export interface Manifest {
  docs: Document[];
  pods: PodTemplate[];
  configs: ConfigSource[];
}

/** Kubernetes' generateName suffix (5 characters from its safe alphabet). */
const SUFFIX = '[a-z0-9]{5}';

export function reEscape(s: string): string {
  return s.replace(/[\\.+*?()|[\]{}^$]/g, '\\$&');
}

function nameRegex(kind: string, meta: ObjectMeta, origin: string): { re: string; exact?: string } {
  const base = meta.name ? reEscape(meta.name) : meta.generateName ? `${reEscape(meta.generateName)}${SUFFIX}` : undefined;
  if (!base) throw new ManifestError(`${origin}: metadata.name (or generateName) is required`);
  switch (kind) {
    case 'Pod':
      return meta.name ? { re: base, exact: meta.name } : { re: base };
    case 'Deployment':
      // <deployment>-<pod-template-hash>-<suffix>
      return { re: `${base}-[a-z0-9]{1,10}-${SUFFIX}` };
    case 'ReplicaSet':
    case 'ReplicationController':
    case 'DaemonSet':
      return { re: `${base}-${SUFFIX}` };
    case 'StatefulSet':
      return { re: `${base}-[0-9]+` };
    case 'Job':
      return { re: `${base}(-[0-9]+)?-${SUFFIX}` };
    case 'CronJob':
      return { re: `${base}-[0-9]+(-[0-9]+)?-${SUFFIX}` };
    default:
      throw new ManifestError(`${origin}: kind ${kind} has no pods`);
  }
}

function asRecord(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function stringMap(v: unknown, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(asRecord(v))) {
    if (typeof x !== 'string') throw new ManifestError(`${what}.${k} must be a string`);
    out[k] = x;
  }
  return out;
}

function templatePath(kind: string): (string | number)[] {
  switch (kind) {
    case 'Pod':
      return [];
    case 'CronJob':
      return ['spec', 'jobTemplate', 'spec', 'template'];
    default:
      return ['spec', 'template'];
  }
}

function podFrom(obj: Record<string, unknown>, kind: string, doc: Document, prefix: (string | number)[]): PodTemplate {
  const meta = asRecord(obj.metadata) as ObjectMeta;
  const origin = `${kind}/${meta.name ?? meta.generateName ?? '?'}`;
  const at = templatePath(kind);
  let tpl: Record<string, unknown> = obj;
  for (const k of at) tpl = asRecord(tpl[k as string]);
  const spec = asRecord(tpl.spec) as PodSpecLike;
  if (!Array.isArray(spec.containers) || spec.containers.length === 0) throw new ManifestError(`${origin}: the pod has no containers`);
  const tmeta = asRecord(tpl.metadata) as ObjectMeta;
  const { re, exact } = nameRegex(kind, meta, origin);
  return {
    origin,
    kind,
    nameRegex: re,
    ...(exact ? { exactName: exact } : {}),
    ...(meta.namespace ? { namespace: meta.namespace } : {}),
    metadata: { ...tmeta, annotations: stringMap(tmeta.annotations, `${origin} annotations`), labels: stringMap(tmeta.labels, `${origin} labels`) },
    spec,
    metadataPath: [...prefix, ...at, 'metadata'],
    doc,
  };
}

function configFrom(obj: Record<string, unknown>, kind: 'ConfigMap' | 'Secret'): ConfigSource {
  const meta = asRecord(obj.metadata) as ObjectMeta;
  if (!meta.name) throw new ManifestError(`${kind} without metadata.name`);
  const data: Record<string, string> = {};
  if (kind === 'Secret') {
    for (const [k, v] of Object.entries(stringMap(obj.data, `Secret/${meta.name} data`))) data[k] = Buffer.from(v, 'base64').toString('utf8');
    Object.assign(data, stringMap(obj.stringData, `Secret/${meta.name} stringData`));
  } else {
    Object.assign(data, stringMap(obj.data, `ConfigMap/${meta.name} data`));
  }
  return { kind, name: meta.name, ...(meta.namespace ? { namespace: meta.namespace } : {}), data };
}

const MAX_MANIFEST = 16 * 1024 * 1024;

export function parseManifest(text: string, file = 'manifest'): Manifest {
  if (text.length > MAX_MANIFEST) throw new ManifestError(`${file}: larger than ${MAX_MANIFEST} characters`);
  const docs = parseAllDocuments(text, { uniqueKeys: true });
  if (!Array.isArray(docs)) throw new ManifestError(`${file}: not a YAML stream`);
  const out: Manifest = { docs: [], pods: [], configs: [] };
  for (const doc of docs) {
    if (doc.errors.length) throw new ManifestError(`${file}: ${doc.errors[0]!.message}`);
    out.docs.push(doc);
    const obj = asRecord(doc.toJS({ maxAliasCount: 100 }));
    if (Object.keys(obj).length === 0) continue;
    const visit = (o: Record<string, unknown>, prefix: (string | number)[]) => {
      const kind = o.kind;
      if (typeof kind !== 'string') throw new ManifestError(`${file}: a document without kind`);
      if (kind === 'List' || kind.endsWith('List')) {
        const items = Array.isArray(o.items) ? o.items : [];
        items.forEach((it, i) => visit(asRecord(it), [...prefix, 'items', i]));
      } else if (kind === 'ConfigMap' || kind === 'Secret') {
        out.configs.push(configFrom(o, kind));
      } else if (['Pod', 'Deployment', 'ReplicaSet', 'ReplicationController', 'StatefulSet', 'DaemonSet', 'Job', 'CronJob'].includes(kind)) {
        out.pods.push(podFrom(o, kind, doc, prefix));
      } else if (!PASSIVE_KINDS.has(kind)) {
        throw new ManifestError(`${file}: kind ${kind} is not supported`);
      }
    };
    visit(obj, []);
  }
  return out;
}

/** Extra ConfigMaps and Secrets from other files (`--config-file`). */
export function parseConfigSources(text: string, file: string): ConfigSource[] {
  return parseManifest(text, file).configs;
}

/** Sets (or replaces) the policy annotation on the pod template; the rest of the document is kept as written. */
export function setPolicyAnnotation(p: PodTemplate, policyText: string): void {
  const value = Buffer.from(policyText, 'utf8').toString('base64');
  let node: unknown = p.doc.contents;
  for (const k of p.metadataPath) {
    if (!isMap(node) && !isSeq(node)) throw new ManifestError(`${p.origin}: cannot reach ${p.metadataPath.join('.')}`);
    let next: unknown = (node as YAMLMap).get(k, true);
    if (next === undefined && k === 'metadata' && isMap(node)) {
      next = new YAMLMap();
      node.set('metadata', next);
    }
    node = next;
  }
  if (!isMap(node)) throw new ManifestError(`${p.origin}: metadata is not a mapping`);
  // Block style from here down: a policy does not belong on one line with the labels.
  node.flow = false;
  let ann: unknown = node.get('annotations', true);
  if (!isMap(ann)) {
    ann = new YAMLMap();
    node.set('annotations', ann);
  }
  (ann as YAMLMap).flow = false;
  (ann as YAMLMap).set(POLICY_ANNOTATION, value);
}

export function renderManifest(m: Manifest): string {
  return m.docs.map((d) => d.toString({ lineWidth: 0 })).join('---\n');
}
