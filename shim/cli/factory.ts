// katats factory init|status|destroy, as kata-runtime factory: the VM template for the configured
// VM shape (shim/factory.ts).
import pino from 'pino';
import type { KatatsConfig } from '../config.js';
import { factoryDestroy, factoryInit, factoryStatus } from '../factory.js';

export async function factoryCommand(cfg: KatatsConfig, args: string[], usage: string): Promise<number> {
  const log = pino({ level: process.env.KATATS_LOG_LEVEL ?? 'warn' }, pino.destination(2));
  switch (args[0]) {
    case 'init': {
      if (!cfg.factory.enable_template) console.error('note: factory.enable_template is false in this configuration: pods will not use the template');
      const t0 = Date.now();
      const { template, built } = await factoryInit(cfg, log);
      console.log(`${built ? 'built' : 'exists'} template ${template.meta.key} at ${template.dir}${built ? ` in ${((Date.now() - t0) / 1000).toFixed(1)} s` : ''}`);
      return 0;
    }
    case 'status': {
      const s = await factoryStatus(cfg);
      if (args.includes('--json')) {
        console.log(JSON.stringify(s, null, 2));
        return 0;
      }
      console.log(`factory ${s.enabled ? 'enabled' : 'disabled'}; templates at ${s.root}${s.tmpfs ? ' (tmpfs)' : ''}`);
      console.log(`this configuration needs: ${s.wanted}`);
      for (const t of s.templates) console.log(`  ${t.key}  ${t.memoryMiB} MiB  built ${t.createdAt}  ready ${t.buildMs.ready} ms${t.matches ? '  (matches)' : ''}`);
      if (!s.templates.length) console.log('  no templates');
      return 0;
    }
    case 'destroy': {
      const removed = await factoryDestroy(cfg);
      console.log(removed.length ? `removed ${removed.join(', ')}` : 'no templates');
      return 0;
    }
    default:
      console.error(usage);
      return 2;
  }
}
