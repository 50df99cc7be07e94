// Deciding captured agent requests as the agent does, for the policy generation tests: a request
// protobuf-encoded, decoded and serialised (policy/input.ts), evaluated, and on {allowed, ops} the
// ops applied to the policy state.
import { messageType } from '../../proto/registry.js';
import { Policy, describeFailure, parseJSON, toJSON, type Value } from '../../policy/index.js';
import { policyInput } from '../../policy/input.js';
import { applyPatch, type PatchOp } from '../../policy/json-patch.js';

export type Req = Record<string, unknown> & { kind: string };

/** A captured request as the agent presents it to the policy: protobuf-encoded, decoded, serialised. */
export function agentInput(req: Req): string {
  const { kind, ...fields } = req;
  const name = `grpc.${kind}`;
  const t = messageType(name);
  const msg = t.decode(t.encode(t.fromObject({ exec_id: fields.container_id, storages: [], devices: [], ...fields })).finish());
  return policyInput(name, msg);
}

/** The agent's loop in miniature: evaluate, and on {allowed, ops} apply the ops to pstate. */
export class Decider {
  state: Record<string, unknown> = { pstate: {} };
  readonly policy: Policy;
  constructor(text: string) {
    this.policy = Policy.compile({ modules: [{ file: 'policy.rego', text }] }, { regoVersion: 'v0' });
  }
  decide(kind: string, input: string): { allowed: boolean; why: string[] } {
    this.policy.setData(parseJSON(JSON.stringify(this.state)) as never);
    const d = this.policy.evaluate(`data.agent_policy.${kind}`, parseJSON(input), { prints: false, explain: true });
    const v = d.value === undefined ? undefined : (JSON.parse(toJSON(d.value as Value)) as unknown);
    const why = (d.explanation ?? []).map(describeFailure);
    if (v === true) return { allowed: true, why };
    if (v && typeof v === 'object' && (v as { allowed?: boolean }).allowed === true) {
      this.state = applyPatch(this.state, ((v as { ops?: PatchOp[] }).ops ?? []) as PatchOp[]);
      return { allowed: true, why };
    }
    return { allowed: false, why };
  }
}
