// Whether a unix socket has a server, and the removal of one that has none: what `start` needs
// before any ttrpc is spoken, kept apart from the server so that a shim's `start` does not load the
// codecs.
import net from 'node:net';
import fs from 'node:fs';

/** How long a probe of an existing socket may take; a server too busy to accept counts as live. */
export const SOCKET_PROBE_TIMEOUT_MS = 2000;

/** Whether something accepts connections on the unix socket at `path`. */
export function socketIsLive(path: string, timeoutMs = SOCKET_PROBE_TIMEOUT_MS): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(path);
    const done = (live: boolean) => {
      clearTimeout(t);
      c.destroy();
      resolve(live);
    };
    const t = setTimeout(() => done(true), timeoutMs);
    c.once('connect', () => done(true));
    c.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'EAGAIN'));
  });
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

/**
 * Removes the socket file at `path` only when nothing listens on it (ENOENT is fine). A live socket
 * is EADDRINUSE and a file that is not a socket EEXIST: neither is touched. Two processes racing to
 * replace one stale socket must be serialised by their caller (the shim's start lock does).
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) throw errnoError('EEXIST', `${path} exists and is not a socket: not replacing it`);
  if (await socketIsLive(path)) throw errnoError('EADDRINUSE', `${path}: a server is listening there already`);
  // Only the very file found stale: a socket bound there since the probe is someone else's.
  const now = fs.lstatSync(path, { throwIfNoEntry: false });
  if (!now) return;
  if (now.ino !== st.ino || now.dev !== st.dev) throw errnoError('EADDRINUSE', `${path}: replaced by another server while probing`);
  fs.unlinkSync(path);
}
