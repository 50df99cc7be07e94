// The agent's side of ids that become paths: a container id is a directory under the agent's
// state dir, next to the pod's own `sandbox` (namespaces, resolv.conf, shm) and `shared` (the
// host's shared filesystem: other containers' rootfs). A container named after one of them must
// not land on it, and its removal must not delete it.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, processSpec, runToEnd, useAgent, type TestAgent } from '../agent/helpers.js';

describe('agent container ids', () => {
  const agent = useAgent('');
  let t: TestAgent;
  let keep: string;
  beforeAll(async () => {
    t = agent();
    await t.svc.CreateSandbox({ hostname: 'ids', sandbox_id: 'ids-pod', dns: ['nameserver 10.0.0.10'] });
    // Another container's rootfs as the shared filesystem shows it in the guest.
    keep = path.join(t.stateDir, 'shared', 'containers', 'other', 'rootfs', 'keep');
    fs.mkdirSync(path.dirname(keep), { recursive: true });
    fs.writeFileSync(keep, 'another container\'s file');
  });

  it('containers named "shared" and "sandbox" run and go without touching the pod\'s own dirs', async () => {
    for (const cid of ['shared', 'sandbox']) {
      const r = await runToEnd(t, cid, ['echo', cid]);
      expect(r.stdout).toBe(`${cid}\n`);
      expect(fs.existsSync(keep), `after ${cid}: the shared filesystem's files`).toBe(true);
      expect(fs.readFileSync(path.join(t.stateDir, 'sandbox', 'resolv.conf'), 'utf8'), `after ${cid}: the sandbox's resolv.conf`).toBe('nameserver 10.0.0.10\n');
    }
    expect(fs.readdirSync(path.join(t.stateDir, 'containers'))).toEqual([]);
  });

  it('ids that are not identifiers are refused with InvalidArgument naming them, and nothing is made', async () => {
    const before = fs.readdirSync(t.stateDir).sort();
    for (const cid of ['..', '../escape', 'a/b', '.hidden', 'x'.repeat(77)]) {
      const e = (await t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, ['true']) }).catch((x) => x)) as { code: number; message: string };
      expect(e.code, cid).toBe(Code.InvalidArgument);
      expect(e.message).toContain(JSON.stringify(cid.length > 76 ? cid.slice(0, 10) : cid).slice(0, 10));
    }
    expect(fs.readdirSync(t.stateDir).sort()).toEqual(before);
    await t.svc.CreateContainer({ container_id: 'ids-live', OCI: containerSpec(t.rootfs, ['sleep', '100']) });
    await t.svc.StartContainer({ container_id: 'ids-live' });
    for (const eid of ['../../x', 'a/b', '']) {
      const e = (await t.svc.ExecProcess({ container_id: 'ids-live', exec_id: eid, process: processSpec(['true']) }).catch((x) => x)) as { code: number; message: string };
      expect(e.code, JSON.stringify(eid)).toBe(Code.InvalidArgument);
      expect(e.message).toContain('exec id');
    }
    await t.svc.SignalProcess({ container_id: 'ids-live', exec_id: '', signal: 9 });
    await t.svc.WaitProcess({ container_id: 'ids-live', exec_id: '' });
    await t.svc.RemoveContainer({ container_id: 'ids-live' });
  });
});
