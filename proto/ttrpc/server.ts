// A ttrpc server: unary methods over any duplex byte stream (unix socket, virtio-serial port,
// hybrid vsock). Bad input costs the sender one error response or its own connection, never the
// process or another client.
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Channel, DEFAULT_HIGH_WATER_BYTES } from './channel.js';
import { type Frame, type FrameHeader, FrameFlag, FrameType, DEFAULT_MAX_MESSAGE_SIZE } from './frame.js';
import { type Metadata, decodeRequest, encodeResponse } from './envelope.js';
import { Code, TtrpcError, toStatus } from './status.js';
import { silentLogger } from './log.js';
import { removeStaleSocket } from './socket-probe.js';
import { listenOwnerOnly } from '../../sys/listen.js';

export interface CallContext {
  readonly service: string;
  readonly method: string;
  readonly metadata: Metadata;
  /** Absolute deadline in ms since the epoch, when the caller sent timeout_nano. */
  readonly deadline: number | undefined;
  /** Aborted when the deadline passes or the connection goes away. */
  readonly signal: AbortSignal;
  readonly streamId: number;
}

export type RawHandler = (payload: Uint8Array, ctx: CallContext) => Promise<Uint8Array> | Uint8Array;

/** Runs before every handler (the agent's policy check hooks in here); throwing denies the call. */
export type Interceptor = (ctx: CallContext, payload: Uint8Array) => Promise<void> | void;

export interface ServerOptions {
  maxMessageSize?: number;
  /**
   * Calls in flight on one connection beyond which new ones are refused with ResourceExhausted. A
   * call counts until its handler has settled, even when its deadline was answered before that.
   */
  maxConcurrentCalls?: number;
  /** Unanswered output on one connection from which no more requests are read (default 1 MiB). */
  outputHighWaterBytes?: number;
  /** Unanswered output on one connection beyond which it is dropped (default 4 x maxMessageSize). */
  maxOutputBytes?: number;
  logger?: Logger;
  interceptor?: Interceptor;
}

interface ActiveCall {
  name: string;
  // Created on first use of ctx.signal: most handlers never look, and it costs a few µs per call.
  abort: AbortController | undefined;
  abortReason: unknown;
  timer: NodeJS.Timeout | undefined;
  /** A response (result, error or DeadlineExceeded) has been sent, or the connection is gone. */
  answered: boolean;
  /** The connection closed while the handler still ran: it counts against the server, not a connection. */
  orphaned: boolean;
}

export class Server {
  private readonly methods = new Map<string, Map<string, RawHandler>>();
  private readonly connections = new Set<ServerConnection>();
  private readonly listeners = new Set<net.Server>();
  readonly maxMessageSize: number;
  readonly maxConcurrentCalls: number;
  readonly outputHighWaterBytes: number;
  readonly maxOutputBytes: number;
  readonly log: Logger;
  interceptor: Interceptor | undefined;
  private closing = false;
  /**
   * Handlers still running after their connection closed. They count against every connection's
   * limit, so closing and redialing cannot pile up handlers that ignore their abort signal.
   */
  orphanedHandlers = 0;

  constructor(opts: ServerOptions = {}) {
    this.maxMessageSize = opts.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    this.maxConcurrentCalls = opts.maxConcurrentCalls ?? 1024;
    this.outputHighWaterBytes = opts.outputHighWaterBytes ?? DEFAULT_HIGH_WATER_BYTES;
    this.maxOutputBytes = opts.maxOutputBytes ?? 4 * this.maxMessageSize;
    this.log = opts.logger ?? silentLogger;
    this.interceptor = opts.interceptor;
  }

  /** Registers raw handlers (payload bytes in, bytes out) for one service. */
  registerRaw(service: string, handlers: Record<string, RawHandler>): void {
    let m = this.methods.get(service);
    if (!m) this.methods.set(service, (m = new Map()));
    for (const [name, h] of Object.entries(handlers)) m.set(name, h);
  }

