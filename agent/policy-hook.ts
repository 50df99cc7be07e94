// The policy gate every AgentService request passes before its handler runs (the ttrpc server's
// interceptor): the request, as Kata's agent serialises it (policy/input.ts), is decided by
// `data.agent_policy.<Request>` of the policy in force (policy/agent-decision.ts). A denial is
// PermissionDenied "<Request> is blocked by policy: <the failed checks>", also logged with the
// input and the policy state, so that `katats policy explain` can replay it.
//
// Which policy is in force, and which SetPolicy is accepted, follows the VM's launch data (32
// bytes the host bound at launch; an SEV-SNP host puts them in HOST_DATA, the report shows them):
//   - no launch data, or 32 zero bytes: no policy is bound. The image's default policy (allow-all)
//     applies, and a SetPolicy that policy allows replaces it, as in Kata without initdata. The
//     host could do anything in such a pod anyway; a verifier sees zeros in the report and knows.
//   - sha256 of a policy: only that policy. Until it is set every request but SetPolicy is refused
//     (a host that binds the tenant's digest and never sends the policy gets nothing), and a
//     SetPolicy with other text is refused. Once set, SetPolicy is decided by the policy itself
//     (generated policies refuse it) and could only set the same text again.
// ReadStdout/ReadStderr are decided after the read (Kata's order): a denied read returns no data.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type protobuf from 'protobufjs';
import type { CallContext, Interceptor } from '../proto/ttrpc/index.js';
import { messageType, root } from '../proto/registry.js';
import { AgentPolicy, type AgentDecision } from '../policy/agent-decision.js';
import { policyInput, policyInputValue } from '../policy/input.js';
import type { Limits, Value } from '../policy/index.js';
import type { Logger } from './log.js';
import { DecisionTimings } from './policy-timings.js';
import { denied, internal, invalid } from './errors.js';

/** The launch-data file: 32 raw bytes, or 64 hex digits (optionally "sha256:"-prefixed). */
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

const NO_POLICY = '0'.repeat(64);

/**
 * Requests at which an unbound gate reads the launch data again. The restore notice first: the
 * shim sends ReseedRandomDev and SetGuestDateTime to a clone before anything else. And, so that a
 * host which skips the notice cannot run anything on a clone under the template's unbound state,
 * every request that starts or places something in the guest. Not the hot path (streams, waits,
 * stats, signals): those never read fw_cfg.
 */
export const LAUNCH_DATA_RECHECKS: ReadonlySet<string> = new Set([
  'ReseedRandomDevRequest',
  'SetGuestDateTimeRequest',
  'SetPolicyRequest',
  'CreateSandboxRequest',
  'CreateContainerRequest',
  'ExecProcessRequest',
  'CopyFileRequest',
]);
/**
 * Every evaluation is bounded in steps (deterministic, unlike a wall clock on a loaded TCG guest):
 * Kata's and our generated policies take 1,500-5,000 steps for a CreateContainerRequest, so a
 * million is ample for any real policy and stops a hostile one in well under a second on the host.
 */
export const AGENT_POLICY_LIMITS: Partial<Limits> = { maxSteps: 1_000_000 };
/** A denied request's input is logged up to this size (a WriteStdin can carry a MiB). */
const MAX_LOGGED_INPUT = 64 * 1024;
/** Streams whose redaction was logged, so that a chatty container logs it once. */
const MAX_REDACTED_NOTES = 256;

interface Endpoint {
  /** upstream's name for the request: its message, e.g. "CreateContainerRequest" */
  name: string;
  type: protobuf.Type;
}

const ENDPOINTS = new Map<string, Endpoint>(
  root.lookupService('grpc.AgentService').methodsArray.map((m) => {
    const full = (m.resolvedRequestType?.fullName ?? m.requestType).replace(/^\./, '');
    return [m.name, { name: full.replace(/^.*\./, ''), type: messageType(full) }];
  }),
);

export interface PolicyGateOptions {
  /**
   * sha256 (hex) from the launch data; undefined when the VM has none (local mode). A function (in
   * the guest: a read of fw_cfg) is asked at start, and again only while no policy is bound or set,
   * at the requests listed in LAUNCH_DATA_RECHECKS: a VM restored from a template (which is booted
   * unbound) holds launch data of its own, and the shim's first words to a clone (ReseedRandomDev,
   * SetGuestDateTime) are among them.
   */
  launchDigest: string | undefined | (() => string | undefined);
  /** The policy in force until a SetPolicy: the image's default. */
  defaultPolicy: { text: string; source: string };
  limits?: Partial<Limits>;
  /** Set when the VM's initdata does not match its launch data: nothing is served, every request says why. */
  launchProblem?: string;
  log: Logger;
}

