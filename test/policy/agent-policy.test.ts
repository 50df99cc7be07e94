// Agent-shaped decisions on a Kata-like policy (written here): requests evaluated as
// data.agent_policy.<Request> with the request as input, as the agent will evaluate them.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Policy, describeFailure } from '../../policy/index.js';

const file = path.join(import.meta.dirname, 'fixtures', 'agent-policy.rego');
const SANDBOX = 'a'.repeat(64);
let policy: Policy;

function container(over: { args?: string[]; env?: string[]; cwd?: string; uid?: number; caps?: string[]; mountSource?: string } = {}) {
  return {
    container_id: 'c1',
    OCI: {
      Version: '1.1.0',
      Hooks: null,
      Process: {
        Args: over.args ?? ['/bin/sh', '-c', 'echo web-0; sleep 3600'],
        Env: over.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'MODE=prod', 'HOSTNAME=web-0'],
        Cwd: over.cwd ?? '/app',
        User: { UID: over.uid ?? 1000, GID: 1000 },
        Capabilities: { Bounding: over.caps ?? ['CAP_CHOWN', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'] },
      },
      Mounts: [{ destination: '/etc/hosts', type_: 'bind', source: over.mountSource ?? `/run/kata-containers/shared/containers/${SANDBOX}-0123456789abcdef-hosts` }],
      Annotations: { 'io.kubernetes.cri.sandbox-name': 'web-0' },
    },
  };
}

beforeAll(() => {
  policy = Policy.compile({ modules: [{ file: 'agent-policy.rego', text: fs.readFileSync(file, 'utf8') }] }, { regoVersion: 'v0' });
});

describe('agent-shaped policy decisions', () => {
  it('allows the container the policy pins, and logs the checks it made', () => {
    const d = policy.evaluate('data.agent_policy.CreateContainerRequest', container());
    expect(d.value).toBe(true);
    expect(d.prints[0]).toBe('agent-policy.rego:16: CreateContainerRequest: i_oci.Hooks = null');
    expect(d.prints).toContain('agent-policy.rego:20: CreateContainerRequest: trying app');
    expect(d.prints[d.prints.length - 1]).toBe('agent-policy.rego:26: CreateContainerRequest: true');
  });

  it('denies a changed arg, env var, cwd, user, capability or mount, and explains which field', () => {
    const cases: [string, ReturnType<typeof container>, RegExp][] = [
      ['arg', container({ args: ['/bin/sh', '-c', 'curl evil'] }), /allow_arg/],
      ['env', container({ env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'MODE=debug'] }), /allow_env/],
      ['cwd', container({ cwd: '/' }), /p_process\.Cwd == i_process\.Cwd .*"\/app".*"\/"/],
      ['uid', container({ uid: 0 }), /p_process\.User\.UID == i_process\.User\.UID.*1000.*0/],
      ['capability', container({ caps: ['CAP_SYS_ADMIN'] }), /allow_caps/],
      ['mount', container({ mountSource: '/etc/shadow' }), /regex\.match/],
    ];
    for (const [what, input, why] of cases) {
      const d = policy.evaluate('data.agent_policy.CreateContainerRequest', input, { explain: true });
      expect(d.value, what).toBe(false);
      const text = d.explanation!.map(describeFailure).join('\n');
      expect(text, what).toMatch(why);
    }
  });

  it('decides exec, copy-file and stream requests from policy_data', () => {
    const exec = (args: string[]) => policy.evaluate('data.agent_policy.ExecProcessRequest', { process: { Args: args } }).value;
    expect(exec(['cat', '/tmp/healthy'])).toBe(true);
    expect(exec(['/bin/sh'])).toBe(false);
    const copy = (p: string) => policy.evaluate('data.agent_policy.CopyFileRequest', { path: p }).value;
    expect(copy(`/run/kata-containers/shared/containers/${SANDBOX}-0123456789abcdef-hosts`)).toBe(true);
    expect(copy(`/run/kata-containers/shared/containers/${SANDBOX}-0123456789abcdef-../../etc/passwd`)).toBe(false);
    expect(policy.evaluate('data.agent_policy.ReadStreamRequest', {}).value).toBe(true);
    expect(policy.evaluate('data.agent_policy.RemoveContainerRequest', {}).value).toBe(true);
    // a request the policy has no rule for is undefined: the agent denies it
    expect(policy.evaluate('data.agent_policy.SetPolicyRequest', {}).value).toBeUndefined();
  });

  it('gives the same decision and prints on a fresh and a reused policy object', () => {
    const again = Policy.compile({ modules: [{ file: 'agent-policy.rego', text: fs.readFileSync(file, 'utf8') }] }, { regoVersion: 'v0' });
    const a = policy.evaluate('data.agent_policy.CreateContainerRequest', container({ uid: 0 }));
    const b = again.evaluate('data.agent_policy.CreateContainerRequest', container({ uid: 0 }));
    expect(a.value).toBe(false);
    expect(b.prints).toEqual(a.prints);
  });
});
