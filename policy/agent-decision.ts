// An agent policy as Kata's agent runs one: a Rego module in package `agent_policy`, asked
// `data.agent_policy.<Request>` with the request as input, and a policy state (`data.pstate`) that
// decisions of the form {"allowed": true, "ops": [JSON patch]} update. `true` allows; `false`, an
// undefined rule or {"allowed": false} denies; any other value is an error (the request is refused
// too). `AllowRequestsFailingPolicy := true` in the policy turns denials into allows, as in Kata
// (a debugging switch a policy author sets; a denial is still explained in the log).
// Shared by the agent (which adds the launch-data binding, logging and timing) and
// `katats policy explain` (which replays logged requests with it).
import { Policy, PolicyError, describeFailure, fromJS, parseJSON, toJS, type Limits, type Value } from './index.js';
import { RObject } from './values.js';
import { applyPatch, type PatchOp } from './json-patch.js';

export const POLICY_PACKAGE = 'agent_policy';

export class DecisionError extends Error {
  override readonly name = 'DecisionError';
  readonly code = 'KATATS_POLICY_DECISION';
}

export interface AgentDecision {
  allowed: boolean;
  /** What the rule gave: a boolean, undefined (no rule decided), or the {"allowed", "ops"} form. */
  result: 'true' | 'false' | 'undefined' | 'object';
  /** The policy state operations applied (allowed object decisions only). */
  ops?: PatchOp[];
  /** A denial turned into an allow by AllowRequestsFailingPolicy. */
  failuresAllowed?: boolean;
  /** Engine time in milliseconds (evaluation and state update, not input parsing). */
  evalMs: number;
  steps: number;
}

export interface DenialExplanation {
  /** One line: the failed checks that decided it, deepest first. */
  reason: string;
  /** The same checks one per line. */
  failures: string[];
  /** print() output of the policy for this request (Kata's policies print as they go). */
  prints: string[];
}

export interface AgentPolicyOptions {
  /** Module name in errors, print lines and explanations. Default policy.rego. */
  file?: string;
  limits?: Partial<Limits>;
}

/** Syntax of a module without `import rego.v1`: v0, as Kata's generated policies are written. */
const REGO_VERSION = 'v0';

export class AgentPolicy {
  /** The data document: {"pstate": {...}}, plain JSON so that patches apply as Kata applies them. */
  private data: Record<string, unknown> = { pstate: {} };
  readonly allowFailures: boolean;

  private constructor(
    private readonly policy: Policy,
    readonly file: string,
  ) {
    this.policy.setData(fromJS(this.data));
    const d = this.evaluate('AllowRequestsFailingPolicy', new RObject(), false);
    this.allowFailures = d.value === true;
  }

  /** Parses and compiles a policy. Throws PolicyError (with line and column for parse errors). */
  static compile(text: string, opts: AgentPolicyOptions = {}): AgentPolicy {
    const file = opts.file ?? 'policy.rego';
    const policy = Policy.compile({ modules: [{ file, text }] }, { regoVersion: REGO_VERSION, ...(opts.limits ? { limits: opts.limits } : {}) });
    const pkgs = new Set(policy.modules.map((m) => m.package.join('.')));
    if (!pkgs.has(POLICY_PACKAGE)) throw new PolicyError('rego_compile_error', `the policy's package is ${[...pkgs].join(', ')}, not ${POLICY_PACKAGE}`);
    return new AgentPolicy(policy, file);
  }

  /**
   * True when the policy allows `endpoint` whatever the request (allow-all's `default X := true`,
   * most rules of generated policies): the agent then need not present the request at all, which
   * for a WriteStdin of 64 KiB is most of the cost.
   */
  allowsAny(endpoint: string): boolean {
    const v = this.policy.fixedValue([POLICY_PACKAGE, endpoint]);
    return v === true || (v instanceof RObject && v.get('allowed') === true && (v.get('ops') === undefined || v.get('ops') === null));
  }

