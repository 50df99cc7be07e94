// Typed services on top of the ttrpc library: a server registers an implementation of a
// service from the schema, a client gets an object with one method per rpc.
import type protobuf from 'protobufjs';
import type { Services } from './gen/types.js';
import { root, type Init } from './registry.js';
import { Client, type CallOptions } from './ttrpc/client.js';
import type { CallContext, Server } from './ttrpc/server.js';
import { Code, TtrpcError } from './ttrpc/status.js';

export type ServiceName = keyof Services;
type Methods<S extends ServiceName> = Services[S];
type Req<S extends ServiceName, M extends keyof Methods<S>> = Methods<S>[M] extends [infer Q, unknown, boolean] ? Q : never;
type Res<S extends ServiceName, M extends keyof Methods<S>> = Methods<S>[M] extends [unknown, infer R, boolean] ? R : never;

export type ServiceImpl<S extends ServiceName> = {
  [M in keyof Methods<S>]: (req: Req<S, M>, ctx: CallContext) => Promise<Init<Res<S, M>>> | Init<Res<S, M>>;
};

export type ServiceClient<S extends ServiceName> = {
  [M in keyof Methods<S>]: (req: Init<Req<S, M>>, opts?: CallOptions) => Promise<Res<S, M>>;
};

const services = new Map<string, protobuf.Service>();
function service(name: string): protobuf.Service {
  let s = services.get(name);
  if (!s) {
    s = root.lookupService(name);
    services.set(name, s);
  }
  return s;
}

/**
 * Registers every rpc of the service: implemented ones decode, run and encode; the rest answer
 * Unimplemented with the method's name instead of leaving the caller waiting.
 */
export function registerService<S extends ServiceName>(server: Server, name: S, impl: Partial<ServiceImpl<S>>): void {
  const svc = service(name);
  const handlers: Record<string, (payload: Uint8Array, ctx: CallContext) => Promise<Uint8Array>> = {};
  for (const m of svc.methodsArray) {
    const fn = (impl as Record<string, ((req: unknown, ctx: CallContext) => unknown) | undefined>)[m.name];
    const reqType = m.resolvedRequestType!;
    const resType = m.resolvedResponseType!;
    if (!fn) {
      handlers[m.name] = async () => {
        throw new TtrpcError(Code.Unimplemented, `${name}/${m.name} is not implemented`);
      };
      continue;
    }
    handlers[m.name] = async (payload, ctx) => {
      let req: protobuf.Message;
      try {
        req = reqType.decode(payload);
      } catch (e) {
        throw new TtrpcError(Code.InvalidArgument, `${name}/${m.name}: malformed ${reqType.name}: ${(e as Error).message}`);
      }
      const res = await fn.call(impl, req, ctx);
      try {
        return resType.encode((res ?? {}) as protobuf.Message).finish();
      } catch (e) {
        throw new TtrpcError(Code.Internal, `${name}/${m.name}: cannot encode ${resType.name}: ${(e as Error).message}`);
      }
    };
  }
  server.registerRaw(name, handlers);
}

/** A typed stub whose methods call the service over `client`. */
export function serviceClient<S extends ServiceName>(client: Client, name: S): ServiceClient<S> {
  const svc = service(name);
  const stub: Record<string, (req: unknown, opts?: CallOptions) => Promise<unknown>> = {};
  for (const m of svc.methodsArray) {
    const reqType = m.resolvedRequestType!;
    const resType = m.resolvedResponseType!;
    stub[m.name] = async (req, opts) => {
      const payload = reqType.encode((req ?? {}) as protobuf.Message).finish();
      const out = await client.call(name, m.name, payload, opts);
      try {
        return resType.decode(out);
      } catch (e) {
        throw new TtrpcError(Code.Internal, `${name}/${m.name}: malformed ${resType.name} in response: ${(e as Error).message}`);
      }
    };
  }
  return stub as ServiceClient<S>;
}
