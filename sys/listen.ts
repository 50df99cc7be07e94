// A unix socket that is the owner's alone from the moment it exists: bind() creates the file with
// the process umask, synchronously inside listen(), so a umask of 0177 for that one call makes it
// 0600 from birth (a chmod after would leave a window).
import type net from 'node:net';

export function listenOwnerOnly(server: net.Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const umask = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
}
