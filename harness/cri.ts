// A Kubernetes CRI client (runtime.v1) for containerd's CRI plugin: gRPC over containerd's unix
// socket with @grpc/grpc-js, messages encoded with the project's own registry (proto/schema/cri),
// one typed method per rpc. Every call has a deadline; a failure is a CriError that names the rpc,
// the gRPC status and containerd's message.
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import type { Services } from '../proto/gen/types.js';
import { root, type Init } from '../proto/registry.js';

export type CriServiceName = 'runtime.v1.RuntimeService' | 'runtime.v1.ImageService';
type Methods<S extends CriServiceName> = Services[S];
type Req<S extends CriServiceName, M extends keyof Methods<S>> = Methods<S>[M] extends [infer Q, unknown, boolean] ? Q : never;
type Res<S extends CriServiceName, M extends keyof Methods<S>> = Methods<S>[M] extends [unknown, infer R, boolean] ? R : never;

export interface CriCallOptions {
  /** Deadline of this call (default: the client's defaultTimeoutMs). */
  timeoutMs?: number;
}

export type CriServiceClient<S extends CriServiceName> = {
  [M in keyof Methods<S>]: (req: Init<Req<S, M>>, opts?: CriCallOptions) => Promise<Res<S, M>>;
};

export class CriError extends Error {
  constructor(
    /** `runtime.v1.RuntimeService/CreateContainer` */
    readonly rpc: string,
    readonly code: grpc.status,
    /** containerd's own words. */
    readonly details: string,
  ) {
    super(`${rpc}: ${grpc.status[code] ?? code}: ${details}`);
    this.name = 'CriError';
  }
}

export interface CriClientOptions {
  /** Deadline for calls that set none (default 120 s: a katats pod boots a VM inside RunPodSandbox). */
  defaultTimeoutMs?: number;
}

export class CriClient {
  readonly runtime: CriServiceClient<'runtime.v1.RuntimeService'>;
  readonly image: CriServiceClient<'runtime.v1.ImageService'>;
  private readonly client: grpc.Client;
  private readonly defaultTimeoutMs: number;

  /** `socket`: containerd's gRPC socket path (or a `unix://` address). */
  constructor(readonly socket: string, opts: CriClientOptions = {}) {
    const target = socket.startsWith('unix:') ? socket : `unix://${socket}`;
    // containerd answers on a unix socket whatever authority is sent; "localhost" keeps grpc-js from
    // deriving one from the socket path.
    this.client = new grpc.Client(target, grpc.credentials.createInsecure(), {
      'grpc.default_authority': 'localhost',
      // ExecSync output can be large (containerd caps it at 16 MiB per stream).
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 120_000;
    this.runtime = this.stub('runtime.v1.RuntimeService');
    this.image = this.stub('runtime.v1.ImageService');
  }

  private stub<S extends CriServiceName>(name: S): CriServiceClient<S> {
    const svc: protobuf.Service = root.lookupService(name);
    const out: Record<string, (req: unknown, opts?: CriCallOptions) => Promise<unknown>> = {};
    for (const m of svc.methodsArray) {
      const reqType = m.resolvedRequestType!;
      const resType = m.resolvedResponseType!;
      const rpc = `${name}/${m.name}`;
      out[m.name] = (req, opts) =>
        new Promise((resolve, reject) => {
          let payload: Buffer;
          try {
            payload = Buffer.from(reqType.encode(reqType.fromObject((req ?? {}) as Record<string, unknown>)).finish());
          } catch (e) {
            reject(new CriError(rpc, grpc.status.INVALID_ARGUMENT, `cannot encode ${reqType.name}: ${(e as Error).message}`));
            return;
          }
          const deadline = new Date(Date.now() + (opts?.timeoutMs ?? this.defaultTimeoutMs));
          this.client.makeUnaryRequest(
            `/${rpc}`,
            (b: Buffer) => b,
            (b: Buffer) => resType.decode(b),
            payload,
            new grpc.Metadata(),
            { deadline },
            (err, res) => {
              if (err) reject(new CriError(rpc, err.code ?? grpc.status.UNKNOWN, err.details || err.message));
              else resolve(res);
            },
          );
        });
    }
    return out as CriServiceClient<S>;
  }

  /** Calls Version until containerd's CRI answers (the plugin starts after the socket exists). */
  async waitReady(timeoutMs = 30_000): Promise<Res<'runtime.v1.RuntimeService', 'Version'>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await this.runtime.Version({ version: 'v1' }, { timeoutMs: 5_000 });
      } catch (e) {
        if (Date.now() > end) throw new Error(`CRI at ${this.socket} did not answer within ${timeoutMs} ms: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /**
   * Waits until CRI's image service knows `ref`. containerd 2.x's CRI learns of images through
   * events, so one just imported with ctr can be missing for a moment, and a missing sandbox
   * image makes RunPodSandbox try a registry pull.
   */
  async waitForImage(ref: string, timeoutMs = 30_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.image.ImageStatus({ image: { image: ref } }, { timeoutMs: 5_000 }).catch(() => undefined);
      if (r?.image) return;
      if (Date.now() > end) throw new Error(`CRI at ${this.socket} does not see image ${ref} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  close(): void {
    this.client.close();
  }
}
