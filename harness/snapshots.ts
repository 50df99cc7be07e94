// A client of containerd's Snapshots gRPC service (a proxy snapshotter's socket, as containerd
// calls it): one method per rpc, messages from the project's protobuf registry, each call with a
// deadline; a failure is a SnapshotsCallError carrying the gRPC code.
import * as grpc from '@grpc/grpc-js';
import { root } from '../proto/registry.js';

const SERVICE = 'containerd.services.snapshots.v1.Snapshots';

export interface WireMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface WireInfo {
  name: string;
  parent: string;
  /** 1 view, 2 active, 3 committed */
  kind: number;
  labels: Record<string, string>;
  created_at?: { seconds: number; nanos: number };
  updated_at?: { seconds: number; nanos: number };
}

export class SnapshotsCallError extends Error {
  constructor(
    readonly rpc: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`${rpc}: ${grpc.status[code] ?? code}: ${details}`);
    this.name = 'SnapshotsCallError';
  }
}

export class SnapshotsClient {
  private readonly client: grpc.Client;

  constructor(
    readonly socket: string,
    private readonly timeoutMs = 120_000,
  ) {
    this.client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.default_authority': 'localhost' });
  }

  close(): void {
    this.client.close();
  }

  private unary<T>(name: string, req: object): Promise<T> {
    const m = root.lookupService(SERVICE).methods[name]!;
    const reqT = m.resolvedRequestType!;
    const resT = m.resolvedResponseType!;
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/${SERVICE}/${name}`,
        (x: object) => Buffer.from(reqT.encode(reqT.fromObject(x)).finish()),
        (b: Buffer) => resT.toObject(resT.decode(b), { defaults: true, longs: Number, arrays: true, objects: true }) as T,
        req,
        new grpc.Metadata(),
        { deadline: new Date(Date.now() + this.timeoutMs) },
        (err, res) => (err ? reject(new SnapshotsCallError(name, err.code, err.details)) : resolve(res as T)),
      );
    });
  }

  async prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<WireMount[]> {
    return (await this.unary<{ mounts: WireMount[] }>('Prepare', { key, parent, labels })).mounts;
  }
  async view(key: string, parent = '', labels: Record<string, string> = {}): Promise<WireMount[]> {
    return (await this.unary<{ mounts: WireMount[] }>('View', { key, parent, labels })).mounts;
  }
  async mounts(key: string): Promise<WireMount[]> {
    return (await this.unary<{ mounts: WireMount[] }>('Mounts', { key })).mounts;
  }
  async commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    await this.unary('Commit', { name, key, labels });
  }
  async remove(key: string): Promise<void> {
    await this.unary('Remove', { key });
  }
  async stat(key: string): Promise<WireInfo> {
    return (await this.unary<{ info: WireInfo }>('Stat', { key })).info;
  }
  async update(info: { name: string; labels: Record<string, string> }, paths: string[] = []): Promise<WireInfo> {
    return (await this.unary<{ info: WireInfo }>('Update', { info, update_mask: { paths } })).info;
  }
  async usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.unary('Usage', { key });
  }
  async cleanup(): Promise<void> {
    await this.unary('Cleanup', {});
  }

  /** List, collecting the stream (each message a batch). */
  list(filters: string[] = []): Promise<WireInfo[]> {
    const m = root.lookupService(SERVICE).methods['List']!;
    const reqT = m.resolvedRequestType!;
    const resT = m.resolvedResponseType!;
    return new Promise((resolve, reject) => {
      const out: WireInfo[] = [];
      const call = this.client.makeServerStreamRequest(
        `/${SERVICE}/List`,
        (x: object) => Buffer.from(reqT.encode(reqT.fromObject(x)).finish()),
        (b: Buffer) => resT.toObject(resT.decode(b), { defaults: true, longs: Number, arrays: true, objects: true }) as { info: WireInfo[] },
        { filters },
        new grpc.Metadata(),
        { deadline: new Date(Date.now() + this.timeoutMs) },
      );
      call.on('data', (r: { info: WireInfo[] }) => out.push(...r.info));
      call.on('error', (e: grpc.ServiceError) => reject(new SnapshotsCallError('List', e.code, e.details)));
      call.on('end', () => resolve(out));
    });
  }
}
