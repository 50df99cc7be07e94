// A request as the policy sees it (policy/input.ts), from the decoded protobuf message: Kata's
// agent's serde shape, field by field. (Against Kata's own logged inputs: policy/conformance/
// kata-inputs.ts on regorus's corpus, 202 of 202 byte-identical; see policy/README.md.)
// And RFC 6902 patches on the policy state (policy/json-patch.ts).
import { describe, expect, it } from 'vitest';
import { messageType } from '../../proto/registry.js';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { root } from '../../proto/registry.js';
import { canonical, equal, parseJSON, RObject, type Value } from '../../policy/index.js';
import { copyFileInput, policyInput, policyInputValue, PolicyInputError } from '../../policy/input.js';
import { applyPatch, JsonPatchError } from '../../policy/json-patch.js';

function viaWire(name: string, obj: Record<string, unknown>): object {
  const t = messageType(name);
  return t.decode(t.encode(t.fromObject(obj)).finish());
}

describe('policy input as a value, without JSON text (the agent gate path)', () => {
  const fix = path.join(import.meta.dirname, 'fixtures', 'gen', 'cri-bookworm.json');
  const captured = (JSON.parse(fs.readFileSync(fix, 'utf8')) as { requests: (Record<string, unknown> & { kind: string })[] }).requests;
  const requestTypes = root.lookupService('grpc.AgentService').methodsArray.map((m) => (m.resolvedRequestType?.fullName ?? m.requestType).replace(/^\./, ''));

  /** The corpus: the captured CRI pod, every AgentService request empty, and requests with the awkward parts set. */
  function corpus(): [string, object][] {
    const out: [string, object][] = [];
    for (const r of captured) {
      const { kind, ...fields } = r;
      out.push([`grpc.${kind}`, viaWire(`grpc.${kind}`, fields)]);
    }
    for (const t of requestTypes) out.push([t, viaWire(t, {})]);
    out.push(['grpc.WriteStreamRequest', viaWire('grpc.WriteStreamRequest', { container_id: 'c', exec_id: 'e', data: randomBytes(64 * 1024) })]);
    out.push(['grpc.WriteStreamRequest', viaWire('grpc.WriteStreamRequest', { container_id: 'c', data: randomBytes(1) })]);
    out.push(['grpc.ReadStreamRequest', viaWire('grpc.ReadStreamRequest', { container_id: 'c', exec_id: 'e', len: 4096 })]);
    out.push(['grpc.CopyFileRequest', viaWire('grpc.CopyFileRequest', { path: '/run/x', file_mode: 0o100644, file_size: 3, data: Buffer.from('abc') })]);
    out.push(['grpc.CopyFileRequest', viaWire('grpc.CopyFileRequest', { path: '/run/l', file_mode: 0o120777, data: Buffer.from('target') })]);
    out.push(['grpc.LinuxSyscall', viaWire('grpc.LinuxSyscall', { Names: ['read'], Action: 'SCMP_ACT_ERRNO', errnoret: 1 })]);
    out.push([
      'grpc.CreateContainerRequest',
      viaWire('grpc.CreateContainerRequest', {
        container_id: 'big',
        OCI: {
          Annotations: { z: '1', a: 'line\nbreak "q" \u0001 é \ud83d\ude00', '': '' },
          Linux: { Resources: { Memory: { Limit: '1152921504606846976', Swap: -1 }, CPU: { Shares: '18446744073709551615' } } },
          Process: { OOMScoreAdj: -1000, Rlimits: [{ Type: 'RLIMIT_NOFILE', Hard: '9007199254740993', Soft: 1024 }] },
        },
        storages: [{ driver: 'blk', options: ['ro'], mount_point: '/m', fs_group: { group_id: 7, group_change_policy: 1 } }],
      }),
    ]);
    out.push(['grpc.UpdateInterfaceRequest', viaWire('grpc.UpdateInterfaceRequest', { interface: { name: 'eth0', IPAddresses: [{ family: 1, address: 'fe80::1', mask: '64' }], raw_flags: 4294967295 } })]);
    return out;
  }

  it('is the value the JSON text parses to, for every request of the corpus', () => {
    const all = corpus();
    expect(all.length).toBeGreaterThan(requestTypes.length + captured.length);
    for (const [t, m] of all) {
      const viaText = parseJSON(policyInput(t, m));
      const direct = policyInputValue(t, m);
      expect(equal(direct, viaText), t).toBe(true);
      expect(canonical(direct), t).toBe(canonical(viaText));
    }
  });

  it('an integer beyond 2^53 is the exact integer its JSON text names (a bigint), not a double', () => {
    const m = corpus().find(([, x]) => (x as { container_id?: string }).container_id === 'big')![1];
    const limit = (v: Value) => ((((v as RObject).get('OCI') as RObject).get('Linux') as RObject).get('Resources') as RObject).get('Memory') as RObject;
    const direct = limit(policyInputValue('grpc.CreateContainerRequest', m)).get('Limit');
    const viaText = limit(parseJSON(policyInput('grpc.CreateContainerRequest', m))).get('Limit');
    expect(typeof direct).toBe('bigint');
    expect(direct).toBe(viaText);
  });
});

