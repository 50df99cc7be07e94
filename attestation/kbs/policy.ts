// The KBS's attestation policy: Rego (our engine), package kbs, rule `allow`, asked for every
// resource request with the attested claims and the resource:
//   input = {"tee": "snp", "snp": <claims>, "resource": {"repository", "type", "tag"}}
// Until an administrator sets a policy every resource is refused.
import { Policy, PolicyError } from '../../policy/index.js';
import type { Claims } from './evidence.js';
import { KbsError } from './errors.js';

export const POLICY_RULE = 'data.kbs.allow';
export const DENY_ALL = 'package kbs\n\ndefault allow := false\n';

export interface ResourceRef {
  repository: string;
  type: string;
  tag: string;
}

export class AttestationPolicy {
  private constructor(
    readonly text: string,
    private readonly policy: Policy,
  ) {}

  static compile(text: string): AttestationPolicy {
    try {
      return new AttestationPolicy(text, Policy.compile({ modules: [{ file: 'kbs-policy.rego', text }] }, { regoVersion: 'v1', limits: {} }));
    } catch (e) {
      if (e instanceof PolicyError) throw new KbsError('PolicyInvalid', `attestation policy: ${e.message}`);
      throw e;
    }
  }

  /** True only when the rule is exactly true: undefined, false or an evaluation error refuse. */
  allows(tee: string, claims: Claims, resource: ResourceRef): boolean {
    try {
      return this.policy.evaluate(POLICY_RULE, { tee, snp: claims, resource }, { prints: false }).value === true;
    } catch (e) {
      if (e instanceof PolicyError) return false;
      throw e;
    }
  }
}
