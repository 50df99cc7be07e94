// katats monitor [--listen HOST:PORT] [--config FILE]: the Prometheus endpoint for this node's
// katats pods (shim/monitor/). Runs until SIGTERM or SIGINT.
import pino from 'pino';
import type { KatatsConfig } from '../config.js';
import { monitorApp, parseListen } from '../monitor/server.js';

/** kata-monitor's default port, on loopback: metrics name every pod on the node. */
export const DEFAULT_LISTEN = '127.0.0.1:8090';

export async function monitorCommand(cfg: KatatsConfig, args: string[], usage: string): Promise<number> {
  const i = args.indexOf('--listen');
  if (i >= 0 && !args[i + 1]) {
    console.error(usage);
    return 2;
  }
  const { host, port } = parseListen(i >= 0 ? args[i + 1]! : DEFAULT_LISTEN);
  const log = pino({ level: process.env.KATATS_LOG_LEVEL ?? 'info' }, pino.destination(2));
  const app = monitorApp({ stateDir: cfg.runtime.state_dir, log });
  const address = await app.listen({ host, port });
  // The one line on stdout: where to scrape (the port, when 0 asked the kernel for one).
  console.log(`katats monitor listening on ${address}/metrics (shims under ${cfg.runtime.state_dir})`);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await app.close();
  return 0;
}
