// The policy hook: every AgentService request passes `check` before its handler runs (the
// ttrpc server's interceptor). The engine that decides is pluggable; until a later issue brings
// the Rego engine, the default one allows everything. SetPolicy stores the policy text, but only
// when its sha256 equals the launch-data digest the VM was started with (when one is given).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { CallContext, Interceptor } from '../proto/ttrpc/index.js';
import { messageType, root } from '../proto/registry.js';
import type { Logger } from './log.js';
import { denied, invalid } from './errors.js';

export interface PolicyInput {
  service: string;
  method: string;
  /** upstream's name for the endpoint: the request message, e.g. "CreateContainerRequest" */
  endpoint: string;
  /** the decoded request, decoded on first use */
  request(): unknown;
  /** the current policy text, if one was set */
  policy: string | undefined;
}

export interface PolicyDecision {
  allowed: boolean;
  /** the rule that decided (named in the error when it denies) */
  rule?: string;
  reason?: string;
}

export type PolicyEngine = (input: PolicyInput) => PolicyDecision | Promise<PolicyDecision>;

export const allowAll: PolicyEngine = () => ({ allowed: true });

/** The launch-data digest file: 32 raw bytes, or 64 hex digits (optionally "sha256:"-prefixed). */
export function readLaunchDigest(file: string): string | undefined {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const text = raw.toString('latin1').trim().replace(/^sha256:/i, '');
  if (/^[0-9a-fA-F]{64}$/.test(text)) return text.toLowerCase();
  if (raw.length === 32) return raw.toString('hex');
  throw new Error(`launch data ${file}: want a sha256 digest (32 bytes or 64 hex digits), got ${raw.length} bytes`);
}

export class PolicyState {
  policy: string | undefined;
  policyDigest: string | undefined;

  constructor(
    readonly launchDigest: string | undefined,
    public engine: PolicyEngine = allowAll,
    readonly log?: Logger,
  ) {}

  /** SetPolicy: refused unless the text hashes to the launch-data digest (when there is one). */
  set(text: string): void {
    const digest = createHash('sha256').update(text).digest('hex');
    if (this.launchDigest !== undefined && digest !== this.launchDigest) {
      throw denied(`SetPolicy: policy digest sha256:${digest} does not match the launch data sha256:${this.launchDigest}`);
    }
    if (!text.trim()) throw invalid('SetPolicy: empty policy');
    this.policy = text;
    this.policyDigest = digest;
    this.log?.info({ policy_sha256: digest }, 'policy set');
  }

  async check(ctx: CallContext, payload: Uint8Array): Promise<void> {
    let decoded: unknown;
    let done = false;
    const method = root.lookupService(ctx.service).methods[ctx.method];
    const endpoint = method?.requestType?.replace(/^.*\./, '') ?? ctx.method;
    const input: PolicyInput = {
      service: ctx.service,
      method: ctx.method,
      endpoint,
      policy: this.policy,
      request: () => {
        if (!done && method) {
          decoded = messageType(method.resolvedRequestType?.fullName.replace(/^\./, '') ?? method.requestType).decode(payload);
          done = true;
        }
        return decoded;
      },
    };
    const d = await this.engine(input);
    if (!d.allowed) {
      this.log?.warn({ method: `${ctx.service}/${ctx.method}`, rule: d.rule, reason: d.reason }, 'request denied by policy');
      throw denied(
        `${ctx.service}/${ctx.method} (${endpoint}) is blocked by policy${d.rule ? ` rule ${JSON.stringify(d.rule)}` : ''}${d.reason ? `: ${d.reason}` : ''}`,
      );
    }
  }
}

/** The ttrpc interceptor: AgentService requests go through the policy; Health is exempt. */
export function policyInterceptor(state: PolicyState): Interceptor {
  return (ctx, payload) => {
    if (ctx.service !== 'grpc.AgentService') return;
    return state.check(ctx, payload);
  };
}