  lookup(service: string, method: string): RawHandler | TtrpcError {
    const m = this.methods.get(service);
    if (!m) return new TtrpcError(Code.Unimplemented, `unknown service ${service} (method ${method})`);
    const h = m.get(method);
    if (!h) return new TtrpcError(Code.Unimplemented, `unknown method ${service}/${method}`);
    return h;
  }

  get services(): string[] {
    return [...this.methods.keys()];
  }

  /** Serves one already-connected stream, e.g. a virtio-serial port opened as a file. */
  serve(stream: Duplex): ServerConnection {
    const c = new ServerConnection(this, stream, () => this.connections.delete(c));
    this.connections.add(c);
    if (this.closing) c.close();
    return c;
  }

  /**
   * Listens on a unix socket path, created 0600. A live socket there (something accepts
   * connections) is never touched: EADDRINUSE. A stale one (its server died without unlinking
   * it) is replaced; anything that is not a socket is refused (EEXIST).
   */
  async listen(path: string): Promise<net.Server> {
    await removeStaleSocket(path);
    const srv = net.createServer((sock) => this.serve(sock));
    await listenOwnerOnly(srv, path);
    srv.on('error', (e) => this.log.error({ err: e, path }, 'ttrpc listener error'));
    this.listeners.add(srv);
    return srv;
  }

  /**
   * Makes a listener bound elsewhere this server's own, closed with it (the shim's daemon binds its
   * socket before it loads this code); its connections come in through serve().
   */
  adopt(listener: net.Server): void {
    listener.on('error', (e) => this.log.error({ err: e }, 'ttrpc listener error'));
    this.listeners.add(listener);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** The connections being served (diagnostics, tests). */
  get liveConnections(): ServerConnection[] {
    return [...this.connections];
  }

  /**
   * Stops listening and closes connections. Graceful (default) lets calls in flight finish and
   * send their responses first, up to `graceMs`.
   */
  async close(opts: { graceful?: boolean; graceMs?: number } = {}): Promise<void> {
    this.closing = true;
    const graceful = opts.graceful ?? true;
    // net.Server.close() reports only once every connection is gone, so stop accepting first
    // and wait for it last.
    const stopped = [...this.listeners].map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
    this.listeners.clear();
    const conns = [...this.connections];
    if (graceful) {
      const deadline = Date.now() + (opts.graceMs ?? 5000);
      await Promise.all(conns.map((c) => c.drain(deadline)));
    }
    for (const c of conns) c.close(graceful);
    await Promise.all(stopped);
  }
}

export class ServerConnection {
  private readonly channel: Channel;
  /** Calls whose handler has not settled yet, answered or not (what maxConcurrentCalls counts). */
  private readonly active = new Map<number, ActiveCall>();
  /** Calls not answered yet (what a graceful close waits for). */
  private unanswered = 0;
  private drained: (() => void) | undefined;
  /** Requests read while the peer had not taken our earlier answers; served once it has. */
  private parked: Frame[] = [];

  constructor(
    private readonly server: Server,
    stream: Duplex,
    private readonly onClosed: () => void,
  ) {
    this.channel = new Channel(
      stream,
      {
        frame: (f) => this.onFrame(f),
        oversized: (h) => this.onOversized(h),
        closed: (err) => this.onChannelClosed(err),
      },
      {
        maxMessageSize: server.maxMessageSize,
        highWaterBytes: server.outputHighWaterBytes,
        maxBufferedBytes: server.maxOutputBytes,
        pauseInputWhenCongested: true,
      },
    );
  }

  /** Handlers of this connection that have not settled. */
  get activeCalls(): number {
    return this.active.size;
  }

  /** Whether reading requests is paused because the peer does not take its answers. */
  get inputPaused(): boolean {
    return this.channel.inputPaused;
  }

