// Initdata (CoCo's spec, Kata's annotation io.katacontainers.config.hypervisor.cc_init_data): the
// document's digest as HOST_DATA (the algorithm's hash of its exact text, cut to SNP's 32 bytes), the
// annotation's decoding with its bounds, where the KBS is (cdh.toml, else aa.toml), the shim taking
// the annotation out of the spec, and the real agent (local mode) with initdata: its policy.rego in
// force and bound when the document matches the launch data; every request refused, saying why,
// when it does not.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeInitdataAnnotation, encodeInitdataAnnotation, INITDATA_ANNOTATION, initdataKbsUrl, parseInitdata } from '../../attestation/initdata.js';
import { applyInitdata, loadInitdata } from '../../agent/initdata-load.js';
import { takePodInitdata } from '../../shim/pod-initdata.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import { Code } from '../../proto/ttrpc/index.js';
import type { grpc } from '../../proto/gen/types.js';
import { containerSpec, startAgent } from '../agent/helpers.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-initdata-');
afterAll(() => tmp.cleanup());

const POLICY = allowAllPolicy()
  .replace('package agent_policy\n', 'package agent_policy\n\nimport rego.v1\n')
  .replace('default CreateContainerRequest := true', 'default CreateContainerRequest := false\n\nCreateContainerRequest if {\n  not "FORBIDDEN=1" in input.OCI.Process.Env\n}');
const doc = (algorithm = 'sha384', extra = '') =>
  `algorithm = "${algorithm}"\nversion = "0.1.0"\n\n[data]\n"cdh.toml" = '''\n[kbc]\nname = 'cc_kbc'\nurl = 'http://10.88.0.1:8080'\n'''\n\n"policy.rego" = '''\n${POLICY}'''\n${extra}`;

