// The snapshotter's gRPC face: containerd.services.snapshots.v1.Snapshots on a unix socket, the way
// containerd calls a proxy snapshotter plugin. Messages use the project's protobuf registry;
// errors leave as gRPC status codes from containerd's errdefs (errors.ts), the one place they
// are mapped; List streams its answer in batches, as containerd's own service does.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type protobuf from 'protobufjs';
import type { MountSpec } from '../proto/layer-mounts.js';
import { root, timestamp } from '../proto/registry.js';
import { withTimeout } from '../sys/timeout.js';
import { ContentClient } from './content.js';
import { GRPC_CODE, SnapshotError } from './errors.js';
import { TardevSnapshotter, type Info } from './service.js';

const SERVICE = 'containerd.services.snapshots.v1.Snapshots';
const KIND = { view: 1, active: 2, committed: 3 } as const;
const LIST_BATCH = 100;
export const SHUTDOWN_TIMEOUT = 'KATATS_SNAPSHOTTER_SHUTDOWN_TIMEOUT';

function protoInfo(i: Info): object {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND[i.kind],
    created_at: timestamp(new Date(i.created)),
    updated_at: timestamp(new Date(i.updated)),
    labels: i.labels,
  };
}

function protoMounts(ms: MountSpec[]): object {
  return { mounts: ms.map((m) => ({ type: m.type, source: m.source, target: m.target, options: m.options })) };
}

type Unary = (req: Record<string, unknown>) => Promise<object> | object;

function definition(): { def: grpc.ServiceDefinition; methods: protobuf.Method[] } {
  const svc = root.lookupService(SERVICE);
  const def: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const m of svc.methodsArray) {
    const req = m.resolvedRequestType!;
    const res = m.resolvedResponseType!;
    def[m.name] = {
      path: `/${SERVICE}/${m.name}`,
      requestStream: false,
      responseStream: !!m.responseStream,
      requestSerialize: (x: object) => Buffer.from(req.encode(req.fromObject(x)).finish()),
      requestDeserialize: (b: Buffer) => req.toObject(req.decode(b), { defaults: true, longs: Number, arrays: true, objects: true }),
      responseSerialize: (x: object) => Buffer.from(res.encode(res.fromObject(x)).finish()),
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { defaults: true, longs: Number }),
    };
  }
  return { def: def as grpc.ServiceDefinition, methods: svc.methodsArray };
}

function toStatus(e: unknown, log: Logger, rpc: string, req: unknown): Partial<grpc.StatusObject> {
  if (e instanceof SnapshotError) {
    log.info({ rpc, req, kind: e.kind, err: e.message }, 'request refused');
    return { code: GRPC_CODE[e.kind], details: e.message };
  }
  log.error({ rpc, req, err: e }, 'request failed');
  return { code: grpc.status.INTERNAL, details: e instanceof Error ? e.message : String(e) };
}

export function snapshotsService(sn: TardevSnapshotter, log: Logger): { def: grpc.ServiceDefinition; impl: grpc.UntypedServiceImplementation } {
  const str = (x: unknown) => (typeof x === 'string' ? x : '');
  const labels = (x: unknown) => (x && typeof x === 'object' ? (x as Record<string, string>) : {});
  const unary: Record<string, Unary> = {
    Prepare: async (r) => protoMounts(await sn.prepare(str(r.key), str(r.parent), labels(r.labels))),
    View: async (r) => protoMounts(await sn.view(str(r.key), str(r.parent), labels(r.labels))),
    Mounts: async (r) => protoMounts(await sn.mounts(str(r.key))),
    Commit: async (r) => (await sn.commit(str(r.name), str(r.key), labels(r.labels)), {}),
    Remove: async (r) => (await sn.remove(str(r.key)), {}),
    Stat: (r) => ({ info: protoInfo(sn.stat(str(r.key))) }),
    Update: (r) => {
      const info = (r.info ?? {}) as { name?: string; labels?: Record<string, string> };
      const paths = ((r.update_mask as { paths?: string[] } | undefined)?.paths ?? []).filter((p) => typeof p === 'string');
      return { info: protoInfo(sn.update({ name: str(info.name), labels: labels(info.labels) }, paths)) };
    },
    Usage: async (r) => await sn.usage(str(r.key)),
    Cleanup: async () => (await sn.cleanup(), {}),
  };
  const { def } = definition();
  const impl: grpc.UntypedServiceImplementation = {};
  for (const [name, fn] of Object.entries(unary)) {
    impl[name] = (call: grpc.ServerUnaryCall<Record<string, unknown>, object>, cb: grpc.sendUnaryData<object>) => {
      log.debug({ rpc: name, req: call.request }, 'request');
      Promise.resolve()
        .then(() => fn(call.request))
        .then(
          (res) => cb(null, res),
          (e: unknown) => cb(toStatus(e, log, name, call.request)),
        );
    };
  }
  impl.List = (call: grpc.ServerWritableStream<Record<string, unknown>, object>) => {
    try {
      const filters = Array.isArray(call.request.filters) ? (call.request.filters as unknown[]).filter((f): f is string => typeof f === 'string') : [];
      const all = sn.list(filters);
      for (let i = 0; i < all.length; i += LIST_BATCH) call.write({ info: all.slice(i, i + LIST_BATCH).map(protoInfo) });
      call.end();
    } catch (e) {
      call.emit('error', toStatus(e, log, 'List', call.request));
    }
  };
  return { def, impl };
}

/** Refuses to take over a socket a live server answers on; removes one nobody answers on. */
async function claimSocket(address: string): Promise<void> {
  if (!fs.existsSync(address)) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(address);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${address}: another server answers on this socket`);
  fs.rmSync(address, { force: true });
}

export interface ServeOptions {
  root: string;
  address: string;
  /** containerd's gRPC socket (content store); without it unpacks fail with Unavailable. */
  containerd?: string;
  log: Logger;
  maxBuilds?: number;
}

export interface RunningSnapshotter {
  snapshotter: TardevSnapshotter;
  close(timeoutMs?: number): Promise<void>;
}

export async function serveSnapshotter(o: ServeOptions): Promise<RunningSnapshotter> {
  const content = o.containerd ? new ContentClient(o.containerd) : undefined;
  const sn = new TardevSnapshotter({ root: o.root, log: o.log, content, maxBuilds: o.maxBuilds });
  sn.open();
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  const { def, impl } = snapshotsService(sn, o.log);
  server.addService(def, impl);
  fs.mkdirSync(path.dirname(o.address), { recursive: true, mode: 0o700 });
  await claimSocket(o.address);
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${o.address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  fs.chmodSync(o.address, 0o600);
  o.log.info({ address: o.address, root: o.root, containerd: o.containerd }, 'snapshotter serves');
  return {
    snapshotter: sn,
    async close(timeoutMs = 10_000) {
      await withTimeout(new Promise<void>((r) => server.tryShutdown(() => r())), timeoutMs, {
        code: SHUTDOWN_TIMEOUT,
        what: 'snapshotter: requests to finish at shutdown',
        onTimeout: () => server.forceShutdown(),
      }).catch(() => server.forceShutdown());
      content?.close();
      fs.rmSync(o.address, { force: true });
    },
  };
}
