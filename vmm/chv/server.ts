// katats-chv's API: cloud-hypervisor's REST API (same paths, bodies validated with the client's own
// JSON schemas, CH's status codes and error arrays, its event monitor) served by fastify on a unix
// socket, with QEMU (qemu-backend.ts) running the VM. VM lifecycle, as CH's: vm.create stores a
// config (Created); vm.boot starts it (Running); pause/resume; vm.shutdown stops the guest and
// keeps the config (Created again); vm.delete forgets it. Devices added before boot join the
// config (204); added to a running VM they are hot-plugged (200 {id, bdf}). One request changes
// the VM at a time; the others wait their turn.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { API_ROOT, ENDPOINTS, type Endpoint } from '../clh/client.js';
import { schemaMessages, type SchemaName, SCHEMAS, validator } from '../clh/schemas.js';
import { EventWriter } from '../clh/events.js';
import { AGENT_VSOCK_PORT } from '../clh/hybrid-vsock.js';
import type { DiskConfig, FsConfig, NetConfig, PciDeviceInfo, VmConfig, VmInfo, VmState, VsockConfig } from '../clh/types.js';
import type { AccelChoice } from '../config.js';
import type { QemuHypervisor } from '../qemu-hypervisor.js';
import { connectUnix } from '../qemu-hypervisor.js';
import { BackendError, bootQemu, pciDeviceInfo, qemuDisk, qemuId } from './qemu-backend.js';
import { type HybridVsockServer, serveHybridVsock } from './hybrid-vsock-server.js';

export const CHV_VERSION = 'katats-chv 0.1.0 (cloud-hypervisor API v1, QEMU backend)';
const GUEST_CONNECT_TIMEOUT_MS = 5_000;

/** An answer other than success, in cloud-hypervisor's shape: status and messages. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly messages: string[],
  ) {
    super(messages.join(': '));
  }
}

const notCreated = () => new ApiError(404, ['Error from API', 'The VM is not created']);
const badState = (what: string, state: string) => new ApiError(405, ['Error from API', `${what}: invalid VM state transition from ${state}`]);

export interface ChvOptions {
  /** the socket fastify listens on (behind katats-fds' front, or the API socket itself) */
  listen: string;
  /** the event monitor's stream; none: events are not written */
  events?: NodeJS.WritableStream;
  runDir: string;
  accel: AccelChoice;
  qemuBinary?: string;
  agentLogFile?: string;
  cacheDir?: string;
  log: Logger;
  /** vmm.shutdown was asked: the process ends after the answer is out */
  onVmmShutdown?: () => void;
}

interface Vm {
  config: VmConfig;
  state: VmState;
  hv?: QemuHypervisor;
  vsock?: HybridVsockServer;
  /** ids of every device in the VM (boot-time and hot-plugged) */
  ids: Set<string>;
  plugged: Map<string, PciDeviceInfo>;
}

/** The fds an add-net request came with, as katats-fds' front says: "PID:FD,FD". */
export function parseFdsHeader(h: string | string[] | undefined): { pid: number; fds: number[] } | undefined {
  if (typeof h !== 'string') return undefined;
  const m = /^(\d+):(\d+(?:,\d+)*)$/.exec(h.trim());
  if (!m) throw new ApiError(400, ['Error from API', `bad X-Katats-Fds header ${JSON.stringify(h.slice(0, 80))}`]);
  return { pid: Number(m[1]), fds: m[2]!.split(',').map(Number) };
}

export class ChvServer {
  private vm: Vm | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly writer: EventWriter;
  readonly app: FastifyInstance;

  private constructor(private readonly o: ChvOptions) {
    this.writer = new EventWriter(o.events as never);
    this.app = Fastify({ logger: false, bodyLimit: 1 << 20 });
  }

  static async start(o: ChvOptions): Promise<ChvServer> {
    const s = new ChvServer(o);
    s.routes();
    fs.rmSync(o.listen, { force: true });
    await s.app.listen({ path: o.listen });
    fs.chmodSync(o.listen, 0o600);
    s.writer.emit('vmm', 'starting');
    return s;
  }