describe('the document', () => {
  it('HOST_DATA is the digest of the exact text, cut to 32 bytes (sha384, sha512) or whole (sha256)', () => {
    const text = doc();
    const d = parseInitdata(text);
    expect(d.digest).toEqual(createHash('sha384').update(text).digest());
    expect(d.hostData).toEqual(createHash('sha384').update(text).digest().subarray(0, 32));
    expect(parseInitdata(doc('sha256')).hostData).toEqual(createHash('sha256').update(doc('sha256')).digest());
    expect(parseInitdata(doc('sha512')).hostData).toEqual(createHash('sha512').update(doc('sha512')).digest().subarray(0, 32));
    // One byte more (a comment) is another HOST_DATA.
    expect(parseInitdata(`${text}# x\n`).hostData).not.toEqual(d.hostData);
    expect(d.data['policy.rego']).toBe(POLICY);
    expect(initdataKbsUrl(d)).toBe('http://10.88.0.1:8080');
  });

  it('the KBS from cdh.toml, else aa.toml; none named is none', () => {
    const aa = `version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = '''\n[token_configs.kbs]\nurl = 'https://kbs.example:8443'\n'''\n`;
    expect(initdataKbsUrl(parseInitdata(aa))).toBe('https://kbs.example:8443');
    expect(initdataKbsUrl(parseInitdata('version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'))).toBeUndefined();
    expect(() => initdataKbsUrl(parseInitdata(`version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"cdh.toml" = "[kbc"\n`))).toThrow(/data."cdh.toml" is not TOML/);
  });

  it('refuses what is not initdata, naming the problem', () => {
    expect(() => parseInitdata('version = "0.2.0"\nalgorithm = "sha256"\n')).toThrow(/version "0.2.0" is not supported/);
    expect(() => parseInitdata('version = "0.1.0"\nalgorithm = "md5"\n')).toThrow(/algorithm "md5" is not one of sha256, sha384, sha512/);
    expect(() => parseInitdata('version = "0.1.0"\nalgorithm = "sha256"\n[data]\nx = 1\n')).toThrow(/data."x" is not a string/);
    expect(() => parseInitdata('not toml = = =')).toThrow(/not TOML/);
  });

  it('the annotation: base64 of the gzip\'d text, bounded when decompressed', async () => {
    expect(decodeInitdataAnnotation(await encodeInitdataAnnotation(doc()))).toBe(doc());
    expect(() => decodeInitdataAnnotation('not base64!')).toThrow(/not base64/);
    expect(() => decodeInitdataAnnotation(Buffer.from('plain').toString('base64'))).toThrow(/not a gzip'd document/);
    // 5 MiB of zeros gzip to a few KiB: refused when decompressed past 4 MiB, not inflated.
    expect(() => decodeInitdataAnnotation(gzipSync(Buffer.alloc(5 << 20)).toString('base64'))).toThrow(/not a gzip'd document of at most 4194304 bytes/);
  });

  it('the shim takes the annotation out of the spec; a bad one is InvalidArgument naming it', async () => {
    const spec = { Annotations: { [INITDATA_ANNOTATION]: await encodeInitdataAnnotation(doc()), other: 'x' } } as unknown as grpc.Spec;
    expect(takePodInitdata(spec, 'container c')!.hostData).toEqual(parseInitdata(doc()).hostData);
    expect(spec.Annotations).toEqual({ other: 'x' });
    const bad = { Annotations: { [INITDATA_ANNOTATION]: 'AAAA' } } as unknown as grpc.Spec;
    expect(() => takePodInitdata(bad, 'container c')).toThrow(/container c: annotation io.katacontainers.config.hypervisor.cc_init_data: the value is not a gzip'd document/);
  });
});

describe('the agent with initdata (local mode)', () => {
  const write = (name: string, text: string) => {
    const f = path.join(tmp.dir, name);
    fs.writeFileSync(f, text);
    return f;
  };

  it('matching the launch data: its policy.rego is in force and bound, its KBS is the pod\'s', async () => {
    const text = doc();
    const loaded = loadInitdata(write('initdata.toml', text), parseInitdata(text).hostData.toString('hex'));
    expect(loaded).toMatchObject({ ok: true, kbsUrl: 'http://10.88.0.1:8080', policy: POLICY });
    if (!loaded?.ok) throw new Error('not loaded');
    const t = await startAgent({ launchDigest: loaded.policyDigest });
    try {
      const kbs: string[] = [];
      applyInitdata(loaded, t.agent.sandbox.policy, { setKbsUrl: (u) => kbs.push(u) }, pino({ level: 'silent' }));
      expect(kbs).toEqual(['http://10.88.0.1:8080']);
      await t.svc.CreateSandbox({ hostname: 'init', sandbox_id: 'sb-init' });
      const spec = containerSpec(t.rootfs, ['true']);
      spec.Process!.Env = ['FORBIDDEN=1'];
      const refused = await t.svc.CreateContainer({ container_id: 'init-1', OCI: spec }).catch((e: { code: number; message: string }) => e);
      expect(refused).toMatchObject({ code: Code.PermissionDenied });
      expect((refused as { message: string }).message).toMatch(/^CreateContainerRequest is blocked by policy/);
      // Bound: no other policy replaces it.
      const other = await t.svc.SetPolicy({ policy: allowAllPolicy() }).catch((e: { code: number; message: string }) => e);
      expect(other).toMatchObject({ code: Code.PermissionDenied });
      await t.svc.DestroySandbox({});
    } finally {
      await t.close();
    }
  });

  it('not matching the launch data: every request is refused, saying why', async () => {
    const loaded = loadInitdata(write('initdata-other.toml', doc()), createHash('sha256').update('another policy').digest('hex'));
    expect(loaded).toMatchObject({ ok: false });
    if (!loaded || loaded.ok) throw new Error('loaded');
    expect(loaded.problem).toMatch(/^the VM's initdata \(sha384 [0-9a-f]{96}\) is not what its launch data binds \([0-9a-f]{64}\)$/);
    expect(loadInitdata(path.join(tmp.dir, 'none.toml'), undefined)).toBeUndefined();
    expect(loadInitdata(write('bad.toml', 'version = "9"\nalgorithm = "sha256"\n'), undefined)).toMatchObject({ ok: false, problem: expect.stringMatching(/version "9" is not supported/) as unknown });
    const t = await startAgent({ launchProblem: loaded.problem });
    try {
      for (const call of [() => t.svc.CreateSandbox({ hostname: 'x', sandbox_id: 'sb-x' }), () => t.svc.SetPolicy({ policy: allowAllPolicy() })]) {
        const e = (await call().catch((err: unknown) => err)) as { code: number; message: string };
        expect(e.code).toBe(Code.PermissionDenied);
        expect(e.message).toContain("is blocked by policy: the VM's initdata");
      }
      await t.health.Check({});
    } finally {
      await t.close();
    }
  });
});
