// The pod's policy on its way from the annotation to the agent, through the Task service and the
// real agent in local mode: the shim takes the base64 Rego out of the spec, binds its sha256 to
// the VM as launch data, and sets it before CreateSandbox; the agent then decides every request
// by it. A policy the agent will not take (not the launch data's, not Rego) fails the pod with
// the agent's reason and leaves no VM.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import { TaskHarness } from './task-harness.js';

const ANNOTATION = 'io.katacontainers.config.agent.policy';
const RUNNING = 2;

const b64 = (s: string) => Buffer.from(s).toString('base64');
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

// allow-all but: no exec, no SetPolicy, and no container whose spec still carries the annotation.
const POLICY = allowAllPolicy()
  .split('\n')
  .filter((l) => !/^default (ExecProcessRequest|SetPolicyRequest|CreateContainerRequest) :=/.test(l))
  .concat([
    'default ExecProcessRequest := false',
    'default SetPolicyRequest := false',
    'default CreateContainerRequest := false',
    'CreateContainerRequest {',
    `  not input.OCI.Annotations["${ANNOTATION}"]`,
    '}',
    '',
  ])
  .join('\n');

async function failure(p: Promise<unknown>): Promise<{ code: number; message: string }> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e as { code: number; message: string },
  );
  if (!r) throw new Error('expected a failure');
  return r;
}

describe('the pod policy annotation', () => {
  let h: TaskHarness;
  beforeAll(async () => {
    h = await TaskHarness.start('ts-policy');
  });
  afterAll(async () => {
    await h.close();
  });

  it('binds the policy to the VM, sets it before the sandbox, and the agent decides by it', async () => {
    await h.run('ts-policy', ['sleep', '1000'], { annotations: { [ANNOTATION]: b64(POLICY) } });
    expect(h.guest.request.launchData.toString('hex')).toBe(sha256(POLICY));
    const gate = h.guest.agent.agent.sandbox.policy;
    expect(gate.policy).toBe(POLICY);
    // Set before CreateSandbox: the agent refuses everything else until then.
    expect(gate.bound).toBe(true);
    const err = await failure(h.exec('ts-policy', 'sh', ['sh', '-c', 'id']));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/^ExecProcessRequest is blocked by policy/);
    expect((await h.call('State', { id: 'ts-policy' })).status).toBe(RUNNING);
    await h.call('Delete', { id: 'ts-policy', exec_id: 'sh' });
    await h.remove('ts-policy');
  });

  it('a policy that is not base64 fails the Create before any VM boots', async () => {
    const before = h.launcher.guests.length;
    const err = await failure(h.run('ts-policy', ['true'], { annotations: { [ANNOTATION]: 'not base64!' } }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.message).toContain(`annotation ${ANNOTATION} is not base64`);
    expect(h.launcher.guests.length).toBe(before);
  });

  it('a policy that is not Rego fails the pod with the parse error, and its VM goes', async () => {
    const err = await failure(h.run('ts-policy', ['true'], { annotations: { [ANNOTATION]: b64('package agent_policy\n\nCreateContainerRequest {\n') } }));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.message).toMatch(/^SetPolicy: policy\.rego:\d+:\d+: rego_parse_error/);
    await h.guest.handle.exited;
  });
});

describe('a host that binds one policy and sends another', () => {
  let h: TaskHarness;
  beforeAll(async () => {
    // The launch data says the tenant's policy; the host's annotation carries allow-all.
    h = await TaskHarness.start('ts-policy-swap', { agent: { launchDigest: sha256(POLICY) } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('is refused at SetPolicy; the pod fails with that reason and no container runs', async () => {
    const err = await failure(h.run('ts-policy-swap', ['true'], { annotations: { [ANNOTATION]: b64(allowAllPolicy()) } }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toContain(`does not match the launch data sha256:${sha256(POLICY)}`);
    expect(h.guest.agent.agent.sandbox.containers.size).toBe(0);
    await h.guest.handle.exited;
  });
});
