// Session boundaries on the agent channel (a virtio-serial port). The port is one byte stream for
// the VM's whole life: QEMU hands bytes the guest wrote for one host connection to the next one
// (a kernel write is at most 32 KiB, so an answer cut by the host leaving arrives as a tail), and
// a quick reconnect can reach the guest without it ever seeing the host leave. Plain ttrpc cannot
// find its first byte in such a stream, so a host that connects says hello first:
//
//   host  -> guest: a frame of type SESSION_FRAME_TYPE on stream 0: MAGIC, HELLO, a random nonce
//   guest -> host:  the same frame with ACK and the nonce, before any answer of the new session
//
// The agent starts a fresh session at a hello (dropping the old one's answers); the host drops
// every byte before its own ack. A ttrpc peer skips unknown frame types, and a host that sends no
// hello gets plain ttrpc as before. Stream 0 and type 0x4b are unused by ttrpc (1 request,
// 2 response, 3 data; clients use odd stream ids).
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { HEADER_LENGTH, encodeFrame } from './ttrpc/frame.js';
import { TimeoutError } from '../sys/timeout.js';

export const SESSION_FRAME_TYPE = 0x4b;
const MAGIC = Buffer.from('katats-session/1');
const HELLO = 1;
const ACK = 2;
const NONCE_LENGTH = 16;
export const SESSION_PAYLOAD_LENGTH = MAGIC.length + 1 + NONCE_LENGTH;
/** What a host may have to skip before its ack: the tail of an earlier answer and what followed it. */
const MAX_STALE_BYTES = 16 << 20;
export const AGENT_HANDSHAKE_TIMEOUT = 'KATATS_AGENT_HANDSHAKE_TIMEOUT';

function sessionFrame(kind: number, nonce: Buffer): Buffer {
  return encodeFrame(0, SESSION_FRAME_TYPE, 0, Buffer.concat([MAGIC, Buffer.from([kind]), nonce]));
}

export function helloFrame(nonce: Buffer): Buffer {
  return sessionFrame(HELLO, nonce);
}

export function ackFrame(nonce: Buffer): Buffer {
  return sessionFrame(ACK, nonce);
}

/** The nonce of a hello frame's payload, or undefined when it is not one. */
export function helloNonce(payload: Buffer): Buffer | undefined {
  if (payload.length !== SESSION_PAYLOAD_LENGTH || !payload.subarray(0, MAGIC.length).equals(MAGIC) || payload[MAGIC.length] !== HELLO) return undefined;
  return Buffer.from(payload.subarray(MAGIC.length + 1));
}

export type SessionPiece = { data: Buffer } | { hello: Buffer };

/**
 * Guest side: follows frame boundaries in the raw stream (headers only, payloads are passed
 * through uncopied) and picks out hello frames that sit at a boundary.
 */
export class SessionSplitter {
  /** A header, or a whole session frame, that straddles reads. */
  private pending: Buffer = Buffer.alloc(0);
  /** Payload bytes of the current ordinary frame still to pass through. */
  private remaining = 0;

  /** Back to a frame boundary: the host left, whatever it was sending is over. */
  reset(): void {
    this.pending = Buffer.alloc(0);
    this.remaining = 0;
  }

