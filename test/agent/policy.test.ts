// The policy gate on the real agent (local mode, host crun): every AgentService request is decided
// by data.agent_policy.<Request> of the policy in force. A denial is PermissionDenied naming the
// request and the check that failed, leaves nothing behind, and the agent serves the next request.
// SetPolicy replaces the policy only when the policy in force allows it, and only with the policy
// the launch data binds. Health is not an agent request.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { readLaunchDigest } from '../../agent/policy-hook.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import { policyCommand } from '../../policy/cli.js';
import { generate } from '../../policy/gen/generate.js';
import { ImageResolver, LayerCache, OciArchive } from '../../policy/gen/image.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { pauseImage } from '../../harness/images/pause.js';
import { containerSpec, crunContainers, readAll, startAgent, type TestAgent } from './helpers.js';

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** allow-all minus the requests `own` decides, plus `own`'s rules. */
function policyWith(own: string): string {
  const decided = new Set([...own.matchAll(/^(?:default\s+)?([A-Z]\w*Request)\b/gm)].map((m) => m[1]));
  const base = allowAllPolicy()
    .split('\n')
    .filter((l) => !decided.has(/^default (\w+) :=/.exec(l)?.[1] ?? ''))
    .map((l) => (l.startsWith('package ') ? `${l}\nimport future.keywords.every\nimport future.keywords.in` : l));
  return [...base, own, ''].join('\n');
}

// A pod policy in the shape of Kata's: the container's command, no host bind mounts, exec only of
// the probe command in a container it admitted (policy state), no SetPolicy after it.
const POD_POLICY = policyWith(`
default CreateContainerRequest := {"allowed": false}
CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": concat("", ["/pstate/admitted_", input.container_id]), "value": true}]} {
  allow_args
  allow_mounts
}
allow_args {
  input.OCI.Process.Args == ["sleep", "1000"]
}
allow_mounts {
  every m in input.OCI.Mounts {
    m.type_ != "bind"
  }
}
default ExecProcessRequest := false
ExecProcessRequest {
  data.pstate[concat("", ["admitted_", input.container_id])] == true
  input.process.Args == ["cat", "/etc/passwd"]
}
default SetPolicyRequest := false
`);