  /** The policy state as the policy sees it (data.pstate). */
  get pstate(): unknown {
    return this.data.pstate;
  }

  /** Restores a state, e.g. one logged with a denial, for a replay. */
  setState(pstate: unknown): void {
    this.data = { ...this.data, pstate };
    this.policy.setData(fromJS(this.data));
  }

  private evaluate(endpoint: string, input: Value, explain: boolean, prints = false) {
    return this.policy.evaluate(`data.${POLICY_PACKAGE}.${endpoint}`, input, { prints, explain });
  }

  /**
   * Decides one request: `input` is the request as the policy sees it (policy/input.ts's JSON
   * text, or a value). An allowed {"allowed", "ops"} decision updates the state; nothing else does.
   * Throws PolicyError when evaluation fails (a limit, a conflict) and DecisionError when the rule
   * gives something that is not a decision or ops that do not apply: either way nothing changed.
   */
  decide(endpoint: string, input: string | Value): AgentDecision {
    const value = typeof input === 'string' ? parseJSON(input, `${endpoint} input`) : input;
    const t0 = performance.now();
    const d = this.evaluate(endpoint, value, false);
    let out: Omit<AgentDecision, 'evalMs' | 'steps'>;
    const v = d.value;
    if (v === true) out = { allowed: true, result: 'true' };
    else if (v === false) out = { allowed: false, result: 'false' };
    else if (v === undefined) out = { allowed: false, result: 'undefined' };
    else if (v instanceof RObject) {
      const allowed = v.get('allowed');
      if (typeof allowed !== 'boolean') throw new DecisionError(`data.${POLICY_PACKAGE}.${endpoint}: "allowed" is not a boolean in ${clip(JSON.stringify(toJS(v)))}`);
      out = { allowed, result: 'object' };
      if (allowed) {
        const ops = v.get('ops');
        if (ops !== undefined && ops !== null) {
          const list = toJS(ops);
          if (!Array.isArray(list)) throw new DecisionError(`data.${POLICY_PACKAGE}.${endpoint}: "ops" is not a list of JSON patch operations`);
          try {
            this.data = applyPatch(this.data, list as PatchOp[]);
          } catch (e) {
            throw new DecisionError(`data.${POLICY_PACKAGE}.${endpoint}: its policy state operations do not apply: ${(e as Error).message}`);
          }
          this.policy.setData(fromJS(this.data));
          out.ops = list as PatchOp[];
        }
      }
    } else {
      throw new DecisionError(`data.${POLICY_PACKAGE}.${endpoint} is ${clip(JSON.stringify(toJS(v)))}, not a decision (true, false or {"allowed": ..., "ops": [...]})`);
    }
    if (!out.allowed && this.allowFailures) out = { ...out, allowed: true, failuresAllowed: true };
    return { ...out, evalMs: performance.now() - t0, steps: d.steps };
  }

  /**
   * Why `endpoint` is denied for `input` in the current state: the request evaluated again with
   * the explainer and prints on (the fast path runs without both). Call it before anything else
   * changes the state.
   */
  explain(endpoint: string, input: string | Value, maxFailures = 3): DenialExplanation {
    const value = typeof input === 'string' ? parseJSON(input, `${endpoint} input`) : input;
    const d = this.evaluate(endpoint, value, true, true);
    const failures = (d.explanation ?? []).slice(0, maxFailures).map(describeFailure);
    const rule = `data.${POLICY_PACKAGE}.${endpoint}`;
    let head: string;
    if (d.value === undefined) head = `${rule} is undefined (no rule decides this request)`;
    else if (d.value === false) head = `${rule} is false`;
    else head = `${rule} = ${clip(JSON.stringify(toJS(d.value)))}`;
    const reason = failures.length ? failures.join('; ') : head;
    return { reason: clip(reason, 2048), failures: failures.length ? failures : [head], prints: d.prints.slice(-50) };
  }
}

function clip(s: string, max = 200): string {
  return s.length > max ? s.slice(0, max - 1) + '…' : s;
}
