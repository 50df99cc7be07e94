// Density: K pods started at once (K concurrent `ctr run -d ... sleep`), timed until every one of
// them has started; then removed (not timed). Repeated, runtimes taking turns; each repetition gives
// one sample.
import { fmt, record, recordError, type MacroContext } from './metrics.js';
import { removePod, startDetached } from './pods.js';

export async function measureDensity(ctx: MacroContext, counts: number[], repetitions: number): Promise<void> {
  for (const k of counts) {
    const samples: Record<string, number[]> = Object.fromEntries(ctx.runtimes.map((rt) => [rt, []]));
    const failed = new Set<string>();
    for (let rep = 0; rep < repetitions; rep++) {
      for (const rt of ctx.runtimes) {
        if (failed.has(rt)) continue;
        const ids = Array.from({ length: k }, (_, i) => `dens${k}-${rt}-${rep}-${i}`);
        const t0 = performance.now();
        const results = await Promise.allSettled(ids.map((id) => startDetached(ctx.cd, rt, ctx.image, id, ['sleep', '3600'])));
        const ms = performance.now() - t0;
        for (const id of ids) await removePod(ctx.cd, rt, id);
        const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (bad) {
          failed.add(rt);
          recordError(ctx, rt, `density.k${k}`, bad.reason);
          continue;
        }
        samples[rt]!.push(ms);
        ctx.log(`macro: density ${rt} K=${k} ${rep + 1}/${repetitions}: all started in ${fmt(ms, 'ms')}`);
      }
    }
    for (const rt of ctx.runtimes) if (!failed.has(rt)) record(ctx, rt, `density.k${k}`, samples[rt]!);
  }
}