describe('the policy gate', () => {
  let t: TestAgent;
  beforeAll(async () => {
    t = await startAgent();
    await t.svc.CreateSandbox({ hostname: 'policy', sandbox_id: 'sb-policy' });
  });
  afterAll(async () => {
    await t.svc.DestroySandbox({}).catch(() => {});
    await t.close();
  });

  it('the default policy (allow-all) admits everything; it allows SetPolicy, so a pod policy replaces it', async () => {
    expect(t.agent.sandbox.policy.policy).toBeUndefined();
    await t.svc.CreateContainer({ container_id: 'pol-default', OCI: containerSpec(t.rootfs, ['true']) });
    await t.svc.RemoveContainer({ container_id: 'pol-default' });
    await t.svc.SetPolicy({ policy: POD_POLICY });
    expect(t.agent.sandbox.policy.policyDigest).toBe(sha256(POD_POLICY));
  });

  it('a changed command is refused naming the request and the check; nothing is created; the admitted command runs', async () => {
    const err = await t.svc.CreateContainer({ container_id: 'pol-1', OCI: containerSpec(t.rootfs, ['sh', '-c', 'cat /etc/shadow']) }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/^CreateContainerRequest is blocked by policy: /);
    expect(err.message).toContain('input.OCI.Process.Args == ["sleep", "1000"] is false');
    expect(t.agent.sandbox.containers.has('pol-1')).toBe(false);
    expect(crunContainers('pol-1')).toEqual([]);
    expect(fs.existsSync(path.join(t.stateDir, 'pol-1'))).toBe(false);
    await t.svc.CreateContainer({ container_id: 'pol-1', OCI: containerSpec(t.rootfs, ['sleep', '1000']) });
    await t.svc.StartContainer({ container_id: 'pol-1' });
    expect(t.agent.sandbox.policy.timings.denials('CreateContainerRequest')).toBe(1);
  });

  it('a host bind mount is refused', async () => {
    const OCI = containerSpec(t.rootfs, ['sleep', '1000'], { mounts: [{ destination: '/host-etc', source: '/etc', type: 'bind', options: ['rbind', 'ro'] }] });
    const err = await t.svc.CreateContainer({ container_id: 'pol-mount', OCI }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/^CreateContainerRequest is blocked by policy: .*m\.type_ != "bind" is false/);
    expect(t.agent.sandbox.containers.has('pol-mount')).toBe(false);
    expect(crunContainers('pol-mount')).toEqual([]);
  });

  it('exec: the allowed command in an admitted container runs, another is refused and the container keeps running', async () => {
    await t.svc.ExecProcess({ container_id: 'pol-1', exec_id: 'probe', process: { Args: ['cat', '/etc/passwd'], Cwd: '/', Env: ['PATH=/bin'], User: { UID: 0, GID: 0 } } });
    expect((await readAll(t, 'pol-1', 'probe')).toString()).toContain('root:x:0:0');
    expect((await t.svc.WaitProcess({ container_id: 'pol-1', exec_id: 'probe' })).status).toBe(0);
    const err = await t.svc.ExecProcess({ container_id: 'pol-1', exec_id: 'shell', process: { Args: ['sh'], Cwd: '/', Env: ['PATH=/bin'], User: { UID: 0, GID: 0 } } }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/^ExecProcessRequest is blocked by policy: .*input\.process\.Args == \["cat", "\/etc\/passwd"\] is false/);
    expect(t.agent.sandbox.container('pol-1').execs.has('shell')).toBe(false);
    // Still running, still serving.
    const { status } = await t.svc.StatsContainer({ container_id: 'pol-1' }).then(
      () => ({ status: 'running' }),
      (e: Error) => ({ status: e.message }),
    );
    expect(status).toBe('running');
  });

  it('the policy state decides too: exec in a container the policy did not admit is refused', async () => {
    // Created under no policy state entry: the state is the policy's, not the request's.
    const err = await t.svc.ExecProcess({ container_id: 'pol-other', exec_id: 'probe', process: { Args: ['cat', '/etc/passwd'], Cwd: '/' } }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/admitted_/);
  });

  it('SetPolicy is refused when the policy in force denies it; a policy that is not Rego is refused with its location', async () => {
    const err = await t.svc.SetPolicy({ policy: allowAllPolicy() }).catch((e) => e);
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.message).toMatch(/^SetPolicyRequest is blocked by policy/);
    expect(t.agent.sandbox.policy.policyDigest).toBe(sha256(POD_POLICY));
    const t2 = await startAgent();
    try {
      const bad = await t2.svc.SetPolicy({ policy: 'package agent_policy\n\nCreateContainerRequest {\n  input.x ==\n}\n' }).catch((e) => e);
      expect(bad.code).toBe(Code.InvalidArgument);
      expect(bad.message).toMatch(/policy\.rego:5:\d+/);
      // The old policy stays: allow-all.
      await t2.svc.GetGuestDetails({});
    } finally {
      await t2.close();
    }
  });

  it('a policy that runs away is stopped by its step limit: the request is refused, the agent goes on', async () => {
    const t2 = await startAgent();
    try {
      await t2.svc.SetPolicy({ policy: policyWith('GuestDetailsRequest {\n  some i, j\n  numbers.range(1, 5000)[i]\n  numbers.range(1, 5000)[j]\n  i + j < 0\n}\n') });
      const err = await t2.svc.GetGuestDetails({}).catch((e) => e);
      expect(err.code).toBe(Code.Internal);
      expect(err.message).toMatch(/GuestDetailsRequest: policy evaluation failed: .*steps/);
      await t2.svc.CreateSandbox({ hostname: 'after', sandbox_id: 'sb-after' });
      await t2.svc.DestroySandbox({});
    } finally {
      await t2.close();
    }
  });

  it('a denied ReadStdout withholds the bytes (the process is still drained) instead of failing', async () => {
    const t2 = await startAgent();
    try {
      await t2.svc.SetPolicy({ policy: policyWith('ReadStreamRequest := false\n') });
      await t2.svc.CreateSandbox({ hostname: 'redact', sandbox_id: 'sb-redact' });
      await t2.svc.CreateContainer({ container_id: 'pol-out', OCI: containerSpec(t2.rootfs, ['sh', '-c', 'head -c 300000 /dev/zero; echo secret']) });
      await t2.svc.StartContainer({ container_id: 'pol-out' });
      expect((await readAll(t2, 'pol-out')).length).toBe(0);
      expect((await t2.svc.WaitProcess({ container_id: 'pol-out', exec_id: '' })).status).toBe(0);
      await t2.svc.RemoveContainer({ container_id: 'pol-out' });
      await t2.svc.DestroySandbox({});
    } finally {
      await t2.close();
    }
  });

  it('policy decisions are timed per request type in GetMetrics', async () => {
    const { metrics } = await t.svc.GetMetrics({});
    expect(metrics).toMatch(/katats_agent_policy_check_seconds_count\{request="CreateContainerRequest"\} \d+/);
    expect(metrics).toMatch(/katats_agent_policy_denials_total\{request="ExecProcessRequest"\} 2/);
  });
});