describe('policy input: Kata agent serde shape', () => {
  it('every field in schema order; unset messages null, absent lists [], type as type_, int64 as numbers', () => {
    const msg = viaWire('grpc.CreateContainerRequest', {
      container_id: 'c1',
      OCI: { Version: '1.0.2-dev', Mounts: [{ destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid'] }], Process: { Args: ['sh'], OOMScoreAdj: 1000 } },
    });
    const json = policyInput('grpc.CreateContainerRequest', msg);
    expect(json.startsWith('{"container_id":"c1","exec_id":"","string_user":null,"devices":[],"storages":[],"OCI":{"Version":"1.0.2-dev","Process":{"Terminal":false,"ConsoleSize":null,"User":null,"Args":["sh"],"Env":[],"Cwd":"","Capabilities":null,"Rlimits":[],"NoNewPrivileges":false,"ApparmorProfile":"","OOMScoreAdj":1000,"SelinuxLabel":""},"Root":null,"Hostname":"","Mounts":[{"destination":"/proc","source":"proc","type_":"proc","options":["nosuid"]}],"Hooks":null,"Annotations":{}')).toBe(true);
    expect(json.endsWith('"sandbox_pidns":false,"shared_mounts":[],"stdin_port":0,"stdout_port":0,"stderr_port":0}')).toBe(true);
    expect(() => JSON.parse(json) as unknown).not.toThrow();
  });

  it('maps keep their order on the wire; enums are numbers; bytes are arrays of numbers; strings escape as serde_json does', () => {
    const spec = viaWire('grpc.CreateContainerRequest', { OCI: { Annotations: { z: '1', a: 'line\nbreak "q" \u0001 é' } } });
    expect(policyInput('grpc.CreateContainerRequest', spec)).toContain('"Annotations":{"z":"1","a":"line\\nbreak \\"q\\" \\u0001 é"}');
    const iface = viaWire('grpc.UpdateInterfaceRequest', { interface: { name: 'eth0', IPAddresses: [{ family: 1, address: 'fe80::1', mask: '64' }] } });
    expect(policyInput('grpc.UpdateInterfaceRequest', iface)).toBe(
      '{"interface":{"device":"","name":"eth0","IPAddresses":[{"family":1,"address":"fe80::1","mask":"64"}],"mtu":0,"hwAddr":"","devicePath":"","type_":"","raw_flags":0}}',
    );
    const write = viaWire('grpc.WriteStreamRequest', { container_id: 'c', data: Buffer.from([0, 255, 10]) });
    expect(policyInput('grpc.WriteStreamRequest', write)).toBe('{"container_id":"c","exec_id":"","data":[0,255,10]}');
  });

  it('a oneof comes after the other fields, as the variant that is set, or null', () => {
    const t = 'grpc.LinuxSyscall';
    expect(policyInput(t, viaWire(t, { Names: ['read'], Action: 'SCMP_ACT_ERRNO', errnoret: 1 }))).toBe('{"Names":["read"],"Action":"SCMP_ACT_ERRNO","Args":[],"ErrnoRet":{"Errnoret":1}}');
    expect(policyInput(t, viaWire(t, { Names: ['read'] }))).toBe('{"Names":["read"],"Action":"","Args":[],"ErrnoRet":null}');
  });

  it('CopyFile is its metadata: the file type from the mode bits, a symlink target instead of bytes', () => {
    const base = { path: '/run/kata-containers/shared/containers/x', file_size: 5, dir_mode: 0o750, uid: 1, gid: 2, offset: 0 };
    const file = copyFileInput({ ...base, file_mode: 0o100644, data: Buffer.from('hello') });
    expect(file).toBe('{"path":"/run/kata-containers/shared/containers/x","file_type":"Regular","symlink_target":null,"file_size":5,"file_mode":33188,"dir_mode":488,"uid":1,"gid":2,"offset":0}');
    expect(file).not.toContain('hello');
    expect(JSON.parse(copyFileInput({ ...base, file_mode: 0o040755 })).file_type).toBe('Directory');
    expect(JSON.parse(copyFileInput({ ...base, file_mode: 0o120777, data: Buffer.from('../target') })).symlink_target).toBe('../target');
    expect(JSON.parse(copyFileInput({ ...base, file_mode: 0o140777 })).file_type).toBe('Unknown');
    expect(() => copyFileInput({ ...base, file_mode: 0o120777, data: Buffer.from([0xff, 0xfe]) })).toThrow(PolicyInputError);
    expect(JSON.parse(policyInput('grpc.CopyFileRequest', viaWire('grpc.CopyFileRequest', { path: '/p', file_mode: 0o100600, data: Buffer.from('x') }))).file_type).toBe('Regular');
  });
});

describe('JSON patch on the policy state', () => {
  const doc = { pstate: { a: 1, list: [1, 2] } };

  it('add, remove, replace, move, copy, test; ~0 and ~1 in keys; the input document untouched', () => {
    const out = applyPatch(doc, [
      { op: 'add', path: '/pstate/container_c1', value: 2 },
      { op: 'add', path: '/pstate/list/-', value: 3 },
      { op: 'add', path: '/pstate/list/0', value: 0 },
      { op: 'replace', path: '/pstate/a', value: { b: true } },
      { op: 'add', path: '/pstate/a~1b~0', value: 'k' },
      { op: 'copy', from: '/pstate/a', path: '/pstate/c' },
      { op: 'move', from: '/pstate/c', path: '/pstate/d' },
      { op: 'remove', path: '/pstate/list/1' },
      { op: 'test', path: '/pstate/d', value: { b: true } },
    ]);
    expect(out).toEqual({ pstate: { a: { b: true }, list: [0, 2, 3], container_c1: 2, 'a/b~': 'k', d: { b: true } } });
    expect(doc).toEqual({ pstate: { a: 1, list: [1, 2] } });
  });

  it('all or nothing: a failing operation leaves the document as it was and names the path', () => {
    const ops = [
      { op: 'add', path: '/pstate/x', value: 1 },
      { op: 'remove', path: '/pstate/missing' },
    ] as const;
    expect(() => applyPatch(doc, ops)).toThrow(JsonPatchError);
    expect(() => applyPatch(doc, ops)).toThrow(/\/pstate\/missing/);
    expect(doc).toEqual({ pstate: { a: 1, list: [1, 2] } });
    expect(() => applyPatch(doc, [{ op: 'add', path: '/nope/x', value: 1 }])).toThrow(/"nope" does not exist/);
    expect(() => applyPatch(doc, [{ op: 'test', path: '/pstate/a', value: 2 }])).toThrow(/value differs/);
    expect(() => applyPatch(doc, [{ op: 'add', path: '/pstate/list/9', value: 1 }])).toThrow(/out of range/);
    expect(() => applyPatch(doc, [{ op: 'add', path: 'pstate', value: 1 }])).toThrow(/does not start with \//);
    expect(() => applyPatch(doc, [{ op: 'frobnicate', path: '/x' } as never])).toThrow(/unknown operation/);
  });
});
