// The default agent policy: every request allowed, as Kata's allow-all.rego. The guest image carries
// it (/etc/kata-opa/default-policy.rego, measured with the rootfs) and the agent applies it to a pod
// that brings no policy of its own; a local-mode agent uses it when given no policy file. One rule
// per request message of grpc.AgentService, so that the text follows the schema.
import { root } from '../proto/registry.js';

/** Where the guest image keeps the default policy (Kata's path). */
export const DEFAULT_POLICY_PATH = '/etc/kata-opa/default-policy.rego';

export function allowAllPolicy(): string {
  const requests = new Set<string>();
  for (const m of root.lookupService('grpc.AgentService').methodsArray) requests.add(m.requestType.replace(/^.*\./, ''));
  const lines = [...requests].sort().map((r) => `default ${r} := true`);
  return ['# Every agent request is allowed: the policy of a pod that brings none (as Kata\'s allow-all.rego).', 'package agent_policy', '', ...lines, ''].join('\n');
}
