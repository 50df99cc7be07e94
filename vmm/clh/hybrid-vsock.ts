// Kata's hybrid vsock, as cloud-hypervisor (and Firecracker) serve it: the VMM listens on a unix
// socket for the guest's vsock device; a host connection writes "CONNECT <port>\n" and gets
// "OK <host port>\n" once the guest side accepted, then the stream is the guest's. Dialer here,
// server side in vmm/chv/hybrid-vsock-server.ts.
import net from 'node:net';
import { sleep, TimeoutError } from '../../sys/timeout.js';

export const HVSOCK_TIMEOUT = 'KATATS_HVSOCK_TIMEOUT';
/** Kata's agent listens on vsock port 1024. */
export const AGENT_VSOCK_PORT = 1024;
/** The handshake answer is a short line; anything longer is not a VMM speaking this protocol. */
export const MAX_HANDSHAKE_LINE = 64;

export interface HybridVsockDialOptions {
  /** the whole dial, retries included */
  timeoutMs: number;
  /** pause between attempts (the guest's listener may not be up yet) */
  retryDelayMs?: number;
  signal?: AbortSignal;
}

export class HybridVsockError extends Error {
  override readonly name = 'HybridVsockError';
}

/** One attempt: connect, CONNECT, read the answer line; resolves with the socket past the line. */
function attempt(socketPath: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let line = '';
    let done = false;
    const finish = (err?: Error, rest?: Buffer) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.removeListener('data', onData);
      if (err) {
        sock.destroy();
        reject(err);
        return;
      }
      sock.pause();
      // Bytes the guest sent right after the OK line belong to the caller.
      if (rest?.length) sock.unshift(rest);
      resolve(sock);
    };
    const timer = setTimeout(() => finish(new TimeoutError(HVSOCK_TIMEOUT, `hybrid vsock handshake on ${socketPath} port ${port}`, timeoutMs)), timeoutMs);
    timer.unref();
    const onData = (d: Buffer) => {
      const nl = d.indexOf(0x0a);
      line += d.subarray(0, nl < 0 ? d.length : nl).toString('latin1');
      if (line.length > MAX_HANDSHAKE_LINE) return finish(new HybridVsockError(`hybrid vsock on ${socketPath}: answer line longer than ${MAX_HANDSHAKE_LINE} bytes`));
      if (nl < 0) return;
      if (!/^OK \d+$/.test(line)) return finish(new HybridVsockError(`hybrid vsock on ${socketPath}: port ${port} refused: ${JSON.stringify(line)}`));
      finish(undefined, d.subarray(nl + 1));
    };
    sock.on('data', onData);
    sock.once('error', (e) => finish(new HybridVsockError(`hybrid vsock on ${socketPath}: ${e.message}`)));
    sock.once('close', () => finish(new HybridVsockError(`hybrid vsock on ${socketPath}: closed before answering CONNECT ${port}`)));
    sock.once('connect', () => sock.write(`CONNECT ${port}\n`));
  });
}

/** Dials `port` in the guest through the VMM's hybrid vsock socket, retrying until `timeoutMs`. */
export async function dialHybridVsock(socketPath: string, port: number, o: HybridVsockDialOptions): Promise<net.Socket> {
  const deadline = Date.now() + o.timeoutMs;
  let last: Error | undefined;
  for (;;) {
    if (o.signal?.aborted) throw new HybridVsockError(`hybrid vsock dial of port ${port}: aborted${last ? ` (last: ${last.message})` : ''}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new TimeoutError(HVSOCK_TIMEOUT, `hybrid vsock dial of port ${port} on ${socketPath}${last ? ` (last: ${last.message})` : ''}`, o.timeoutMs);
    try {
      return await attempt(socketPath, port, left);
    } catch (e) {
      last = e as Error;
      if (e instanceof TimeoutError) throw e;
    }
    await sleep(Math.min(o.retryDelayMs ?? 100, Math.max(0, deadline - Date.now())));
  }
}
