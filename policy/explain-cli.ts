// `katats policy explain`: why the agent refused a request, replayed off the node. The agent logs
// each denial with the request as the policy saw it, the policy state and the policy's digest
// (agent/policy-hook.ts); this replays such lines (or one request given by hand) against a policy
// file and prints the decision, the failed checks with their values, and the policy's print lines.
//   katats policy explain POLICY.rego AGENT-LOG|-            every denial the log holds
//   katats policy explain POLICY.rego --request NAME --input FILE [--state FILE]
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { AgentPolicy } from './agent-decision.js';
import type { CliIO } from './cli.js';

export const EXPLAIN_USAGE = `usage: katats policy explain POLICY.rego AGENT-LOG|-
       katats policy explain POLICY.rego --request NAME --input FILE [--state FILE]`;

/** A denial as the agent logs it (one pino JSON line). */
interface LoggedDenial {
  request: string;
  input: string;
  pstate?: unknown;
  policy_sha256?: string;
  time?: number;
}

const DENIAL_MSG = 'request denied by policy';
/** Larger lines are not the agent's (it logs inputs up to 64 KiB). */
const MAX_LINE = 1 << 20;

function denials(text: string): LoggedDenial[] {
  const out: LoggedDenial[] = [];
  for (const line of text.split('\n')) {
    const at = line.indexOf('{');
    if (at < 0 || line.length > MAX_LINE || !line.includes(DENIAL_MSG)) continue;
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line.slice(at)) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (rec.msg !== DENIAL_MSG || typeof rec.request !== 'string') continue;
    if (typeof rec.input !== 'string') {
      out.push({ request: rec.request, input: '' });
      continue;
    }
    out.push({ request: rec.request, input: rec.input, pstate: rec.pstate, ...(typeof rec.policy_sha256 === 'string' ? { policy_sha256: rec.policy_sha256 } : {}), ...(typeof rec.time === 'number' ? { time: rec.time } : {}) });
  }
  return out;
}

function replay(policy: AgentPolicy, d: LoggedDenial, io: CliIO): void {
  policy.setState(d.pstate ?? {});
  const decision = policy.decide(d.request, d.input);
  // decide() changed nothing on a denial; on an allow the state moved: explain from the logged one.
  policy.setState(d.pstate ?? {});
  io.out(`${d.request}: ${decision.allowed ? 'allowed' : 'denied'}${decision.failuresAllowed ? ' (AllowRequestsFailingPolicy)' : ''}`);
  if (decision.allowed && !decision.failuresAllowed) return;
  const e = policy.explain(d.request, d.input, 10);
  for (const f of e.failures) io.out(`  why: ${f}`);
  for (const p of e.prints) io.out(`  print: ${p}`);
}

export function explainCommand(args: string[], io: CliIO): number {
  let request: string | undefined;
  let inputFile: string | undefined;
  let stateFile: string | undefined;
  const pos: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--request') request = args[++i];
    else if (a === '--input') inputFile = args[++i];
    else if (a === '--state') stateFile = args[++i];
    else if (a === '-h' || a === '--help') {
      io.out(EXPLAIN_USAGE);
      return 0;
    } else pos.push(a);
  }
  const [policyFile, logFile] = pos;
  if (!policyFile || (!logFile && !(request && inputFile)) || (logFile && request)) {
    io.err(EXPLAIN_USAGE);
    return 2;
  }
  let policy: AgentPolicy;
  let digest: string;
  try {
    const text = fs.readFileSync(policyFile, 'utf8');
    digest = createHash('sha256').update(text).digest('hex');
    policy = AgentPolicy.compile(text, { file: policyFile });
  } catch (e) {
    io.err(`${policyFile}: ${(e as Error).message}`);
    return 1;
  }
  try {
    if (request) {
      const state = stateFile ? (JSON.parse(fs.readFileSync(stateFile, 'utf8')) as unknown) : {};
      replay(policy, { request, input: fs.readFileSync(inputFile!, 'utf8'), pstate: state }, io);
      return 0;
    }
    const found = denials(fs.readFileSync(logFile === '-' ? 0 : logFile!, 'utf8'));
    if (!found.length) {
      io.err(`${logFile}: no "${DENIAL_MSG}" lines`);
      return 1;
    }
    for (const d of found) {
      if (!d.input) {
        io.out(`${d.request}: not replayable (its input was too large to log)`);
        continue;
      }
      if (d.policy_sha256 && d.policy_sha256 !== digest) io.out(`note: the agent decided with policy sha256:${d.policy_sha256}, this is sha256:${digest}`);
      replay(policy, d, io);
    }
    return 0;
  } catch (e) {
    io.err((e as Error).message);
    return 1;
  }
}
