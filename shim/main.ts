// containerd-shim-katats-v2: the binary containerd runs for runtime io.containerd.katats.v2.
//   start  -> start (or find) the pod's shim daemon and print its address (containerd 1.6) or
//             bootstrap params {"version","address","protocol"} (1.7, 2.x: they pass MAX_SHIM_VERSION)
//   delete -> clean up after a task whose shim is gone, print a DeleteResponse
//   (none) -> the daemon: serve containerd.task.v2.Task and containerd.task.v3.Task on the socket
import { parseShimArgs } from './args.js';
import { startShim } from './start.js';
import { deleteShim } from './delete.js';
import { serveShim } from './daemon.js';

export const SHIM_VERSION = '0.1.0';

async function main(): Promise<void> {
  const args = parseShimArgs(process.argv.slice(2));
  if (args.version) {
    process.stdout.write(`containerd-shim-katats-v2:\n  Version: ${SHIM_VERSION}\n  Runtime: node ${process.version}\n`);
    return;
  }
  switch (args.action) {
    case 'start':
      process.stdout.write(await startShim(args));
      return;
    case 'delete':
      process.stdout.write(await deleteShim(args));
      return;
    case 'serve':
      await serveShim(args);
      return;
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`containerd-shim-katats-v2: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
