// OOM events: a real OOM kill in a memory-limited container on this host's cgroup (v1 here:
// memory.oom_control + eventfd), and the v2 memory.events watcher against a file we drive.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, sleep, useAgent, type TestAgent } from './helpers.js';
import { watchOomV2 } from '../../agent/oom.js';
import { statsV2 } from '../../agent/cgroups.js';

describe('OOM events', () => {
  const agent = useAgent('oom-');
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });

  it('GetOOMEvent long-polls until a memory-limited container is OOM-killed, then names it', async () => {
    const cid = 'oom-hog';
    const pending = t.svc.GetOOMEvent({});
    let settled = false;
    void pending.then(() => (settled = true), () => (settled = true));
    // awk doubles a string until the 32 MiB limit kills it.
    await t.svc.CreateContainer({
      container_id: cid,
      OCI: containerSpec(t.rootfs, ['awk', 'BEGIN { s = "x"; while (1) s = s s }'], { memoryLimit: 32 << 20 }),
    });
    await sleep(200);
    expect(settled).toBe(false);
    await t.svc.StartContainer({ container_id: cid });
    const ev = await pending;
    expect(ev.container_id).toBe(cid);
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(137);
    const st = await t.svc.StatsContainer({ container_id: cid });
    expect(st.cgroup_stats!.memory_stats!.usage!.failcnt).toBeGreaterThan(0);
    await t.svc.RemoveContainer({ container_id: cid });
  }, 60_000);

  it('queues an OOM event that nobody is waiting for, and a wait past its deadline leaves no waiter behind', async () => {
    // ttrpc has no cancel message: the deadline (timeout_nano) is what tells the agent to stop waiting.
    const p = t.svc.GetOOMEvent({}, { timeoutMs: 100 });
    expect((await p.catch((e) => e)).code).toBe(Code.DeadlineExceeded);
    await new Promise((r) => setTimeout(r, 50));
    t.agent.sandbox.pushOom('oom-queued');
    expect((await t.svc.GetOOMEvent({})).container_id).toBe('oom-queued');
  });
});

describe('cgroup v2 OOM watcher and stats (driven through a file)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-v2-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const events = (oomKill: number) => `low 0\nhigh 0\nmax ${oomKill * 3}\noom ${oomKill}\noom_kill ${oomKill}\noom_group_kill 0\n`;

  it('reports each increase of memory.events oom_kill once', async () => {
    fs.writeFileSync(path.join(dir, 'memory.events'), events(0));
    const seen: number[] = [];
    const w = watchOomV2(dir, () => seen.push(Date.now()), pino({ level: 'silent' }), 100);
    await w.ready;
    fs.writeFileSync(path.join(dir, 'memory.events'), events(1));
    for (let i = 0; i < 50 && seen.length < 1; i++) await sleep(20);
    expect(seen.length).toBe(1);
    fs.writeFileSync(path.join(dir, 'memory.events'), events(3));
    for (let i = 0; i < 50 && seen.length < 3; i++) await sleep(20);
    await sleep(300);
    expect(seen.length).toBe(3);
    w.stop();
  });

  it('reads v2 stats files into CgroupStats', () => {
    fs.writeFileSync(path.join(dir, 'cpu.stat'), 'usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 7\n');
    fs.writeFileSync(path.join(dir, 'memory.current'), '4096\n');
    fs.writeFileSync(path.join(dir, 'memory.max'), '8192\n');
    fs.writeFileSync(path.join(dir, 'memory.stat'), 'anon 100\nfile 200\n');
    fs.writeFileSync(path.join(dir, 'pids.current'), '3\n');
    fs.writeFileSync(path.join(dir, 'pids.max'), 'max\n');
    fs.writeFileSync(path.join(dir, 'io.stat'), '8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n');
    const s = statsV2(dir);
    expect(s.cpu_stats!.cpu_usage!.total_usage).toBe(1_500_000);
    expect(s.cpu_stats!.cpu_usage!.usage_in_usermode).toBe(1_000_000);
    expect(s.cpu_stats!.throttling_data!.throttled_time).toBe(7000);
    expect(s.memory_stats!.usage!.usage).toBe(4096);
    expect(s.memory_stats!.usage!.limit).toBe(8192);
    expect(s.memory_stats!.usage!.failcnt).toBe(9);
    expect(s.memory_stats!.cache).toBe(200);
    expect(s.pids_stats).toEqual({ current: 3, limit: 0 });
    expect(s.blkio_stats!.io_service_bytes_recursive).toEqual([
      { major: 8, minor: 0, op: 'Read', value: 10 },
      { major: 8, minor: 0, op: 'Write', value: 20 },
    ]);
  });
});
