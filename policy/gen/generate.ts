// `katats policy gen`: a Kubernetes manifest and the images it names in, one policy per pod
// template out (our rules followed by `policy_data := {...}`), optionally written back into the
// manifest as the io.katacontainers.config.agent.policy annotation (base64). The same inputs give
// the same policy text, byte for byte: nothing depends on time, order of reads or the machine.
import { createHash } from 'node:crypto';
import { GEN_ANNOTATIONS, onLayers, sandboxPolicy, workloadPolicy, type ContainerPolicy, type PodContext } from './container.js';
import { ImageResolver, type ResolvedImage } from './image.js';
import { parseManifest, reEscape, renderManifest, setPolicyAnnotation, POLICY_ANNOTATION, type ConfigSource, type Manifest, type PodTemplate } from './manifest.js';
import { RULES } from './rules.js';
import { DEFAULT_SETTINGS, SettingsError, type Settings } from './settings.js';

export interface GenerateOptions {
  images: ImageResolver;
  settings?: Settings;
  /** Rules to use instead of ours (the policy_data follows them). */
  rules?: string;
  /** ConfigMaps and Secrets from other files. */
  configs?: ConfigSource[];
}

export interface PodPolicy {
  origin: string;
  text: string;
  /** sha256 of the text, hex: what the VM's launch data must carry. */
  sha256: string;
  data: PolicyData;
}

export interface PolicyData {
  containers: ContainerPolicy[];
  common: Settings['common'];
  sandbox: Settings['sandbox'];
  runtime_anno_patterns: Settings['runtime_anno_patterns'];
  request_defaults: Settings['request_defaults'];
}

export interface GenerateResult {
  manifest: Manifest;
  pods: PodPolicy[];
}

/** A DNS-1123 label: any namespace, when the manifest does not name one. */
const ANY_NAMESPACE = '[a-z0-9]([-a-z0-9]*[a-z0-9])?';

export function policyText(rules: string, data: PolicyData): string {
  return `${rules.endsWith('\n') ? rules : `${rules}\n`}\npolicy_data := ${JSON.stringify(data, null, 2)}\n`;
}

function requestDefaults(settings: Settings, pod: PodTemplate): Settings['request_defaults'] {
  const d = structuredClone(settings.request_defaults);
  const a = pod.metadata.annotations ?? {};
  if (a[GEN_ANNOTATIONS.allowLogs] === 'true') d.ReadStreamRequest = true;
  if (a[GEN_ANNOTATIONS.allowStdin] === 'true') {
    d.WriteStreamRequest = true;
    d.CloseStdinRequest = true;
  }
  return d;
}

/**
 * The settings' own placeholders ($(cpath), $(ipv4_a), ...) filled in every string, so the rules
 * use the patterns as they are; $(bundle-id) is left for the rules.
 */
function fillStrings<T>(v: T, common: Settings['common']): T {
  const vars = common as unknown as Record<string, unknown>;
  const fill = (s: string): string => {
    for (let round = 0; round < 4; round++) {
      const next = s.replace(/\$\(([a-z0-9_]+)\)/g, (m, name: string) => (typeof vars[name] === 'string' ? (vars[name] as string) : m));
      if (next === s) return s;
      s = next;
    }
    return s;
  };
  const walk = (x: unknown): unknown => {
    if (typeof x === 'string') return fill(x);
    if (Array.isArray(x)) return x.map(walk);
    if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, y]) => [k, walk(y)]));
    return x;
  };
  return walk(v) as T;
}

export async function podPolicy(pod: PodTemplate, o: GenerateOptions & { settings: Settings; configs: ConfigSource[] }): Promise<PodPolicy> {
  const settings = o.settings;
  const c = settings.common;
  const images = new Map<string, ResolvedImage>();
  const resolveOpts = { verity: onLayers({ settings }) };
  const all = [...(pod.spec.initContainers ?? []), ...(pod.spec.containers ?? [])];
  const names = new Set<string>();
  for (const ct of all) {
    if (!ct.name || !ct.image) throw new Error(`${pod.origin}: every container needs a name and an image`);
    if (names.has(ct.name)) throw new Error(`${pod.origin}: two containers named ${ct.name}`);
    names.add(ct.name);
    if (!images.has(ct.image)) images.set(ct.image, await o.images.resolve(ct.image, resolveOpts));
  }
  // The pause image when a source has it; else the settings say what it runs.
  const pause = await o.images.find(settings.cluster_config.pause_container_image, resolveOpts);
  const ctx: PodContext = {
    pod,
    settings,
    configs: o.configs,
    pat: { ipv4: c.ipv4_a, dnsLabel: c.dns_label, uuid: c.uuid },
    namespaceRe: pod.namespace ? reEscape(pod.namespace) : ANY_NAMESPACE,
    images,
  };
  const containers: ContainerPolicy[] = [sandboxPolicy(ctx, pause)];
  for (const ct of all) containers.push(workloadPolicy(ctx, ct, images.get(ct.image)!));
  const data: PolicyData = {
    containers,
    common: fillStrings(c, c),
    sandbox: settings.sandbox,
    runtime_anno_patterns: settings.runtime_anno_patterns,
    request_defaults: fillStrings(requestDefaults(settings, pod), c),
  };
  const text = policyText(o.rules ?? RULES, data);
  return { origin: pod.origin, text, sha256: createHash('sha256').update(text).digest('hex'), data };
}

export async function generate(manifestText: string, o: GenerateOptions, file = 'manifest'): Promise<GenerateResult> {
  const manifest = parseManifest(manifestText, file);
  const settings = o.settings ?? DEFAULT_SETTINGS;
  const sn = settings.cluster_config.snapshotter;
  if (sn !== 'overlayfs' && sn !== 'tardev') throw new SettingsError(`settings: cluster_config.snapshotter ${JSON.stringify(sn)}: overlayfs (a rootfs shared with the guest) or tardev (verified layers)`);
  const configs = [...manifest.configs, ...(o.configs ?? [])];
  const pods: PodPolicy[] = [];
  for (const pod of manifest.pods) {
    // A policy already in the manifest is not an input to the next one.
    if (pod.metadata.annotations) delete pod.metadata.annotations[POLICY_ANNOTATION];
    pods.push(await podPolicy(pod, { ...o, settings, configs }));
  }
  return { manifest, pods };
}

/** The manifest with each pod template annotated with its policy. */
export function annotatedManifest(r: GenerateResult): string {
  r.manifest.pods.forEach((p, i) => setPolicyAnnotation(p, r.pods[i]!.text));
  return renderManifest(r.manifest);
}
