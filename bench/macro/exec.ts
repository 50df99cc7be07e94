// Exec latency: `ctr task exec` of `true` into a running (sleeping) container, wall time per exec;
// runtimes take turns exec by exec.
import { fmt, record, recordError, type MacroContext } from './metrics.js';
import { removePod, startDetached, timedExec } from './pods.js';
import { summarize } from './stats.js';

export async function measureExec(ctx: MacroContext, runs: number): Promise<void> {
  const live: string[] = [];
  const ms: Record<string, number[]> = {};
  for (const rt of ctx.runtimes) {
    try {
      await startDetached(ctx.cd, rt, ctx.image, `exec-${rt}`, ['sleep', '3600']);
      // One exec not counted: the first one pays for things later ones find warm.
      const warm = await timedExec(ctx.cd, `exec-${rt}`, 'warm', ['true']);
      if (warm.code !== 0) throw new Error(`exec true: exit ${warm.code}: ${warm.stderr.trim()}`);
      live.push(rt);
      ms[rt] = [];
    } catch (err) {
      recordError(ctx, rt, 'exec', err);
    }
  }
  // Runtimes take turns exec by exec.
  for (let i = 0; i < runs; i++) {
    for (const rt of [...live]) {
      const r = await timedExec(ctx.cd, `exec-${rt}`, `e${i}`, ['true']);
      if (r.code === 0) ms[rt]!.push(r.ms);
      else {
        recordError(ctx, rt, 'exec', new Error(`exec true: exit ${r.code}: ${r.stderr.trim()}`));
        live.splice(live.indexOf(rt), 1);
      }
    }
  }
  for (const rt of live) {
    record(ctx, rt, 'exec', ms[rt]!);
    ctx.log(`macro: exec ${rt}: ${runs} execs, median ${fmt(summarize(ms[rt]!).median, 'ms')}`);
  }
  for (const rt of ctx.runtimes) await removePod(ctx.cd, rt, `exec-${rt}`);
}
