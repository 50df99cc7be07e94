// katats-chv's side of hybrid vsock: listens on the VM's vsock unix socket, reads "CONNECT <port>\n"
// (bounded line, named time limit), asks `connectGuest` for a stream to that guest port and answers
// "OK <host port>\n" before relaying bytes both ways. Under QEMU the agent's port is the
// virtio-serial channel's socket; ports nothing serves are refused by closing, as CH does.
import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import { MAX_HANDSHAKE_LINE } from '../clh/hybrid-vsock.js';

export const HANDSHAKE_TIMEOUT_MS = 10_000;

export interface HybridVsockServer {
  close(): Promise<void>;
}

export type GuestConnector = (port: number) => Promise<net.Socket | undefined>;

export async function serveHybridVsock(socketPath: string, connectGuest: GuestConnector, log: Logger): Promise<HybridVsockServer> {
  let hostPort = 1_000_000_000;
  const conns = new Set<net.Socket>();
  const server = net.createServer((c) => {
    conns.add(c);
    c.on('close', () => conns.delete(c));
    c.on('error', () => c.destroy());
    let line = '';
    const timer = setTimeout(() => c.destroy(), HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    const onData = (d: Buffer) => {
      const nl = d.indexOf(0x0a);
      line += d.subarray(0, nl < 0 ? d.length : nl).toString('latin1');
      if (line.length > MAX_HANDSHAKE_LINE) return c.destroy();
      if (nl < 0) return;
      c.removeListener('data', onData);
      c.pause();
      clearTimeout(timer);
      const rest = d.subarray(nl + 1);
      const m = /^CONNECT (\d{1,10})$/.exec(line);
      if (!m) {
        log.warn({ line: line.slice(0, 64) }, 'hybrid vsock: not a CONNECT line');
        return c.destroy();
      }
      const port = Number(m[1]);
      connectGuest(port)
        .then((g) => {
          if (!g) {
            log.debug({ port }, 'hybrid vsock: nothing listens on this guest port');
            return c.destroy();
          }
          if (c.destroyed) return g.destroy();
          conns.add(g);
          g.on('close', () => {
            conns.delete(g);
            c.destroy();
          });
          g.on('error', () => g.destroy());
          c.on('close', () => g.destroy());
          c.write(`OK ${hostPort++}\n`);
          if (rest.length) g.write(rest);
          c.pipe(g);
          g.pipe(c);
          c.resume();
        })
        .catch((err: unknown) => {
          log.warn({ err, port }, 'hybrid vsock: reaching the guest port failed');
          c.destroy();
        });
    };
    c.on('data', onData);
  });
  fs.rmSync(socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(socketPath, 0o600);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy();
        server.close(() => resolve());
      }),
  };
}
