// A pino logger writing JSON lines to a file (never to stdout: test and bench output stay readable).
import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

export interface FileLogger {
  logger: Logger;
  /** Flushes and closes the file. */
  close(): void;
}

/** A logger appending to `file` (its directory is created); writes are synchronous, so nothing is lost on exit. */
export function fileLogger(file: string, name = 'harness', level = 'debug'): FileLogger {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const dest = pino.destination({ dest: file, sync: true, mkdir: true });
  const logger = pino({ name, level }, dest);
  return {
    logger,
    close: () => {
      try {
        dest.flushSync();
      } catch {
        /* nothing buffered */
      }
      dest.end();
    },
  };
}
