// A container's environment as kubelet and containerd build it, with the values that are only
// known on the node (the pod's IP, the node's name, ...) kept as patterns. kubelet resolves
// env and envFrom (ConfigMaps, Secrets, the downward API) and expands $(VAR) references in
// values, command and args against the variables defined before them; containerd starts from
// the image's Env, adds HOSTNAME, then the CRI variables, a later one replacing an earlier one
// of the same name.
import type { ConfigSource, ContainerLike, PodTemplate } from './manifest.js';
import { ManifestError, reEscape } from './manifest.js';

/** A value made of literal text and patterns (regular expressions for the node-time parts). */
export type Piece = string | { re: string };
export type Template = Piece[];

export function literal(s: string): Template {
  return [s];
}

export function isExact(t: Template): boolean {
  return t.every((p) => typeof p === 'string');
}

export function text(t: Template): string {
  return t.map((p) => (typeof p === 'string' ? p : '')).join('');
}

export function toRegex(t: Template): string {
  return t.map((p) => (typeof p === 'string' ? reEscape(p) : `(?:${p.re})`)).join('');
}

export interface Patterns {
  ipv4: string;
  dnsLabel: string;
  uuid: string;
}

/** kubelet's expansion (third_party/forked/golang/expansion): $(NAME) when defined, $$ is $. */
export function expand(input: string, lookup: (name: string) => Template | undefined): Template {
  const out: Template = [];
  let lit = '';
  for (let i = 0; i < input.length; i++) {
    const c = input[i]!;
    if (c === '$' && i + 1 < input.length) {
      const n = input[i + 1]!;
      if (n === '$') {
        lit += '$';
        i++;
        continue;
      }
      if (n === '(') {
        const close = input.indexOf(')', i + 2);
        if (close > 0) {
          const name = input.slice(i + 2, close);
          const v = lookup(name);
          if (v) {
            if (lit) out.push(lit);
            lit = '';
            out.push(...v);
          } else {
            lit += input.slice(i, close + 1);
          }
          i = close;
          continue;
        }
      }
    }
    lit += c;
  }
  if (lit || out.length === 0) out.push(lit);
  return out;
}

/** A name kubelet accepts as an environment variable (IsEnvVarName). */
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;

function findConfig(configs: ConfigSource[], kind: ConfigSource['kind'], name: string, namespace: string | undefined): ConfigSource | undefined {
  return configs.find((c) => c.kind === kind && c.name === name && (c.namespace === undefined || namespace === undefined || c.namespace === namespace));
}

/**
 * The variables kubelet passes over CRI for a container, in order, each a template. Values that
 * reference ConfigMaps or Secrets not given to the generator are errors (unless optional).
 */
export function kubeletEnv(pod: PodTemplate, c: ContainerLike, configs: ConfigSource[], pat: Patterns): [string, Template][] {
  const vars = new Map<string, Template>();
  const where = `${pod.origin} container ${c.name}`;
  for (const from of c.envFrom ?? []) {
    const ref = from.configMapRef ?? from.secretRef;
    const kind = from.configMapRef ? 'ConfigMap' : 'Secret';
    if (!ref) throw new ManifestError(`${where}: envFrom without configMapRef or secretRef`);
    const src = findConfig(configs, kind, ref.name, pod.namespace);
    if (!src) {
      if (ref.optional) continue;
      throw new ManifestError(`${where}: envFrom ${kind} ${ref.name} is not among the inputs (add it to the manifest or --config-file)`);
    }
    for (const k of Object.keys(src.data).sort()) {
      const name = (from.prefix ?? '') + k;
      if (ENV_NAME.test(name)) vars.set(name, literal(src.data[k]!));
    }
  }
  for (const e of c.env ?? []) {
    if (typeof e.name !== 'string' || (e.value !== undefined && typeof e.value !== 'string')) {
      throw new ManifestError(`${where}: env ${String(e.name)}: name and value must be strings (quote values like true or 8080)`);
    }
    if (!e.valueFrom) {
      vars.set(e.name, expand(e.value ?? '', (n) => vars.get(n)));
      continue;
    }
    const v = valueFrom(pod, c, e, configs, pat, where);
    if (v) vars.set(e.name, v);
  }
  return [...vars];
}

function valueFrom(pod: PodTemplate, c: ContainerLike, e: NonNullable<ContainerLike['env']>[number], configs: ConfigSource[], pat: Patterns, where: string): Template | undefined {
  const vf = e.valueFrom!;
  const keyRef = vf.configMapKeyRef ?? vf.secretKeyRef;
  if (keyRef) {
    const kind = vf.configMapKeyRef ? 'ConfigMap' : 'Secret';
    const src = findConfig(configs, kind, keyRef.name, pod.namespace);
    const v = src?.data[keyRef.key];
    if (v === undefined) {
      if (keyRef.optional) return undefined;
      throw new ManifestError(`${where}: env ${e.name}: ${kind} ${keyRef.name} key ${keyRef.key} is not among the inputs`);
    }
    return literal(v);
  }
  if (vf.resourceFieldRef) return [{ re: '[0-9]+' }];
  const path = vf.fieldRef?.fieldPath;
  if (!path) throw new ManifestError(`${where}: env ${e.name}: valueFrom without a source`);
  switch (path) {
    case 'metadata.name':
      return pod.exactName ? literal(pod.exactName) : [{ re: pod.nameRegex }];
    case 'metadata.namespace':
      return pod.namespace ? literal(pod.namespace) : [{ re: pat.dnsLabel }];
    case 'metadata.uid':
      return [{ re: pat.uuid }];
    case 'spec.nodeName':
      return [{ re: pat.dnsLabel }];
    case 'spec.serviceAccountName':
      return literal(pod.spec.serviceAccountName ?? 'default');
    case 'status.podIP':
    case 'status.hostIP':
      return [{ re: pat.ipv4 }];
    case 'status.podIPs':
    case 'status.hostIPs':
      return [{ re: '[0-9a-fA-F.:,]+' }];
  }
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (m) {
    const map = m[1] === 'labels' ? pod.metadata.labels : pod.metadata.annotations;
    const v = map?.[m[2]!];
    if (v === undefined) throw new ManifestError(`${where}: env ${e.name}: the pod has no ${m[1] === 'labels' ? 'label' : 'annotation'} ${m[2]}`);
    return literal(v);
  }
  throw new ManifestError(`${where}: env ${e.name}: field reference ${path} is not supported`);
}
