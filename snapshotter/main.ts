// `katats snapshotter serve`: the tardev snapshotter as its own long-running process.
//   katats snapshotter serve [--root DIR] [--address SOCK] [--containerd SOCK] [--log FILE] [--log-level LEVEL]
// Logs are pino JSON lines to --log (or stderr). SIGTERM/SIGINT: stop taking requests, let those
// under way finish (bounded), exit 0. Layer mounts stay: the next start reuses them.
import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { serveSnapshotter } from './server.js';

export const DEFAULTS = {
  root: '/var/lib/katats/snapshotter',
  address: '/run/katats/snapshotter.sock',
  containerd: '/run/containerd/containerd.sock',
};

function logger(file: string | undefined, level: string): Logger {
  if (!file) return pino({ level, base: { name: 'katats-snapshotter', pid: process.pid } }, pino.destination({ dest: 2, sync: true }));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  return pino({ level, base: { name: 'katats-snapshotter', pid: process.pid } }, pino.destination({ dest: file, sync: true, mkdir: true }));
}

export async function snapshotterCommand(args: string[], usage: string): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'serve') {
    console.error(usage);
    return 2;
  }
  const opts = new Map<string, string>();
  for (let i = 0; i < rest.length; i += 2) {
    const k = rest[i]!;
    const v = rest[i + 1];
    if (!['--root', '--address', '--containerd', '--log', '--log-level'].includes(k) || v === undefined) {
      console.error(usage);
      return 2;
    }
    opts.set(k, v);
  }
  const log = logger(opts.get('--log'), opts.get('--log-level') ?? 'info');
  // A crash's reason belongs in the log the operator reads, not only on a stderr nobody keeps.
  const fatal = (kind: string) => (err: unknown) => {
    log.fatal({ err }, kind);
    process.exit(70);
  };
  process.on('uncaughtException', fatal('uncaught exception'));
  process.on('unhandledRejection', fatal('unhandled rejection'));
  const running = await serveSnapshotter({
    root: path.resolve(opts.get('--root') ?? DEFAULTS.root),
    address: path.resolve(opts.get('--address') ?? DEFAULTS.address),
    containerd: opts.get('--containerd') === '' ? undefined : (opts.get('--containerd') ?? DEFAULTS.containerd),
    log,
  });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping');
      running.close().then(resolve, (err: unknown) => {
        log.error({ err }, 'stop failed');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