export class PolicyGate {
  private current: AgentPolicy;
  /** The policy text SetPolicy installed (undefined: the default is in force). */
  policy: string | undefined;
  /** sha256 of the policy in force. */
  policyDigest: string;
  /** The launch data's digest as last read. */
  launchDigest: string | undefined;
  /** Reads of the launch data so far (start included). */
  launchReads = 0;

  /** The launch data names a policy (not zeros). */
  get bound(): boolean {
    const d = this.launchDigest;
    return d !== undefined && d !== NO_POLICY;
  }
  readonly timings = new DecisionTimings();
  private readonly redactedNoted = new Set<string>();
  private readonly log: Logger;
  private readonly limits: Partial<Limits>;

  constructor(private readonly o: PolicyGateOptions) {
    this.log = o.log.child({ subsystem: 'policy' });
    // Compiled even when bound, so that a broken image fails at start, not at the first pod.
    this.limits = { ...AGENT_POLICY_LIMITS, ...o.limits };
    this.current = AgentPolicy.compile(o.defaultPolicy.text, { file: 'default-policy.rego', limits: this.limits });
    this.policyDigest = sha256(o.defaultPolicy.text);
    this.launchDigest = this.readLaunchData();
    this.log.info(
      { default_policy: o.defaultPolicy.source, default_policy_sha256: this.policyDigest, launch_data: this.launchDigest ?? null, bound: this.bound },
      this.bound ? 'the launch data binds a policy: only SetPolicy with it is accepted until it is set' : 'no policy bound by the launch data: the default policy applies until a SetPolicy',
    );
  }

  private readLaunchData(): string | undefined {
    if (typeof this.o.launchDigest !== 'function') return this.o.launchDigest;
    this.launchReads++;
    return this.o.launchDigest();
  }

  /**
   * Before deciding `request`: an unbound gate with no policy set reads the launch data again at
   * the requests that may follow a restore (LAUNCH_DATA_RECHECKS). Once bound, or once a policy is
   * set, the launch data can change nothing and is not read again.
   */
  private recheckLaunchData(request: string): void {
    if (typeof this.o.launchDigest !== 'function' || this.bound || this.policy !== undefined || !LAUNCH_DATA_RECHECKS.has(request)) return;
    let now: string | undefined;
    try {
      now = this.readLaunchData();
    } catch (e) {
      // Unreadable launch data is no licence: the request is refused.
      this.log.error({ err: e, request }, 'reading the launch data failed');
      throw denied(`${request} is blocked by policy: the VM's launch data cannot be read: ${(e as Error).message}`);
    }
    if (now === this.launchDigest) return;
    this.launchDigest = now;
    this.log.info({ request, launch_data: now ?? null, bound: this.bound }, 'launch data changed since the agent started (a VM restored from a template)');
  }

  /** Bound and not set yet: nothing but that SetPolicy is accepted. */
  get awaitingPolicy(): boolean {
    return this.policy === undefined && this.bound;
  }

  /** The interceptor's check of one request (ReadStdout/ReadStderr are decided after their read). */
  check(ctx: CallContext, payload: Uint8Array): void {
    const ep = ENDPOINTS.get(ctx.method);
    // An unknown method: the server answers that it has none, nothing runs.
    if (!ep || ep.name === 'ReadStreamRequest') return;
    if (this.o.launchProblem) throw denied(`${ep.name} is blocked by policy: ${this.o.launchProblem}`);
    this.recheckLaunchData(ep.name);
    if (this.awaitingPolicy) {
      // SetPolicy itself is decided by the launch data (set()).
      if (ep.name === 'SetPolicyRequest') return;
      this.log.warn({ request: ep.name }, 'request refused: the launch data binds a policy that was not set yet');
      throw denied(`${ep.name} is blocked by policy: the VM's launch data binds policy sha256:${this.launchDigest}, which was not set yet (SetPolicy must come first)`);
    }
    const t0 = performance.now();
    if (this.current.allowsAny(ep.name)) {
      this.timings.record(ep.name, performance.now() - t0, 0, true);
      return;
    }
    const typeName = ep.type.fullName.replace(/^\./, '');
    let msg: object;
    let input: Value;
    try {
      msg = ep.type.decode(payload);
      input = policyInputValue(typeName, msg);
    } catch (e) {
      throw invalid(`${ep.name}: cannot present the request to the policy: ${(e as Error).message}`);
    }
    const d = this.decide(ep.name, input, t0);
    if (!d.allowed) throw denied(`${ep.name} is blocked by policy: ${this.explainDenial(ep.name, input, payload.length, () => policyInput(typeName, msg))}`);
  }

