// Pod start: `ctr run --rm IMAGE ID sh -c 'echo ready'`, timed to the first output byte and to exit.
// Runtimes take turns run by run, so that a slow moment of the machine hits all of them alike.
import { fmt, record, recordError, type MacroContext } from './metrics.js';
import { removePod, timedRunRm } from './pods.js';

export async function measureStart(ctx: MacroContext, runs: number): Promise<void> {
  const first: Record<string, number[]> = {};
  const exit: Record<string, number[]> = {};
  const failed = new Set<string>();
  for (let i = 0; i < runs; i++) {
    for (const rt of ctx.runtimes) {
      if (failed.has(rt)) continue;
      const id = `start-${rt}-${i}`;
      try {
        const r = await timedRunRm(ctx.cd, rt, ctx.image, id, ['sh', '-c', 'echo ready']);
        if (r.code !== 0 || r.stdout.trim() !== 'ready' || r.firstOutputMs === undefined) {
          throw new Error(`ctr run exit ${r.code}, stdout ${JSON.stringify(r.stdout.slice(0, 100))}: ${r.stderr.trim().slice(-400)}`);
        }
        (first[rt] ??= []).push(r.firstOutputMs);
        (exit[rt] ??= []).push(r.exitMs);
        ctx.log(`macro: start ${rt} ${i + 1}/${runs}: first output ${fmt(r.firstOutputMs, 'ms')}, exit ${fmt(r.exitMs, 'ms')}`);
      } catch (err) {
        failed.add(rt);
        recordError(ctx, rt, 'start', err);
        recordError(ctx, rt, 'start.exit', err);
        await removePod(ctx.cd, rt, id);
      }
    }
  }
  for (const rt of ctx.runtimes) {
    if (failed.has(rt)) continue;
    record(ctx, rt, 'start', first[rt]!);
    record(ctx, rt, 'start.exit', exit[rt]!);
  }
}
