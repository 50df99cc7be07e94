// The daemon binds the pod's socket first thing, before it loads its own code (the Task service,
// codecs, VM drivers: most of its start-up), and tells `start` "ready" right then: containerd's
// dial and its first call queue on the socket while the rest loads, instead of containerd waiting
// for the whole load before it dials. Connections accepted meanwhile stay paused (nothing is read)
// until the ttrpc server takes them.
import net from 'node:net';
import { removeStaleSocket } from '../proto/ttrpc/socket-probe.js';
import { listenOwnerOnly } from '../sys/listen.js';

export interface EarlySocket {
  listener: net.Server;
  /** Connections accepted before the server took over, oldest first, not read from yet. */
  accepted: net.Socket[];
  /** Hands the listener and what it accepted to `serve`; later connections go there directly. */
  handOver(serve: (sock: net.Socket) => void): void;
}

/**
 * Listens on `path`, 0600 from bind. A live socket there is EADDRINUSE and stays untouched, a stale
 * one is replaced, anything else is EEXIST (as ttrpc's Server.listen).
 */
export async function bindShimSocket(path: string): Promise<EarlySocket> {
  await removeStaleSocket(path);
  const accepted: net.Socket[] = [];
  let serve: ((sock: net.Socket) => void) | undefined;
  const listener = net.createServer({ pauseOnConnect: true }, (sock) => {
    if (serve) serve(sock);
    else accepted.push(sock);
  });
  await listenOwnerOnly(listener, path);
  return {
    listener,
    accepted,
    handOver(s) {
      serve = s;
      for (const sock of accepted.splice(0)) s(sock);
    },
  };
}
