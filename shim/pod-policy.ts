// The pod's agent policy, as Kata's shim takes it: base64 Rego in the annotation
// io.katacontainers.config.agent.policy (what `katats policy gen` writes into the manifest, CRI
// passes through to the specs). The annotation leaves every spec before it reaches the agent (the
// policy would otherwise have to pin its own text); the pod's sandbox container brings it to the
// VM, whose launch data is its sha256 (the agent accepts no other policy), and SetPolicy delivers
// it once the agent answers, before CreateSandbox.
import { createHash } from 'node:crypto';
import type { grpc } from '../proto/gen/types.js';
import { invalid } from './errdefs.js';

export const POLICY_ANNOTATION = 'io.katacontainers.config.agent.policy';
/** The agent compiles modules of at most 4 MiB; a larger annotation is refused here, before a VM boots. */
const MAX_POLICY_BYTES = 4 * 1024 * 1024;

export interface PodPolicy {
  text: string;
  /** sha256 of the text: the VM's launch data. */
  digest: Buffer;
}

/** Takes the policy annotation out of `spec` and returns the policy it carried, if any. */
export function takePodPolicy(spec: grpc.Spec, what: string): PodPolicy | undefined {
  const ann = spec.Annotations;
  if (!ann || !(POLICY_ANNOTATION in ann)) return undefined;
  const b64 = ann[POLICY_ANNOTATION]!.replace(/\s+/g, '');
  delete ann[POLICY_ANNOTATION];
  if (b64.length > Math.ceil(MAX_POLICY_BYTES / 3) * 4) throw invalid(`${what}: annotation ${POLICY_ANNOTATION}: the policy is larger than ${MAX_POLICY_BYTES} bytes`);
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(b64)) throw invalid(`${what}: annotation ${POLICY_ANNOTATION} is not base64`);
  const bytes = Buffer.from(b64, 'base64');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw invalid(`${what}: annotation ${POLICY_ANNOTATION}: the policy is not UTF-8 text`);
  }
  if (!text.trim()) throw invalid(`${what}: annotation ${POLICY_ANNOTATION}: the policy is empty`);
  return { text, digest: createHash('sha256').update(bytes).digest() };
}