  /** Stops the VM (if any) and the server. */
  async close(): Promise<void> {
    await this.serial(async () => {
      if (this.vm) await this.stopGuest(this.vm);
    });
    await this.app.close();
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  private routes(): void {
    const app = this.app;
    // Bodies are checked by the very validators the client uses; the schema's name travels in the route's config.
    app.setValidatorCompiler(({ schema }) => {
      const name = (Object.keys(SCHEMAS) as SchemaName[]).find((n) => SCHEMAS[n] === schema);
      if (!name) throw new Error('katats-chv: a route schema that is not one of the API schemas');
      return validator(name);
    });
    app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string }, req, reply) => {
      if (err instanceof ApiError) return reply.code(err.status).send(err.messages);
      if (err instanceof BackendError) return reply.code(500).send(['Error from API', err.message]);
      if (err.validation) {
        const name = (req.routeOptions.config as { schemaName?: SchemaName }).schemaName ?? 'VmConfig';
        return reply.code(400).send(['Error from API', ...schemaMessages(name, err.validation as never)]);
      }
      if (err.statusCode && err.statusCode < 500) return reply.code(err.statusCode).send(['Error from API', err.message]);
      this.o.log.error({ err, url: req.url }, 'katats-chv: request failed');
      return reply.code(500).send(['Error from API', err.message]);
    });
    app.setNotFoundHandler((req, reply) => reply.code(404).send(['Error from API', `no such endpoint: ${req.method} ${req.url.split('?')[0]}`]));
    for (const ep of Object.keys(ENDPOINTS) as Endpoint[]) {
      const spec = ENDPOINTS[ep];
      const url = `${API_ROOT}/${ep}`;
      app.route({
        method: spec.method,
        url,
        config: { schemaName: spec.body },
        ...(spec.body ? { schema: { body: SCHEMAS[spec.body] } } : {}),
        handler: (req, reply) => this.handle(ep, req, reply),
      });
      app.route({ method: spec.method === 'GET' ? 'PUT' : 'GET', url, handler: (_req, reply) => reply.code(405).send(['Error from API', `${ep} takes ${spec.method}`]) });
    }
  }

  private async handle(ep: Endpoint, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const body = req.body;
    switch (ep) {
      case 'vmm.ping':
        return { build_version: CHV_VERSION, version: 'v1', pid: process.pid, features: ['katats-chv', ...(this.vm?.hv ? [`accel=${this.vm.hv.accel}`] : [])] };
      case 'vmm.shutdown':
        await this.serial(async () => {
          if (this.vm) await this.stopGuest(this.vm);
        });
        this.writer.emit('vmm', 'shutdown');
        reply.raw.once('finish', () => this.o.onVmmShutdown?.());
        return reply.code(204).send();
      case 'vm.info':
        return this.info();
      case 'vm.counters':
        this.need();
        return {};
      default:
        return this.serial(() => this.change(ep, body, req, reply));
    }
  }

  private need(): Vm {
    if (!this.vm) throw notCreated();
    return this.vm;
  }

  private info(): VmInfo {
    const vm = this.need();
    const deviceTree = Object.fromEntries([...vm.plugged].map(([id, d]) => [id, { id, pci_bdf: d.bdf }]));
    return { config: vm.config, state: vm.state, memory_actual_size: vm.config.memory?.size ?? 0, device_tree: deviceTree };
  }

  private claimId(vm: Vm, id: string | undefined, prefix: string): string {
    if (id !== undefined) {
      if (vm.ids.has(id)) throw new ApiError(409, ['Error from API', `Identifier ${id} is not unique`]);
      vm.ids.add(id);
      return id;
    }
    for (let i = 0; ; i++) {
      const auto = `_${prefix}${i}`;
      if (!vm.ids.has(auto)) {
        vm.ids.add(auto);
        return auto;
      }
    }
  }

  private async change(ep: Endpoint, body: unknown, req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const done = () => reply.code(204).send();
    if (ep === 'vm.create') {
      if (this.vm) throw new ApiError(409, ['Error from API', 'The VM is already created']);
      const config = structuredClone(body as VmConfig);
      const vm: Vm = { config, state: 'Created', ids: new Set(), plugged: new Map() };
      config.disks?.forEach((d) => (d.id = this.claimId(vm, d.id, 'disk')));
      config.fs?.forEach((f) => (f.id = this.claimId(vm, f.id, 'fs')));
      config.net?.forEach((n) => (n.id = this.claimId(vm, n.id, 'net')));
      if (config.vsock) config.vsock.id = this.claimId(vm, config.vsock.id, 'vsock');
      this.vm = vm;
      return done();
    }
    if (ep === 'vm.restore' || ep === 'vm.receive-migration') throw new BackendError(`${ep} is not supported by katats-chv's QEMU backend`);
    const vm = this.need();
    switch (ep) {
      case 'vm.boot': {
        if (vm.state !== 'Created') throw badState('vm.boot', vm.state);
        this.writer.emit('vm', 'booting');
        await this.boot(vm);
        this.writer.emit('vm', 'booted');
        return done();
      }
      case 'vm.pause':
        if (vm.state !== 'Running') throw badState('vm.pause', vm.state);
        this.writer.emit('vm', 'pausing');
        await vm.hv!.pause();
        vm.state = 'Paused';
        this.writer.emit('vm', 'paused');
        return done();
      case 'vm.resume':
        if (vm.state !== 'Paused') throw badState('vm.resume', vm.state);
        this.writer.emit('vm', 'resuming');
        await vm.hv!.resume();
        vm.state = 'Running';
        this.writer.emit('vm', 'resumed');
        return done();
      case 'vm.shutdown':
        if (vm.state !== 'Running' && vm.state !== 'Paused') throw badState('vm.shutdown', vm.state);
        await this.stopGuest(vm);
        return done();
      case 'vm.delete':
        await this.stopGuest(vm);
        this.vm = undefined;
        this.writer.emit('vm', 'deleted');
        return done();
      case 'vm.power-button':
        if (vm.state !== 'Running') throw badState('vm.power-button', vm.state);
        await vm.hv!.qemu.qmpExecute('system_powerdown');
        return done();
      case 'vm.add-disk': {
        const d = structuredClone(body as DiskConfig);
        if (vm.state === 'Created') {
          qemuDisk(d, 'check');
          d.id = this.claimId(vm, d.id, 'disk');
          (vm.config.disks ??= []).push(d);
          return done();
        }
        if (vm.state !== 'Running') throw badState('vm.add-disk', vm.state);
        const id = this.claimId(vm, d.id, 'disk');
        try {
          const plugged = await vm.hv!.addDisk(qemuDisk({ ...d, id }, id));
          const info = pciDeviceInfo(id, plugged);
          vm.plugged.set(id, info);
          (vm.config.disks ??= []).push({ ...d, id });
          return info;
        } catch (e) {
          vm.ids.delete(id);
          throw e instanceof ApiError || e instanceof BackendError ? e : new BackendError(`vm.add-disk: ${(e as Error).message}`);
        }
      }
      case 'vm.add-fs': {
        const f = structuredClone(body as FsConfig);
        if (vm.state !== 'Created') throw new BackendError('virtio-fs hotplug is not supported by katats-chv\'s QEMU backend (give the VM its fs in vm.create)');
        if ((vm.config.fs ?? []).length) throw new BackendError('katats-chv\'s QEMU backend takes at most one virtio-fs device');
        f.id = this.claimId(vm, f.id, 'fs');
        (vm.config.fs ??= []).push(f);
        return done();
      }
      case 'vm.add-net': {
        const n = structuredClone(body as NetConfig);
        const passed = parseFdsHeader(req.headers['x-katats-fds']);
        if (passed) n.fds = this.checkTapFds(passed);
        if (vm.state !== 'Created') throw new BackendError('network hotplug is not supported by katats-chv\'s QEMU backend yet');
        n.id = this.claimId(vm, n.id, 'net');
        (vm.config.net ??= []).push(n);
        return done();
      }
      case 'vm.add-vsock': {
        const v = structuredClone(body as VsockConfig);
        if (vm.state !== 'Created') throw new BackendError('vsock hotplug is not supported by katats-chv');
        if (vm.config.vsock) throw new ApiError(409, ['Error from API', 'the VM already has a vsock device']);
        v.id = this.claimId(vm, v.id, 'vsock');
        vm.config.vsock = v;
        return done();
      }
      case 'vm.remove-device': {
        const { id } = body as { id: string };
        if (!vm.ids.has(id)) throw new ApiError(404, ['Error from API', `No device with id ${id}`]);
        if (vm.state === 'Created') {
          vm.config.disks = vm.config.disks?.filter((d) => d.id !== id);
          vm.config.fs = vm.config.fs?.filter((d) => d.id !== id);
          vm.config.net = vm.config.net?.filter((d) => d.id !== id);
          if (vm.config.vsock?.id === id) delete vm.config.vsock;
        } else {
          if (!vm.plugged.has(id)) throw new BackendError(`${id}: only hot-plugged disks can be removed from a running VM by katats-chv's QEMU backend`);
          await vm.hv!.removeDevice(qemuId(id));
          vm.plugged.delete(id);
          vm.config.disks = vm.config.disks?.filter((d) => d.id !== id);
        }
        vm.ids.delete(id);
        this.writer.emit('vm', 'device-removed', { id });
        return done();
      }
      default:
        throw new BackendError(`${ep} is not supported by katats-chv's QEMU backend`);
    }
  }

  /** Each fd the front took for us must be a TAP queue (the relay holds it while the request lasts). */
  private checkTapFds(p: { pid: number; fds: number[] }): number[] {
    for (const fd of p.fds) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/${p.pid}/fd/${fd}`);
      } catch (e) {
        throw new ApiError(400, ['Error from API', `passed fd ${fd} cannot be looked at: ${(e as Error).message}`]);
      }
      if (target !== '/dev/net/tun') throw new ApiError(400, ['Error from API', `passed fd ${fd} is ${target}, not a TAP device`]);
    }
    return p.fds;
  }

  private async boot(vm: Vm): Promise<void> {
    const runDir = this.o.runDir;
    const hv = await bootQemu(path.basename(runDir).replace(/[^A-Za-z0-9_-]/g, '').slice(0, 20) || 'chv', vm.config, {
      runDir,
      accel: this.o.accel,
      log: this.o.log,
      ...(this.o.qemuBinary ? { qemuBinary: this.o.qemuBinary } : {}),
      ...(this.o.agentLogFile ? { agentLogFile: this.o.agentLogFile } : {}),
      ...(this.o.cacheDir ? { cacheDir: this.o.cacheDir } : {}),
    });
    vm.hv = hv;
    vm.state = 'Running';
    if (vm.config.vsock) {
      const agentSocket = hv.config.agentSocket;
      vm.vsock = await serveHybridVsock(
        vm.config.vsock.socket,
        async (port): Promise<net.Socket | undefined> =>
          port === AGENT_VSOCK_PORT ? connectUnix(agentSocket, { timeoutMs: GUEST_CONNECT_TIMEOUT_MS }) : undefined,
        this.o.log,
      );
    }
    // A guest that powers off or dies on its own: the VM is back to Created, as CH reports it.
    hv.exited
      .then(async (x) => {
        if (vm.hv !== hv) return;
        await vm.vsock?.close();
        vm.hv = undefined;
        vm.vsock = undefined;
        vm.state = 'Created';
        vm.plugged.clear();
        this.writer.emit('vm', 'shutdown', { reason: x.reason });
      })
      .catch((err: unknown) => this.o.log.error({ err }, 'katats-chv: noting the guest exit failed'));
  }

  private async stopGuest(vm: Vm): Promise<void> {
    const hv = vm.hv;
    if (!hv) return;
    vm.hv = undefined;
    await vm.vsock?.close();
    vm.vsock = undefined;
    if (vm.config.vsock) fs.rmSync(vm.config.vsock.socket, { force: true });
    await hv.stop().catch(() => hv.kill());
    vm.state = 'Created';
    vm.plugged.clear();
    this.writer.emit('vm', 'shutdown');
  }
}
