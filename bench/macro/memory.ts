// Host memory per pod: K idle pods (`sleep`), then the PSS (smaps_rollup) of every host process each
// pod adds: its shim and everything under it (runc: the container's processes; runsc: gofer, sandbox
// and its helpers; katats later: QEMU). PSS shares common pages among the pods, so 5 pods cost less
// each than 1.
import { fmt, record, recordError, type MacroContext } from './metrics.js';
import { podPss, removePod, startDetached } from './pods.js';

export async function measureMemory(ctx: MacroContext, counts: number[], settleMs: number): Promise<void> {
  for (const k of counts) {
    for (const rt of ctx.runtimes) {
      const ids = Array.from({ length: k }, (_, i) => `mem${k}-${rt}-${i}`);
      try {
        for (const id of ids) {
          await startDetached(ctx.cd, rt, ctx.image, id, ['sleep', '3600']);
        }
        await new Promise((r) => setTimeout(r, settleMs));
        const per = ids.map((id) => podPss(ctx.cd, id));
        const empty = per.findIndex((p) => p.kib === 0);
        if (empty >= 0) throw new Error(`no host process found for pod ${ids[empty]}`);
        const mib = per.map((p) => p.kib / 1024);
        record(ctx, rt, `memory.pods_${k}`, mib, `processes per pod: ${[...new Set(per.map((p) => p.processes.join('+')))].join(' | ')}`);
        ctx.log(`macro: memory ${rt} with ${k} pod(s): ${mib.map((m) => fmt(m, 'MiB')).join(', ')} (${per[0]!.processes.join('+')})`);
      } catch (err) {
        recordError(ctx, rt, `memory.pods_${k}`, err);
      } finally {
        for (const id of ids) await removePod(ctx.cd, rt, id);
      }
    }
  }
}
