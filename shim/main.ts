// containerd-shim-katats-v2: the binary containerd runs for runtime io.containerd.katats.v2.
//   start  -> start (or find) the pod's shim daemon and print its address (containerd 1.6) or
//             bootstrap params {"version","address","protocol"} (1.7, 2.x: they pass MAX_SHIM_VERSION)
//   delete -> clean up after a task whose shim is gone, print a DeleteResponse
//   (none) -> the daemon: bind the socket, say "ready", load, serve containerd.task.v2.Task and
//             containerd.task.v3.Task on the socket
// Each action loads only its own modules (each is a bundle of its own, see scripts/build.ts):
// `start` runs on every pod's start path and needs neither the codecs nor the VM drivers the
// daemon loads.
import { parseShimArgs } from './args.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bindShimSocket } from './daemon-socket.js';
import { DAEMON_BUNDLE, loadBundle } from './daemon-load.js';

export const SHIM_VERSION = '0.1.0';

async function main(): Promise<void> {
  const args = parseShimArgs(process.argv.slice(2));
  if (args.version) {
    process.stdout.write(`containerd-shim-katats-v2:\n  Version: ${SHIM_VERSION}\n  Runtime: node ${process.version}\n`);
    return;
  }
  switch (args.action) {
    case 'start':
      process.stdout.write(await (await import('./start.js')).startShim(args));
      return;
    case 'delete':
      process.stdout.write(await (await import('./delete.js')).deleteShim(args));
      return;
    case 'serve': {
      if (!args.socket) throw new Error('the daemon needs -socket (it is started by `start`)');
      // Bound before the daemon's code loads; "ready" lets `start` (and so containerd) go on.
      const early = await bindShimSocket(args.socket);
      process.stdout.write('ready\n');
      try {
        const { exports, codeCache } = loadBundle<typeof import('./daemon.js')>(path.join(path.dirname(fileURLToPath(import.meta.url)), DAEMON_BUNDLE));
        await exports.serveShim(args, early, { codeCache });
      } catch (e) {
        // Callers queued on the socket get it closed (their call fails) instead of waiting on
        // a daemon that will never serve; the file goes with it (ours: we bound it).
        early.listener.close();
        throw e;
      }
      return;
    }
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`containerd-shim-katats-v2: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