  /** ReadStdout/ReadStderr after the read: false means the data is withheld (Kata redacts it). */
  readAllowed(req: object, stream: 'stdout' | 'stderr'): boolean {
    if (this.awaitingPolicy || this.o.launchProblem) return false;
    const t0 = performance.now();
    if (this.current.allowsAny('ReadStreamRequest')) {
      this.timings.record('ReadStreamRequest', performance.now() - t0, 0, true);
      return true;
    }
    const input = policyInputValue('grpc.ReadStreamRequest', req);
    const d = this.decide('ReadStreamRequest', input, t0);
    if (!d.allowed) {
      const r = req as { container_id?: string; exec_id?: string };
      const key = `${r.container_id}/${r.exec_id}/${stream}`;
      if (!this.redactedNoted.has(key) && this.redactedNoted.size < MAX_REDACTED_NOTES) {
        this.redactedNoted.add(key);
        this.log.info({ container_id: r.container_id, exec_id: r.exec_id || undefined, stream }, 'output withheld by policy (ReadStreamRequest denied)');
      }
    }
    return d.allowed;
  }

  private decide(endpoint: string, input: Value, t0: number): AgentDecision {
    let d: AgentDecision;
    try {
      d = this.current.decide(endpoint, input);
    } catch (e) {
      // A limit, a conflict, a result that is no decision: the request is refused, the agent goes on.
      this.log.error({ request: endpoint, err: e, policy_sha256: this.policyDigest }, 'policy evaluation failed');
      throw internal(`${endpoint}: policy evaluation failed: ${(e as Error).message}`);
    }
    this.timings.record(endpoint, performance.now() - t0, d.evalMs, d.allowed);
    if (d.failuresAllowed) this.log.warn({ request: endpoint }, 'request denied by policy but allowed (AllowRequestsFailingPolicy)');
    return d;
  }

  /**
   * The denial's explanation, logged with what a replay needs (`katats policy explain`): the input
   * as JSON text, made only here and only for a request whose encoding fits the log's bound.
   */
  private explainDenial(endpoint: string, input: Value, encodedBytes: number, text: () => string): string {
    let reason: string;
    let failures: string[] = [];
    let prints: string[] = [];
    try {
      ({ reason, failures, prints } = this.current.explain(endpoint, input));
    } catch (e) {
      reason = `(no explanation: ${(e as Error).message})`;
    }
    this.log.warn(
      {
        request: endpoint,
        reason,
        failures,
        ...(prints.length ? { prints } : {}),
        policy_sha256: this.policyDigest,
        pstate: this.current.pstate,
        ...logged(encodedBytes, text),
      },
      'request denied by policy',
    );
    return reason;
  }

  /** SetPolicy, once the interceptor let it through: the launch data's digest, then the text compiles. */
  set(text: string): void {
    if (this.o.launchProblem) throw denied(`SetPolicy is blocked by policy: ${this.o.launchProblem}`);
    const digest = sha256(text);
    const launch = this.launchDigest;
    const bound = launch !== undefined && launch !== NO_POLICY;
    if (bound && digest !== launch) {
      this.log.warn({ policy_sha256: digest, launch_data: launch }, 'SetPolicy refused: not the policy the launch data binds');
      throw denied(`SetPolicy: policy digest sha256:${digest} does not match the launch data sha256:${launch}`);
    }
    if (!text.trim()) throw invalid('SetPolicy: empty policy');
    let next: AgentPolicy;
    try {
      next = AgentPolicy.compile(text, { limits: this.limits });
    } catch (e) {
      this.log.warn({ policy_sha256: digest, err: (e as Error).message }, 'SetPolicy refused: the policy does not compile');
      throw invalid(`SetPolicy: ${(e as Error).message}`);
    }
    // A new policy starts with an empty state, as Kata's (a new engine).
    this.current = next;
    this.policy = text;
    this.policyDigest = digest;
    this.redactedNoted.clear();
    this.log.info({ policy_sha256: digest, bound, allow_failures: next.allowFailures || undefined }, 'policy set');
    if (next.allowFailures) this.log.warn('the policy sets AllowRequestsFailingPolicy: denials are logged and then allowed');
  }
}

/** The input for the log: its JSON text when that is at most MAX_LOGGED_INPUT characters, else its size. */
function logged(encodedBytes: number, text: () => string): { input: string } | { input_bytes: number } {
  // Over the bound encoded, it is over it as JSON text too (ASCII fields and bytes only grow): not built.
  if (encodedBytes > MAX_LOGGED_INPUT) return { input_bytes: encodedBytes };
  const input = text();
  return input.length <= MAX_LOGGED_INPUT ? { input } : { input_bytes: input.length };
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The ttrpc interceptor: AgentService requests go through the policy; Health is exempt. */
export function policyInterceptor(gate: PolicyGate): Interceptor {
  return (ctx, payload) => {
    if (ctx.service !== 'grpc.AgentService') return;
    gate.check(ctx, payload);
  };
}