  split(chunk: Buffer): SessionPiece[] {
    const out: SessionPiece[] = [];
    let off = 0;
    let start = 0;
    const cut = (end: number) => {
      if (end > start) out.push({ data: chunk.subarray(start, end) });
    };
    while (off < chunk.length) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - off);
        this.remaining -= n;
        off += n;
        continue;
      }
      if (this.pending.length === 0 && chunk.length - off >= HEADER_LENGTH) {
        const length = chunk.readUInt32BE(off);
        if (!isSessionHeader(chunk, off)) {
          this.remaining = length;
          off += HEADER_LENGTH;
          continue;
        }
        if (chunk.length - off >= HEADER_LENGTH + length) {
          const nonce = helloNonce(chunk.subarray(off + HEADER_LENGTH, off + HEADER_LENGTH + length));
          if (nonce) {
            cut(off);
            out.push({ hello: nonce });
            start = off + HEADER_LENGTH + length;
          }
          off += HEADER_LENGTH + length;
          continue;
        }
      }
      // A header or a session frame cut by the read: held until it is whole.
      cut(off);
      const need = this.pending.length < HEADER_LENGTH || !isSessionHeader(this.pending, 0) ? HEADER_LENGTH : HEADER_LENGTH + SESSION_PAYLOAD_LENGTH;
      const take = Math.min(need - this.pending.length, chunk.length - off);
      this.pending = Buffer.concat([this.pending, chunk.subarray(off, off + take)]);
      off += take;
      start = off;
      if (this.pending.length < HEADER_LENGTH) continue;
      if (!isSessionHeader(this.pending, 0)) {
        out.push({ data: this.pending });
        this.remaining = this.pending.readUInt32BE(0);
        this.pending = Buffer.alloc(0);
        continue;
      }
      if (this.pending.length < HEADER_LENGTH + SESSION_PAYLOAD_LENGTH) continue;
      const nonce = helloNonce(this.pending.subarray(HEADER_LENGTH));
      out.push(nonce ? { hello: nonce } : { data: this.pending });
      this.pending = Buffer.alloc(0);
    }
    cut(off);
    return out;
  }
}

function isSessionHeader(b: Buffer, off: number): boolean {
  return b[off + 8] === SESSION_FRAME_TYPE && b.readUInt32BE(off + 4) === 0 && b.readUInt32BE(off) === SESSION_PAYLOAD_LENGTH;
}

export interface DialAgentOptions {
  /** How long the agent may take to answer the hello (it waits in QEMU while the guest boots). */
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Host side: connects to the agent channel's socket and says hello; resolves with the socket
 * positioned just after the agent's ack, every earlier byte dropped. The socket is returned
 * paused; a ttrpc Channel resumes it.
 */
export function dialAgentChannel(target: string | (() => Promise<net.Socket>), o: DialAgentOptions): Promise<net.Socket> {
  if (typeof target === 'function') {
    // A connector (hybrid vsock: the VMM's socket after its CONNECT handshake): connected already.
    return target().then((sock) => sayHello(sock, 'the agent channel', o, true));
  }
  return sayHello(net.connect(target), target, o, false);
}

function sayHello(sock: net.Socket, socketPath: string, o: DialAgentOptions, connected: boolean): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const nonce = randomBytes(NONCE_LENGTH);
    const ack = ackFrame(nonce);
    let held: Buffer = Buffer.alloc(0);
    let skipped = 0;
    let settled = false;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      sock.off('data', onData);
      sock.off('error', onError);
      sock.off('close', onClose);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve(sock);
    };
    const onAbort = () => finish(new Error(`agent channel ${socketPath}: handshake aborted: ${String(o.signal?.reason ?? '')}`));
    const onError = (e: Error) => finish(e);
    const onClose = () => finish(new Error(`agent channel ${socketPath}: closed before the agent answered the hello`));
    const onData = (d: Buffer) => {
      held = held.length ? Buffer.concat([held, d]) : d;
      const at = held.indexOf(ack);
      if (at >= 0) {
        const rest = held.subarray(at + ack.length);
        sock.pause();
        if (rest.length) sock.unshift(rest);
        finish();
        return;
      }
      // Keep only what could still be the start of the ack.
      const keep = Math.min(held.length, ack.length - 1);
      skipped += held.length - keep;
      held = Buffer.from(held.subarray(held.length - keep));
      if (skipped > MAX_STALE_BYTES) finish(new Error(`agent channel ${socketPath}: ${skipped} bytes before the agent's answer to the hello`));
    };
    const timer = setTimeout(() => finish(new TimeoutError(AGENT_HANDSHAKE_TIMEOUT, `agent channel ${socketPath} answering the session hello`, o.timeoutMs)), o.timeoutMs);
    timer.unref();
    if (o.signal?.aborted) {
      onAbort();
      return;
    }
    o.signal?.addEventListener('abort', onAbort, { once: true });
    sock.on('error', onError);
    sock.on('close', onClose);
    const hello = () => {
      sock.on('data', onData);
      sock.write(helloFrame(nonce));
      sock.resume();
    };
    if (connected) hello();
    else sock.once('connect', hello);
  });
}
