// Container processes' runners forked by the keeper (the real binary, real crun): each runner's
// parent is the keeper, which reaps it, crun runs from the keeper's sealed copy of it, requests at
// the same time are each served, and a dead
// keeper leaves the agent spawning runners from node, logged, with the runners the keeper had
// started still reporting their processes' exit statuses.
import fs from 'node:fs';
import { Writable } from 'node:stream';
import pino from 'pino';
import { beforeAll, describe, expect, it } from 'vitest';
import { Keeper } from '../../agent/keeper.js';
import { containerSpec, processSpec, readAll, runner, sleep, useAgent, type TestAgent } from './helpers.js';

/** The parent pid and state of a live process, undefined once it is gone (reaped). */
function procStat(pid: number): { ppid: number; state: string } | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: f[0]!, ppid: Number(f[1]) };
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await sleep(50);
  }
}

describe('runners forked by the keeper', () => {
  const lines: string[] = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    }),
  );
  let keeper: Keeper;
  const agent = useAgent('rf-', () => {
    keeper = Keeper.start(runner(), log);
    return { keeper, log };
  });
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });
  const create = (cid: string, args: string[], o: Parameters<typeof containerSpec>[2] = {}) =>
    t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, args, o) });
  const runnerOf = (cid: string, eid = '') => t.agent.sandbox.container(cid).process(eid).runner!;

  it('forks the runner of a container and of its execs, at the same time, and reaps each one', async () => {
    await keeper.loadCrun('crun');
    // Two creates at once, then an exec into each at once, one of them with a terminal.
    await Promise.all([create('rf-a', ['sh', '-c', 'read x; echo "a got $x"; exit 4']), create('rf-b', ['sleep', '1000'])]);
    for (const cid of ['rf-a', 'rf-b']) {
      const r = runnerOf(cid);
      expect(r.via).toBe('keeper');
      expect(procStat(r.pid!)?.ppid).toBe(keeper.pid);
      expect(fs.readFileSync(`/proc/${r.pid}/cmdline`, 'utf8').split('\0').slice(1, 2)).toEqual(['run']);
    }
    // Created, not started: the init is still crun's child, running from the keeper's sealed copy
    // (crun did not make a copy of its own), which nobody can write.
    const init = t.agent.sandbox.container('rf-b').init.pid;
    expect(fs.readlinkSync(`/proc/${init}/exe`)).toBe('/memfd:crun (deleted)');
    expect(() => fs.writeFileSync(`/proc/${init}/exe`, 'x')).toThrow(/ETXTBSY|EPERM/);
    await Promise.all([t.svc.StartContainer({ container_id: 'rf-a' }), t.svc.StartContainer({ container_id: 'rf-b' })]);
    await Promise.all([
      t.svc.ExecProcess({ container_id: 'rf-b', exec_id: 'x1', process: processSpec(['sh', '-c', 'echo exec says hi; exit 5']) }),
      t.svc.ExecProcess({ container_id: 'rf-b', exec_id: 'x2', process: processSpec(['sh', '-c', 'read l; echo "tty $l"; exit 6'], { terminal: true }) }),
      t.svc.WriteStdin({ container_id: 'rf-a', exec_id: '', data: Buffer.from('one\n') }),
    ]);
    // x1 may be over (and its runner reaped) already; x2 waits for its input.
    expect(runnerOf('rf-b', 'x1').via).toBe('keeper');
    expect(procStat(runnerOf('rf-b', 'x2').pid!)?.ppid).toBe(keeper.pid);
    await t.svc.WriteStdin({ container_id: 'rf-b', exec_id: 'x2', data: Buffer.from('two\n') });
    const runners = [runnerOf('rf-a').pid!, runnerOf('rf-b', 'x1').pid!, runnerOf('rf-b', 'x2').pid!];
    const [a, x1, x2] = await Promise.all([readAll(t, 'rf-a'), readAll(t, 'rf-b', 'x1'), readAll(t, 'rf-b', 'x2')]);
    expect(a.toString()).toBe('a got one\n');
    expect(x1.toString()).toBe('exec says hi\n');
    expect(x2.toString()).toContain('tty two');
    expect((await t.svc.WaitProcess({ container_id: 'rf-a', exec_id: '' })).status).toBe(4);
    expect((await t.svc.WaitProcess({ container_id: 'rf-b', exec_id: 'x1' })).status).toBe(5);
    expect((await t.svc.WaitProcess({ container_id: 'rf-b', exec_id: 'x2' })).status).toBe(6);
    // Reaped by the keeper, not left as its zombies.
    await until('the ended runners are reaped', () => runners.every((p) => procStat(p) === undefined || procStat(p)!.ppid !== keeper.pid));
    // Killed through its runner: the signal's status comes back.
    await t.svc.SignalProcess({ container_id: 'rf-b', exec_id: '', signal: 9 });
    expect((await t.svc.WaitProcess({ container_id: 'rf-b', exec_id: '' })).status).toBe(137);
    await Promise.all(['rf-a', 'rf-b'].map((c) => t.svc.RemoveContainer({ container_id: c })));
    expect(keeper.alive).toBe(true);
  });

  it('a runner killed with control lines unread resets its channel, and the agent lives on', async () => {
    await create('rf-c', ['sleep', '1000']);
    await t.svc.StartContainer({ container_id: 'rf-c' });
    const proc = t.agent.sandbox.container('rf-c').init;
    const pid = runnerOf('rf-c').pid!;
    const initPid = proc.pid;
    // Stopped, the runner reads nothing; killed then, its socket goes with lines unread and the
    // agent's end reads ECONNRESET (readline re-emits it: unheard, it ended the agent).
    process.kill(pid, 'SIGSTOP');
    for (let i = 0; i < 2000; i++) proc.resize(24, 80);
    await sleep(200);
    process.kill(pid, 'SIGKILL');
    await until('the runner is gone', () => procStat(pid) === undefined || procStat(pid)!.state === 'Z');
    await sleep(500);
    expect(lines.some((l) => l.includes('runner channel error') && l.includes('ECONNRESET'))).toBe(true);
    // The agent serves on: another container runs and ends.
    await create('rf-d', ['sh', '-c', 'exit 3']);
    await t.svc.StartContainer({ container_id: 'rf-d' });
    expect((await t.svc.WaitProcess({ container_id: 'rf-d', exec_id: '' })).status).toBe(3);
    try {
      if (initPid) process.kill(initPid, 'SIGKILL');
    } catch {
      /* gone with its runner */
    }
    await t.svc.WaitProcess({ container_id: 'rf-c', exec_id: '' });
    await Promise.all(['rf-c', 'rf-d'].map((c) => t.svc.RemoveContainer({ container_id: c })));
    expect(keeper.alive).toBe(true);
  });

  it('spawns runners from node, and says so, once the keeper is dead; the runners it forked still report', async () => {
    await create('rf-old', ['sh', '-c', 'read x; exit 9']);
    await t.svc.StartContainer({ container_id: 'rf-old' });
    const old = runnerOf('rf-old');
    expect(old.via).toBe('keeper');
    process.kill(keeper.pid!, 'SIGKILL');
    await until('the keeper is seen dead', () => !keeper.alive);

    await create('rf-new', ['sh', '-c', 'echo from node; exit 2']);
    const r = runnerOf('rf-new');
    expect(r.via).toBe('node');
    expect(procStat(r.pid!)?.ppid).toBe(process.pid);
    expect(lines.some((l) => l.includes('the keeper is dead: spawning the runner from node'))).toBe(true);
    await t.svc.StartContainer({ container_id: 'rf-new' });
    expect(lines.some((l) => l.includes('the keeper is dead: spawning crun from node'))).toBe(true);
    expect((await readAll(t, 'rf-new')).toString()).toBe('from node\n');
    expect((await t.svc.WaitProcess({ container_id: 'rf-new', exec_id: '' })).status).toBe(2);

    // The orphaned runner still relays stdin and reports its process's exit status.
    await t.svc.WriteStdin({ container_id: 'rf-old', exec_id: '', data: Buffer.from('go\n') });
    expect((await t.svc.WaitProcess({ container_id: 'rf-old', exec_id: '' })).status).toBe(9);
    await Promise.all(['rf-old', 'rf-new'].map((c) => t.svc.RemoveContainer({ container_id: c })));
  });
});