describe('the policy the launch data binds', () => {
  it('reads the launch data as raw bytes or hex', () => {
    const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'katats-launch-'));
    try {
      const d = createHash('sha256').update('x').digest();
      const f = path.join(dir, 'host_data');
      fs.writeFileSync(f, d);
      expect(readLaunchDigest(f)).toBe(d.toString('hex'));
      fs.writeFileSync(f, `sha256:${d.toString('hex').toUpperCase()}\n`);
      expect(readLaunchDigest(f)).toBe(d.toString('hex'));
      expect(readLaunchDigest(path.join(dir, 'absent'))).toBeUndefined();
      fs.writeFileSync(f, 'garbage');
      expect(() => readLaunchDigest(f)).toThrow(/sha256/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('nothing is served before the bound policy is set, no other policy is accepted, and the bound one decides', async () => {
    const t = await startAgent({ launchDigest: sha256(POD_POLICY) });
    try {
      const early = await t.svc.CreateSandbox({ hostname: 'bound', sandbox_id: 'sb-bound' }).catch((e) => e);
      expect(early.code).toBe(Code.PermissionDenied);
      expect(early.message).toMatch(/^CreateSandboxRequest is blocked by policy: the VM's launch data binds policy sha256:/);
      // Health is no agent request: the shim can still wait for the agent.
      await t.health.Check({});
      const other = await t.svc.SetPolicy({ policy: allowAllPolicy() }).catch((e) => e);
      expect(other.code).toBe(Code.PermissionDenied);
      expect(other.message).toContain(`does not match the launch data sha256:${sha256(POD_POLICY)}`);
      await t.svc.SetPolicy({ policy: POD_POLICY });
      await t.svc.CreateSandbox({ hostname: 'bound', sandbox_id: 'sb-bound' });
      const denied = await t.svc.CreateContainer({ container_id: 'bound-1', OCI: containerSpec(t.rootfs, ['sh']) }).catch((e) => e);
      expect(denied.code).toBe(Code.PermissionDenied);
      await t.svc.DestroySandbox({});
    } finally {
      await t.close();
    }
  });

  it('launch data of 32 zero bytes binds nothing: the default policy applies', async () => {
    const t = await startAgent({ launchDigest: '0'.repeat(64) });
    try {
      await t.svc.GetGuestDetails({});
      await t.svc.SetPolicy({ policy: POD_POLICY });
      expect(t.agent.sandbox.policy.policyDigest).toBe(sha256(POD_POLICY));
    } finally {
      await t.close();
    }
  });
});

describe('the launch data (fw_cfg in the guest) is read at start and again only where a restore may have changed it', () => {
  /** A launch-data file standing in for fw_cfg, read by the agent's own reader; reads counted. */
  function launchData(initial: string) {
    const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'katats-launch-'));
    const file = path.join(dir, 'host_data');
    fs.writeFileSync(file, initial);
    const r = {
      reads: 0,
      read: () => {
        r.reads++;
        return readLaunchDigest(file);
      },
      set: (hex: string) => fs.writeFileSync(file, hex),
      cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
    };
    return r;
  }
  const notFound = (p: Promise<unknown>) => p.then(() => Code.OK, (e: { code: number }) => e.code);

  it('streams, waits and stats never read it; after a change only the restore notice (SetGuestDateTime) reads it, and then the bound policy is required', async () => {
    const ld = launchData('0'.repeat(64));
    const t = await startAgent({ launchDigest: ld.read });
    try {
      expect(ld.reads).toBe(1);
      for (let i = 0; i < 50; i++) {
        // No such container: the gate decides (allow-all), then the handler answers NotFound.
        expect(await notFound(t.svc.WriteStdin({ container_id: 'none', exec_id: 'none', data: Buffer.alloc(64) }))).toBe(Code.NotFound);
        expect(await notFound(t.svc.StatsContainer({ container_id: 'none' }))).toBe(Code.NotFound);
      }
      expect(ld.reads).toBe(1);
      // The template's clone: its own launch data, which the agent does not consult on the hot path.
      ld.set(sha256(POD_POLICY));
      expect(await notFound(t.svc.WriteStdin({ container_id: 'none', exec_id: 'none', data: Buffer.alloc(64) }))).toBe(Code.NotFound);
      expect(ld.reads).toBe(1);
      // The shim's restore notice: read again. The launch data now binds a policy, which is not set
      // yet: the notice itself and everything after it but that SetPolicy are refused.
      const now = { Sec: Math.floor(Date.now() / 1000), Usec: 0 };
      const notice = await t.svc.SetGuestDateTime(now).catch((e: unknown) => e as { code: number; message: string });
      expect(ld.reads).toBe(2);
      expect(notice).toMatchObject({ code: Code.PermissionDenied, message: expect.stringContaining(`binds policy sha256:${sha256(POD_POLICY)}, which was not set yet`) as unknown });
      const refused = await t.svc.WriteStdin({ container_id: 'none', exec_id: 'none', data: Buffer.alloc(64) }).catch((e: unknown) => e as { code: number });
      expect(refused).toMatchObject({ code: Code.PermissionDenied });
      expect(ld.reads).toBe(2);
      const other = await t.svc.SetPolicy({ policy: allowAllPolicy() }).catch((e: { code: number }) => e);
      expect((other as { code: number }).code).toBe(Code.PermissionDenied);
      await t.svc.SetPolicy({ policy: POD_POLICY });
      // Bound and set: never read again.
      ld.set('0'.repeat(64));
      await t.svc.SetGuestDateTime({ Sec: Math.floor(Date.now() / 1000), Usec: 0 }).catch(() => undefined);
      expect(ld.reads).toBe(2);
      expect(t.agent.sandbox.policy.policyDigest).toBe(sha256(POD_POLICY));
    } finally {
      await t.close();
      ld.cleanup();
    }
  });

  it('a host that skips the restore notice cannot start anything under the unbound state: CreateSandbox reads it again', async () => {
    const ld = launchData('0'.repeat(64));
    const t = await startAgent({ launchDigest: ld.read });
    try {
      ld.set(sha256(POD_POLICY));
      const e = await t.svc.CreateSandbox({ hostname: 'skip', sandbox_id: 'sb-skip' }).catch((x: unknown) => x as { code: number; message: string });
      expect(e).toMatchObject({ code: Code.PermissionDenied, message: expect.stringMatching(/^CreateSandboxRequest is blocked by policy: the VM's launch data binds policy sha256:/) as unknown });
      expect(ld.reads).toBe(2);
    } finally {
      await t.close();
      ld.cleanup();
    }
  });
});

describe('katats policy explain', () => {
  it("replays the agent's logged denials against the policy: the same decision and the same failed check", async () => {
    const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'katats-explain-'));
    const logFile = path.join(dir, 'agent.log');
    const policyFile = path.join(dir, 'policy.rego');
    fs.writeFileSync(policyFile, POD_POLICY);
    const t = await startAgent({ log: pino({ level: 'info' }, pino.destination({ dest: logFile, sync: true })) });
    try {
      await t.svc.SetPolicy({ policy: POD_POLICY });
      await t.svc.CreateSandbox({ hostname: 'explain', sandbox_id: 'sb-explain' });
      const err = await t.svc.CreateContainer({ container_id: 'ex-1', OCI: containerSpec(t.rootfs, ['sh', '-c', 'id']) }).catch((e) => e);
      expect(err.code).toBe(Code.PermissionDenied);
      await t.svc.DestroySandbox({});
    } finally {
      await t.close();
    }
    try {
      const out: string[] = [];
      const errs: string[] = [];
      const code = await policyCommand(['explain', policyFile, logFile], { out: (s) => out.push(s), err: (s) => errs.push(s) });
      expect(code, errs.join('\n')).toBe(0);
      expect(out[0]).toBe('CreateContainerRequest: denied');
      expect(out.join('\n')).toMatch(/why: data\.agent_policy\.allow_args: input\.OCI\.Process\.Args == \["sleep", "1000"\] is false \(input\.OCI\.Process\.Args = \["sh", "-c", "id"\]\)/);
      // Against another policy (here allow-all) the replay says so, and decides by that one.
      fs.writeFileSync(policyFile, allowAllPolicy());
      out.length = 0;
      expect(await policyCommand(['explain', policyFile, logFile], { out: (s) => out.push(s), err: (s) => errs.push(s) })).toBe(0);
      expect(out).toEqual([`note: the agent decided with policy sha256:${sha256(POD_POLICY)}, this is sha256:${sha256(allowAllPolicy())}`, 'CreateContainerRequest: allowed']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a generated policy on the real agent', () => {
  // The requests containerd 1.6 and the shim sent for the fixture pod (test/policy/fixtures/gen),
  // sent over the wire to a local agent holding the policy `katats policy gen` makes for that pod.
  // Their handlers fail here after the policy admitted them (the guest's paths and 9p share are
  // not on this host; test/shim/cri-policy.test.ts runs the pod in a real guest): what counts is
  // that the policy decides on what the agent decodes as it decided on what was captured.
  type Req = Record<string, unknown> & { kind: string };
  const fix = path.join(import.meta.dirname, '..', 'policy', 'fixtures', 'gen');
  const captured = (JSON.parse(fs.readFileSync(path.join(fix, 'cri-bookworm.json'), 'utf8')) as { requests: Req[] }).requests;
  let t: TestAgent;
  let generated: string;
  const send = (r: Req) => {
    const { kind, ...fields } = r;
    const method = kind.replace(/Request$/, '') as 'CreateSandbox' | 'CreateContainer' | 'ExecProcess';
    return (t.svc[method] as (q: unknown) => Promise<unknown>)({ exec_id: fields.container_id, storages: [], devices: [], ...fields }).then(
      () => 'ok',
      (e: Error & { code: number }) => (e.code === Code.PermissionDenied && /is blocked by policy/.test(e.message) ? `refused: ${e.message}` : 'ok'),
    );
  };
  beforeAll(async () => {
    const [busybox, pause] = [await busyboxImage(), await pauseImage()];
    const r = await generate(fs.readFileSync(path.join(fix, 'pod.yaml'), 'utf8'), { images: new ImageResolver([new OciArchive(busybox.archive), new OciArchive(pause.archive)], new LayerCache(undefined)) });
    generated = r.pods[0]!.text;
    t = await startAgent({ launchDigest: sha256(generated) });
    await t.svc.SetPolicy({ policy: generated });
  }, 120_000);
  afterAll(async () => {
    await t.close();
  });

  it('admits every request of the pod it was made for, and refuses a changed command, an added mount and another exec', async () => {
    for (const r of captured) expect(await send(r), r.kind).toBe('ok');
    const app = captured.find((r) => r.kind === 'CreateContainerRequest' && (r.OCI as { Annotations: Record<string, string> }).Annotations['io.kubernetes.cri.container-name'] === 'app')!;
    const changed = structuredClone(app) as Req & { OCI: { Process: { Args: string[] }; Mounts: unknown[] } };
    changed.OCI.Process.Args = ['sh', '-c', 'cat /etc/secret/TOKEN'];
    expect(await send(changed)).toMatch(/^refused: CreateContainerRequest is blocked by policy: .*allow_args/);
    const mounted = structuredClone(app) as typeof changed;
    mounted.OCI.Mounts.push({ destination: '/host', source: '/', type_: 'bind', options: ['rbind', 'rw'] });
    expect(await send(mounted)).toMatch(/^refused: CreateContainerRequest is blocked by policy: .*mounts_not_allowed = \[\{"destination": "\/host"/);
    const exec = structuredClone(captured.find((r) => r.kind === 'ExecProcessRequest')!) as Req & { process: { Args: string[] } };
    exec.process.Args = ['sh'];
    expect(await send(exec)).toMatch(/^refused: ExecProcessRequest is blocked by policy: .*args in p\.exec_commands is false/);
    // Still serving, still by the same policy.
    expect(await send(captured.find((r) => r.kind === 'ExecProcessRequest')!)).toBe('ok');
  });
});