  get bufferedOutputBytes(): number {
    return this.channel.bufferedBytes;
  }

  close(graceful = true): void {
    if (graceful) this.channel.end();
    else this.channel.destroy();
  }

  drain(deadline: number): Promise<void> {
    if (this.unanswered === 0 || this.channel.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      this.drained = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private fail(streamId: number, code: number, message: string): void {
    this.channel.send(
      streamId,
      FrameType.Response,
      0,
      encodeResponse({ status: { code, message, details: [] }, payload: new Uint8Array(0) }),
    );
  }

  private onOversized(h: FrameHeader): void {
    this.server.log.warn({ streamId: h.streamId, length: h.length }, 'ttrpc: oversized message refused');
    this.fail(
      h.streamId,
      Code.ResourceExhausted,
      `message length ${h.length} exceeds maximum message size of ${this.server.maxMessageSize}`,
    );
  }

  private onFrame(f: Frame): void {
    if (this.parked.length > 0 || this.channel.full()) {
      // One read can carry hundreds of requests; their answers are produced only as fast as the
      // peer takes them, so what a connection makes us hold stays near the high-water mark.
      this.parked.push(f);
      if (this.parked.length === 1) this.channel.whenWritable(() => this.serveParked());
      return;
    }
    this.dispatch(f);
  }

  private serveParked(): void {
    while (this.parked.length > 0 && !this.channel.closed) {
      if (this.channel.full()) {
        this.channel.whenWritable(() => this.serveParked());
        return;
      }
      this.dispatch(this.parked.shift()!);
    }
    if (this.channel.closed) this.parked = [];
  }

  private dispatch(f: Frame): void {
    if (f.type === FrameType.Data) {
      // Streaming (ttrpc >= 1.2) is not offered by any of our services: refuse the stream.
      this.fail(f.streamId, Code.Unimplemented, `stream ${f.streamId}: ttrpc data frames are not supported by this server`);
      return;
    }
    if (f.type !== FrameType.Request) {
      // Unknown frame types are skipped, as Go's ttrpc does, so newer peers keep working.
      this.server.log.debug({ type: f.type, streamId: f.streamId }, 'ttrpc: ignoring unknown frame type');
      return;
    }
    if (f.streamId % 2 !== 1) {
      this.fail(f.streamId, Code.InvalidArgument, `stream id ${f.streamId} must be odd for client-initiated streams`);
      return;
    }
    if (this.active.has(f.streamId)) {
      this.fail(f.streamId, Code.InvalidArgument, `stream id ${f.streamId} is already in use`);
      return;
    }
    let req;
    try {
      req = decodeRequest(f.payload);
    } catch (e) {
      this.fail(f.streamId, Code.InvalidArgument, `unmarshal request error: ${(e as Error).message}`);
      return;
    }
    if (f.flags & FrameFlag.RemoteOpen) {
      this.fail(f.streamId, Code.Unimplemented, `${req.service}/${req.method}: streaming calls are not supported`);
      return;
    }
    if (this.active.size + this.server.orphanedHandlers >= this.server.maxConcurrentCalls) {
      this.fail(
        f.streamId,
        Code.ResourceExhausted,
        `${req.service}/${req.method}: too many calls in flight on this connection (limit ${this.server.maxConcurrentCalls})`,
      );
      return;
    }
    const handler = this.server.lookup(req.service, req.method);
    if (handler instanceof TtrpcError) {
      this.fail(f.streamId, handler.code, handler.message);
      return;
    }

    const call: ActiveCall = {
      name: `${req.service}/${req.method}`,
      abort: undefined,
      abortReason: undefined,
      timer: undefined,
      answered: false,
      orphaned: false,
    };
    this.active.set(f.streamId, call);
    this.unanswered++;
    let deadline: number | undefined;
    if (req.timeoutNano > 0) {
      const ms = req.timeoutNano / 1e6;
      deadline = Date.now() + ms;
      call.timer = setTimeout(() => {
        const err = new TtrpcError(Code.DeadlineExceeded, `${req.service}/${req.method}: deadline exceeded`);
        abortCall(call, err);
        // Answered now; the handler keeps its place in `active` until it has really stopped.
        this.answer(f.streamId, call, err, undefined);
      }, Math.min(Math.ceil(ms), 2 ** 31 - 1));
    }
    const ctx: CallContext = {
      service: req.service,
      method: req.method,
      metadata: req.metadata,
      deadline,
      get signal(): AbortSignal {
        if (!call.abort) {
          call.abort = new AbortController();
          if (call.abortReason !== undefined) call.abort.abort(call.abortReason);
        }
        return call.abort.signal;
      },
      streamId: f.streamId,
    };
    const payload = req.payload;
    const interceptor = this.server.interceptor;
    let out: Promise<Uint8Array> | Uint8Array;
    try {
      const gate = interceptor?.(ctx, payload);
      out = isPromise(gate) ? gate.then(() => handler(payload, ctx)) : handler(payload, ctx);
    } catch (err) {
      this.settle(f.streamId, call, err, undefined);
      return;
    }
    // A synchronous answer is queued at once, so the next request of the same read already sees
    // whether the peer is keeping up.
    if (isPromise(out)) {
      out.then(
        (res) => this.settle(f.streamId, call, undefined, res),
        (err: unknown) => this.settle(f.streamId, call, err, undefined),
      );
    } else this.settle(f.streamId, call, undefined, out);
  }

  /** The handler has stopped: answer if nobody has yet, and free its place. */
  private settle(streamId: number, call: ActiveCall, err: unknown, out: Uint8Array | undefined): void {
    if (call.orphaned) {
      this.server.orphanedHandlers--;
      return;
    }
    if (this.active.get(streamId) === call) this.active.delete(streamId);
    this.answer(streamId, call, err, out);
  }

  private answer(streamId: number, call: ActiveCall, err: unknown, out: Uint8Array | undefined): void {
    if (call.answered) return;
    call.answered = true;
    if (call.timer) clearTimeout(call.timer);
    this.unanswered--;
    if (err !== undefined) {
      const st = toStatus(err);
      if (st.code === Code.Unknown) {
        this.server.log.warn({ streamId, method: call.name, err }, 'ttrpc handler failed');
      }
      this.channel.send(streamId, FrameType.Response, 0, encodeResponse({ status: st, payload: new Uint8Array(0) }));
    } else {
      const msg = encodeResponse({ status: null, payload: out ?? new Uint8Array(0) });
      if (msg.length > this.server.maxMessageSize) {
        this.fail(
          streamId,
          Code.ResourceExhausted,
          `${call.name}: response of ${msg.length} bytes exceeds maximum message size of ${this.server.maxMessageSize}`,
        );
      } else {
        this.channel.send(streamId, FrameType.Response, 0, msg);
      }
    }
    if (this.unanswered === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  private onChannelClosed(err: Error | undefined): void {
    if (err) this.server.log[err.name === 'OutputOverflowError' ? 'warn' : 'debug']({ err }, 'ttrpc connection closed with error');
    for (const call of this.active.values()) {
      call.answered = true;
      call.orphaned = true;
      this.server.orphanedHandlers++;
      if (call.timer) clearTimeout(call.timer);
      abortCall(call, new TtrpcError(Code.Canceled, 'connection closed'));
    }
    this.active.clear();
    this.unanswered = 0;
    this.parked = [];
    if (this.drained) this.drained();
    this.onClosed();
  }
}

function isPromise<T>(v: Promise<T> | unknown): v is Promise<T> {
  return typeof (v as { then?: unknown } | undefined)?.then === 'function';
}

function abortCall(call: ActiveCall, reason: unknown): void {
  if (call.abortReason !== undefined) return;
  call.abortReason = reason;
  call.abort?.abort(reason);
}
