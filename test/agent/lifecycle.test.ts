// Containers and processes end to end on this host: real crun, real processes, the agent in
// local mode on a unix socket.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, crunContainers, processSpec, readAll, runToEnd, sleep, useAgent, TEST_CGROUP_PARENT, type TestAgent } from './helpers.js';
import { v1ControllerDir } from '../../agent/cgroups.js';

describe('agent lifecycle (local mode, real crun)', () => {
  const agent = useAgent('lc-');
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });

  const create = (cid: string, args: string[], o: Parameters<typeof containerSpec>[2] = {}) =>
    t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, args, o) });

  it('answers Health.Check and Version', async () => {
    expect((await t.health.Check({ service: '' })).status).toBe(1);
    const v = await t.health.Version({});
    expect(v.agent_version).toMatch(/^\d+\.\d+\.\d+/);
    expect(v.grpc_version).toBe('0.0.1');
  });

  it('runs a container to its exit code with its output', async () => {
    const r = await runToEnd(t, 'lc-exit3', ['sh', '-c', 'echo hello; echo oops >&2; exit 3']);
    expect(r).toEqual({ stdout: 'hello\n', stderr: 'oops\n', status: 3 });
  });

  it('reports a container it cannot start as an error naming it, and leaves nothing behind', async () => {
    const err = await create('lc-noexec', ['/bin/does-not-exist']).catch((e) => e);
    expect(err.code).toBe(Code.Internal);
    expect(err.message).toContain('lc-noexec');
    expect(err.message).toMatch(/does-not-exist/);
    expect(crunContainers('lc-noexec')).toEqual([]);
    expect(fs.existsSync(path.join(t.stateDir, 'containers', 'lc-noexec'))).toBe(false);
  });

  it('reports SIGKILL as 137 and turns SIGTERM to an init without handler into SIGKILL', async () => {
    for (const [cid, sig] of [['lc-kill9', 9], ['lc-term', 15]] as const) {
      await create(cid, ['sleep', '1000']);
      await t.svc.StartContainer({ container_id: cid });
      await t.svc.SignalProcess({ container_id: cid, exec_id: '', signal: sig });
      const { status } = await t.svc.WaitProcess({ container_id: cid, exec_id: '' });
      expect(status).toBe(137);
      await t.svc.RemoveContainer({ container_id: cid });
    }
  });

  it('delivers SIGTERM to an init that handles it (exit code of its own choosing)', async () => {
    const cid = 'lc-trap';
    await create(cid, ['sh', '-c', 'trap "echo term; exit 42" TERM; echo ready; while :; do sleep 0.1; done']);
    await t.svc.StartContainer({ container_id: cid });
    const first = await t.svc.ReadStdout({ container_id: cid, exec_id: '', len: 100 });
    expect(Buffer.from(first.data).toString()).toBe('ready\n');
    await t.svc.SignalProcess({ container_id: cid, exec_id: '', signal: 15 });
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(42);
    expect((await readAll(t, cid)).toString()).toBe('term\n');
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('round-trips stdin and answers a write after CloseStdin with FailedPrecondition', async () => {
    const cid = 'lc-stdin';
    await create(cid, ['sh', '-c', 'cat; echo done']);
    await t.svc.StartContainer({ container_id: cid });
    const w = await t.svc.WriteStdin({ container_id: cid, exec_id: '', data: Buffer.from('hello stdin\n') });
    expect(w.len).toBe(12);
    await t.svc.WriteStdin({ container_id: cid, exec_id: '', data: Buffer.from('second line\n') });
    await t.svc.CloseStdin({ container_id: cid, exec_id: '' });
    const err = await t.svc.WriteStdin({ container_id: cid, exec_id: '', data: Buffer.from('late') }).catch((e) => e);
    expect(err.code).toBe(Code.FailedPrecondition);
    expect(err.message).toContain(cid);
    expect((await readAll(t, cid)).toString()).toBe('hello stdin\nsecond line\ndone\n');
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(0);
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('execs into a running container: same pid namespace, own exit code, own stdio', async () => {
    const cid = 'lc-exec';
    await create(cid, ['sleep', '1000']);
    await t.svc.StartContainer({ container_id: cid });
    await t.svc.ExecProcess({ container_id: cid, exec_id: 'e1', process: processSpec(['sh', '-c', 'cat /proc/1/cmdline | tr "\\0" " "; echo; read x; echo "got $x"; exit 3']) });
    await t.svc.WriteStdin({ container_id: cid, exec_id: 'e1', data: Buffer.from('abc\n') });
    const out = (await readAll(t, cid, 'e1')).toString();
    expect(out).toBe('sleep 1000 \ngot abc\n');
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: 'e1' })).status).toBe(3);
    // A waited exec whose output is consumed is forgotten, as upstream forgets it.
    const gone = await t.svc.WaitProcess({ container_id: cid, exec_id: 'e1' }).catch((e) => e);
    expect(gone.code).toBe(Code.NotFound);
    // Signal one exec, not the container.
    await t.svc.ExecProcess({ container_id: cid, exec_id: 'e2', process: processSpec(['sleep', '500']) });
    await t.svc.SignalProcess({ container_id: cid, exec_id: 'e2', signal: 9 });
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: 'e2' })).status).toBe(137);
    expect(t.agent.sandbox.container(cid).init.running).toBe(true);
    // Signal everything: the init and a still-running exec both go.
    await t.svc.ExecProcess({ container_id: cid, exec_id: 'e3', process: processSpec(['sleep', '500']) });
    await t.svc.SignalProcess({ container_id: cid, exec_id: '', signal: 9 });
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(137);
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: 'e3' })).status).toBe(137);
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it("names the init by the container's id as well as by '': a signal to it reaches the init alone", async () => {
    const cid = 'lc-byid';
    const trapping = (who: string) => `trap "echo ${who}-hup" HUP; trap "echo ${who}-usr1" USR1; echo ${who}-ready; while :; do sleep 0.1; done`;
    const read = async (eid: string, want: string) => {
      let text = '';
      while (!text.includes(want)) text += Buffer.from((await t.svc.ReadStdout({ container_id: cid, exec_id: eid, len: 4096 })).data).toString();
      return text;
    };
    await create(cid, ['sh', '-c', trapping('init')]);
    await t.svc.StartContainer({ container_id: cid });
    await t.svc.ExecProcess({ container_id: cid, exec_id: 'e1', process: processSpec(['sh', '-c', trapping('exec')]) });
    await read(cid, 'init-ready');
    await read('e1', 'exec-ready');
    await t.svc.SignalProcess({ container_id: cid, exec_id: cid, signal: 1 });
    expect(await read(cid, 'init-hup')).toBe('init-hup\n');
    // Sent after the HUP: had the HUP reached the exec, its line would come first.
    await t.svc.SignalProcess({ container_id: cid, exec_id: 'e1', signal: 10 });
    expect(await read('e1', 'exec-usr1')).toBe('exec-usr1\n');
    // '' is Kata's "all": the init, then every other process.
    await t.svc.SignalProcess({ container_id: cid, exec_id: '', signal: 1 });
    expect(await read('e1', 'exec-hup')).toBe('exec-hup\n');
    // The container's id is taken: no exec may carry it.
    const dup = await t.svc.ExecProcess({ container_id: cid, exec_id: cid, process: processSpec(['true']) }).catch((e) => e);
    expect(dup.code).toBe(Code.AlreadyExists);
    await t.svc.SignalProcess({ container_id: cid, exec_id: cid, signal: 9 });
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: cid })).status).toBe(137);
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('fails a stdin write that waits on a full FIFO once its process exits, instead of waiting forever', async () => {
    const cid = 'lc-stdin-full';
    await create(cid, ['sleep', '1000']);
    await t.svc.StartContainer({ container_id: cid });
    // Nobody reads: the FIFO fills (1 MiB) and a write waits for room.
    const chunk = Buffer.alloc(512 << 10, 'w');
    let waiting: Promise<unknown> | undefined;
    for (let i = 0; i < 16 && !waiting; i++) {
      const w = t.svc.WriteStdin({ container_id: cid, exec_id: '', data: chunk });
      const r = await Promise.race([w.then(() => 'done'), sleep(300).then(() => 'waiting')]);
      if (r === 'waiting') waiting = w.catch((e: { code: number }) => e.code);
    }
    expect(waiting).toBeDefined();
    await t.svc.SignalProcess({ container_id: cid, exec_id: '', signal: 9 });
    expect(await Promise.race([waiting, sleep(5000).then(() => 'still waiting')])).toBe(Code.FailedPrecondition);
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('pauses and resumes a container (crun state follows)', async () => {
    const cid = 'lc-pause';
    await create(cid, ['sleep', '1000']);
    await t.svc.StartContainer({ container_id: cid });
    await t.svc.PauseContainer({ container_id: cid });
    expect((await t.agent.sandbox.crun.state(cid))?.status).toBe('paused');
    const again = await t.svc.PauseContainer({ container_id: cid }).catch((e) => e);
    expect(again.code).toBe(Code.FailedPrecondition);
    await t.svc.ResumeContainer({ container_id: cid });
    expect((await t.agent.sandbox.crun.state(cid))?.status).toBe('running');
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('reports cgroup stats that move while the container works, and applies UpdateContainer', async () => {
    const cid = 'lc-stats';
    await create(cid, ['sh', '-c', 'while :; do :; done'], { memoryLimit: 256 << 20 });
    await t.svc.StartContainer({ container_id: cid });
    await sleep(300);
    const a = await t.svc.StatsContainer({ container_id: cid });
    const cpuA = a.cgroup_stats!.cpu_stats!.cpu_usage!.total_usage;
    expect(cpuA).toBeGreaterThan(0);
    // The busy loop's CPU time grows between two reads; how fast depends on the machine's load.
    let b = await t.svc.StatsContainer({ container_id: cid });
    for (const end = Date.now() + 20_000; b.cgroup_stats!.cpu_stats!.cpu_usage!.total_usage <= cpuA + 10e6 && Date.now() < end; ) {
      await sleep(200);
      b = await t.svc.StatsContainer({ container_id: cid });
    }
    expect(b.cgroup_stats!.cpu_stats!.cpu_usage!.total_usage - cpuA).toBeGreaterThan(10e6);
    expect(b.cgroup_stats!.memory_stats!.usage!.usage).toBeGreaterThan(0);
    expect(b.cgroup_stats!.memory_stats!.usage!.limit).toBe(256 << 20);
    expect(b.cgroup_stats!.pids_stats!.current).toBeGreaterThanOrEqual(1);

    await t.svc.UpdateContainer({ container_id: cid, resources: { Memory: { Limit: 128 << 20 }, Pids: { Limit: 50 } } });
    const c = await t.svc.StatsContainer({ container_id: cid });
    expect(c.cgroup_stats!.memory_stats!.usage!.limit).toBe(128 << 20);
    expect(c.cgroup_stats!.pids_stats!.limit).toBe(50);
    if (t.agent.sandbox.config.cgroups.mode !== 'v2') {
      const memDir = v1ControllerDir('/sys/fs/cgroup', 'memory')!;
      expect(fs.readFileSync(path.join(memDir, TEST_CGROUP_PARENT, cid, 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(128 << 20));
    }
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('RemoveContainer kills a running container, and a second remove finds nothing', async () => {
    const cid = 'lc-rm';
    await create(cid, ['sleep', '1000']);
    await t.svc.StartContainer({ container_id: cid });
    const t0 = Date.now();
    await t.svc.RemoveContainer({ container_id: cid, timeout: 10 });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(crunContainers(cid)).toEqual([]);
    const err = await t.svc.RemoveContainer({ container_id: cid }).catch((e) => e);
    expect(err.code).toBe(Code.NotFound);
    expect(err.message).toContain(cid);
  });

  it('removes a created container that never started', async () => {
    const cid = 'lc-created';
    await create(cid, ['true']);
    expect((await t.agent.sandbox.crun.state(cid))?.status).toBe('created');
    await t.svc.RemoveContainer({ container_id: cid });
    expect(crunContainers(cid)).toEqual([]);
  });

  it('serves many containers at once', async () => {
    const ids = Array.from({ length: 6 }, (_, i) => `lc-many-${i}`);
    const results = await Promise.all(ids.map((cid, i) => runToEnd(t, cid, ['sh', '-c', `echo ${i}; exit ${i}`])));
    results.forEach((r, i) => expect(r).toEqual({ stdout: `${i}\n`, stderr: '', status: i }));
  });
});
