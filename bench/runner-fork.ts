// Where a container process's runner comes from, measured on this host (local mode, real crun):
// spawned from node, forked by the keeper, and forked by the keeper with crun run from its sealed
// copy. Rounds taken in turns, so the three see the same load. Each round: CreateContainer,
// StartContainer, WaitProcess, RemoveContainer of `sh -c 'exit 0'`.
//   npx tsx bench/runner-fork.ts [--rounds 15]
import { parseArgs } from 'node:util';
import pino from 'pino';
import { Keeper } from '../agent/keeper.js';
import { containerSpec, runner, startAgent, type TestAgent } from '../test/agent/helpers.js';
import { round, summarize } from './macro/stats.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '15' } } });
const rounds = Number(values.rounds);
const log = pino({ level: 'silent' });

async function variant(name: string, keeper: Keeper | undefined): Promise<{ name: string; t: TestAgent; create: number[]; start: number[] }> {
  const t = await startAgent({ keeper, log });
  return { name, t, create: [], start: [] };
}

const withCopy = Keeper.start(runner(), log);
await withCopy.loadCrun('crun');
const variants = [await variant('spawned from node', undefined), await variant('forked by the keeper', Keeper.start(runner(), log)), await variant('keeper + sealed crun copy', withCopy)];
try {
  for (let i = -1; i < rounds; i++) {
    for (const v of variants) {
      const cid = `rfb-${i + 1}`;
      const t0 = performance.now();
      await v.t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(v.t.rootfs, ['sh', '-c', 'exit 0']) });
      const t1 = performance.now();
      await v.t.svc.StartContainer({ container_id: cid });
      const t2 = performance.now();
      await v.t.svc.WaitProcess({ container_id: cid, exec_id: '' });
      await v.t.svc.RemoveContainer({ container_id: cid });
      if (i < 0) continue;
      v.create.push(t1 - t0);
      v.start.push(t2 - t1);
    }
  }
} finally {
  for (const v of variants) {
    await v.t.close();
    v.t.agent.sandbox.config.keeper?.stop();
  }
}
console.log(`CreateContainer and StartContainer in local mode on this host, ${rounds} rounds in turns (ms)`);
console.log('variant                      create p50   p95   start p50   p95');
for (const v of variants) {
  const c = summarize(v.create);
  const s = summarize(v.start);
  console.log(`${v.name.padEnd(28)} ${String(round(c.median, 1)).padStart(10)} ${String(round(c.p95, 1)).padStart(5)} ${String(round(s.median, 1)).padStart(11)} ${String(round(s.p95, 1)).padStart(5)}`);
}
