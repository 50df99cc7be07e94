// Bad input: each answered with the right code and a message naming the object, and the agent
// keeps serving afterwards.
import fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, processSpec, useAgent, type TestAgent } from './helpers.js';

describe('bad input', () => {
  const agent = useAgent('er-');
  let t: TestAgent;
  beforeAll(async () => {
    t = agent();
    await t.svc.CreateContainer({ container_id: 'er-live', OCI: containerSpec(t.rootfs, ['sleep', '1000']) });
    await t.svc.StartContainer({ container_id: 'er-live' });
  });

  const expectErr = async (p: Promise<unknown>, code: number, ...parts: string[]) => {
    const e = (await p.then(
      () => undefined,
      (x) => x,
    )) as { code: number; message: string } | undefined;
    expect(e, `expected an error with code ${code}`).toBeDefined();
    expect(e!.code).toBe(code);
    for (const s of parts) expect(e!.message).toContain(s);
  };

  it('unknown container id: NotFound naming it, for every container request', async () => {
    const id = 'er-nope';
    const r = { container_id: id };
    await expectErr(t.svc.StartContainer(r), Code.NotFound, `container ${id}`);
    await expectErr(t.svc.RemoveContainer(r), Code.NotFound, id);
    await expectErr(t.svc.PauseContainer(r), Code.NotFound, id);
    await expectErr(t.svc.ResumeContainer(r), Code.NotFound, id);
    await expectErr(t.svc.StatsContainer(r), Code.NotFound, id);
    await expectErr(t.svc.UpdateContainer({ ...r, resources: { Pids: { Limit: 5 } } }), Code.NotFound, id);
    await expectErr(t.svc.WaitProcess({ ...r, exec_id: '' }), Code.NotFound, id);
    await expectErr(t.svc.SignalProcess({ ...r, exec_id: '', signal: 9 }), Code.NotFound, id);
    await expectErr(t.svc.ReadStdout({ ...r, exec_id: '', len: 10 }), Code.NotFound, id);
    await expectErr(t.svc.ReadStderr({ ...r, exec_id: '', len: 10 }), Code.NotFound, id);
    await expectErr(t.svc.WriteStdin({ ...r, exec_id: '', data: Buffer.from('x') }), Code.NotFound, id);
    await expectErr(t.svc.CloseStdin({ ...r, exec_id: '' }), Code.NotFound, id);
    await expectErr(t.svc.TtyWinResize({ ...r, exec_id: '', row: 1, column: 1 }), Code.NotFound, id);
    await expectErr(t.svc.ExecProcess({ ...r, exec_id: 'e', process: processSpec(['true']) }), Code.NotFound, id);
  });

  it('unknown exec id: NotFound naming exec and container', async () => {
    const r = { container_id: 'er-live', exec_id: 'ghost' };
    await expectErr(t.svc.WaitProcess(r), Code.NotFound, 'exec ghost of container er-live');
    await expectErr(t.svc.SignalProcess({ ...r, signal: 9 }), Code.NotFound, 'ghost');
    await expectErr(t.svc.ReadStdout({ ...r, len: 1 }), Code.NotFound, 'ghost');
    await expectErr(t.svc.WriteStdin({ ...r, data: Buffer.from('x') }), Code.NotFound, 'ghost');
  });

  it('duplicate ids: AlreadyExists for a container and for an exec', async () => {
    await expectErr(t.svc.CreateContainer({ container_id: 'er-live', OCI: containerSpec(t.rootfs, ['true']) }), Code.AlreadyExists, 'container er-live');
    await t.svc.ExecProcess({ container_id: 'er-live', exec_id: 'dup', process: processSpec(['sleep', '100']) });
    await expectErr(t.svc.ExecProcess({ container_id: 'er-live', exec_id: 'dup', process: processSpec(['true']) }), Code.AlreadyExists, 'exec dup of container er-live');
    await t.svc.SignalProcess({ container_id: 'er-live', exec_id: 'dup', signal: 9 });
    expect((await t.svc.WaitProcess({ container_id: 'er-live', exec_id: 'dup' })).status).toBe(137);
  });

  it('two concurrent creates of one id: one succeeds, the other is AlreadyExists', async () => {
    const results = await Promise.allSettled([0, 1].map(() => t.svc.CreateContainer({ container_id: 'er-race', OCI: containerSpec(t.rootfs, ['true']) })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(failed.reason.code).toBe(Code.AlreadyExists);
    expect(failed.reason.message).toContain('er-race');
    await t.svc.RemoveContainer({ container_id: 'er-race' });
  });

  it('invalid ids and specs with relative or escaping paths: InvalidArgument naming the field', async () => {
    const ok = () => containerSpec(t.rootfs, ['true']);
    await expectErr(t.svc.CreateContainer({ container_id: '../evil', OCI: ok() }), Code.InvalidArgument, '../evil');
    await expectErr(t.svc.CreateContainer({ container_id: '', OCI: ok() }), Code.InvalidArgument, 'container id');
    await expectErr(t.svc.CreateContainer({ container_id: 'er-nospec' }), Code.InvalidArgument, 'er-nospec', 'no OCI spec');
    const relRoot = { ...ok(), Root: { Path: 'rootfs' } };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-relroot', OCI: relRoot }), Code.InvalidArgument, 'root.path', 'not absolute');
    const escRoot = { ...ok(), Root: { Path: `${t.rootfs}/../../etc` } };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-escroot', OCI: escRoot }), Code.InvalidArgument, 'root.path', "'..'");
    const relMount = { ...ok(), Mounts: [{ destination: 'data', source: '/tmp', type: 'bind', options: ['rbind'] }] };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-relmount', OCI: relMount }), Code.InvalidArgument, 'mounts[0].destination');
    const escSrc = { ...ok(), Mounts: [{ destination: '/data', source: '/run/../etc', type: 'bind', options: ['rbind'] }] };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-escsrc', OCI: escSrc }), Code.InvalidArgument, 'mounts[0].source');
    const relCwd = { ...ok(), Process: processSpec(['true'], { cwd: 'tmp' }) };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-relcwd', OCI: relCwd }), Code.InvalidArgument, 'cwd');
    const noArgs = { ...ok(), Process: processSpec([]) };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-noargs', OCI: noArgs }), Code.InvalidArgument, 'args');
    const relHook = { ...ok(), Hooks: { Prestart: [{ Path: 'hook.sh' }] } };
    await expectErr(t.svc.CreateContainer({ container_id: 'er-relhook', OCI: relHook }), Code.InvalidArgument, 'hooks.prestart[0].path');
    await expectErr(t.svc.ExecProcess({ container_id: 'er-live', exec_id: 'bad/id', process: processSpec(['true']) }), Code.InvalidArgument, 'bad/id');
    await expectErr(t.svc.ExecProcess({ container_id: 'er-live', exec_id: 'nop' }), Code.InvalidArgument, 'no process');
    for (const cid of ['er-relroot', 'er-escroot', 'er-relmount', 'er-escsrc', 'er-relcwd', 'er-noargs', 'er-relhook']) {
      expect(fs.existsSync(`${t.stateDir}/containers/${cid}`)).toBe(false);
    }
  });

  it('requests in the wrong state: FailedPrecondition', async () => {
    await t.svc.CreateContainer({ container_id: 'er-created', OCI: containerSpec(t.rootfs, ['true']) });
    await expectErr(t.svc.ExecProcess({ container_id: 'er-created', exec_id: 'e', process: processSpec(['true']) }), Code.FailedPrecondition, 'er-created', 'created');
    await expectErr(t.svc.ResumeContainer({ container_id: 'er-created' }), Code.FailedPrecondition, 'er-created');
    await t.svc.StartContainer({ container_id: 'er-created' });
    await expectErr(t.svc.StartContainer({ container_id: 'er-created' }), Code.FailedPrecondition, 'er-created');
    await t.svc.WaitProcess({ container_id: 'er-created', exec_id: '' });
    await t.svc.RemoveContainer({ container_id: 'er-created' });
  });

  it('an unimplemented method answers Unimplemented naming itself; the agent keeps serving', async () => {
    await expectErr(t.svc.ListInterfaces({}), Code.Unimplemented, 'ListInterfaces');
    await expectErr(t.svc.SignalProcess({ container_id: 'er-live', exec_id: '', signal: 99 }), Code.InvalidArgument, 'signal 99');
    expect((await t.health.Check({})).status).toBe(1);
    expect(t.agent.sandbox.container('er-live').init.running).toBe(true);
  });
});
