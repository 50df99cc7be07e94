// The agent's logger: pino lines on stderr (the guest's log port) or in a file, never on the
// ttrpc channel. Children carry sandbox_id / container_id / exec_id.
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level?: string; file?: string } = {}): Logger {
  const level = opts.level ?? process.env.KATATS_LOG_LEVEL ?? 'info';
  const dest = opts.file ? pino.destination({ dest: opts.file, sync: false, mkdir: true }) : pino.destination({ fd: 2, sync: false });
  return pino({ level, base: { name: 'katats-agent', pid: process.pid } }, dest);
}
