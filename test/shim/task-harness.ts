// The Task service under test without a VM or containerd: TaskService with the local-agent
// launcher (local-guest.ts), the real EventPublisher forwarding to a small ttrpc events server
// that records what containerd would receive, bundles with a busybox rootfs, and stdio FIFOs the
// test reads and writes as ctr would. Requests go through the wire codecs both ways, so handlers
// see what they would see from containerd.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { expect } from 'vitest';
import { Server, type CallContext } from '../../proto/ttrpc/index.js';
import { registerService, type ServiceImpl } from '../../proto/rpc.js';
import { decode, encode, unpackAny, type Init, type MessageName } from '../../proto/registry.js';
import type { Messages, Services } from '../../proto/gen/types.js';
import { EventPublisher } from '../../shim/events.js';
import { TaskService } from '../../shim/task-service.js';
import { loadConfig } from '../../shim/config.js';
import { busyboxRootfs, crunContainers, runnerProcesses } from '../agent/helpers.js';
import { localLauncher, type LauncherOptions, type LocalGuest, type LocalLauncher } from './local-guest.js';

type TaskMethods = Services['containerd.task.v2.Task'];
type Method = keyof TaskMethods;
type Req<M extends Method> = TaskMethods[M] extends [infer Q, unknown, boolean] ? Q : never;
type Res<M extends Method> = TaskMethods[M] extends [unknown, infer R, boolean] ? R : never;

export interface RecordedEvent {
  topic: string;
  name: string;
  event: Record<string, unknown>;
}

export interface CtxOptions {
  /** Which Task API version containerd called (containerd 2.x calls v3). */
  service?: 'containerd.task.v2.Task' | 'containerd.task.v3.Task';
  /** Relative deadline in ms, as containerd's timeout_nano becomes CallContext.deadline. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Message names are the method's request and response types in the v2 package. */
const REQ: Record<Method, MessageName> = {
  State: 'containerd.task.v2.StateRequest',
  Create: 'containerd.task.v2.CreateTaskRequest',
  Start: 'containerd.task.v2.StartRequest',
  Delete: 'containerd.task.v2.DeleteRequest',
  Pids: 'containerd.task.v2.PidsRequest',
  Pause: 'containerd.task.v2.PauseRequest',
  Resume: 'containerd.task.v2.ResumeRequest',
  Checkpoint: 'containerd.task.v2.CheckpointTaskRequest',
  Kill: 'containerd.task.v2.KillRequest',
  Exec: 'containerd.task.v2.ExecProcessRequest',
  ResizePty: 'containerd.task.v2.ResizePtyRequest',
  CloseIO: 'containerd.task.v2.CloseIORequest',
  Update: 'containerd.task.v2.UpdateTaskRequest',
  Wait: 'containerd.task.v2.WaitRequest',
  Stats: 'containerd.task.v2.StatsRequest',
  Connect: 'containerd.task.v2.ConnectRequest',
  Shutdown: 'containerd.task.v2.ShutdownRequest',
} as Record<Method, MessageName>;

const RES: Partial<Record<Method, MessageName>> = {
  State: 'containerd.task.v2.StateResponse',
  Create: 'containerd.task.v2.CreateTaskResponse',
  Start: 'containerd.task.v2.StartResponse',
  Delete: 'containerd.task.v2.DeleteResponse',
  Pids: 'containerd.task.v2.PidsResponse',
  Wait: 'containerd.task.v2.WaitResponse',
  Stats: 'containerd.task.v2.StatsResponse',
  Connect: 'containerd.task.v2.ConnectResponse',
} as Partial<Record<Method, MessageName>>;

export function callContext(method: string, o: CtxOptions = {}): CallContext {
  const signal = o.signal ?? (o.timeoutMs !== undefined ? AbortSignal.timeout(o.timeoutMs) : new AbortController().signal);
  return {
    service: o.service ?? 'containerd.task.v2.Task',
    method,
    metadata: new Map(),
    deadline: o.timeoutMs !== undefined ? Date.now() + o.timeoutMs : undefined,
    signal,
    streamId: 1,
  };
}

/** Output of one FIFO, collected as it arrives. */
export class FifoReader {
  text = '';
  ended = false;
  private readonly sock: net.Socket;
  private waiters: Array<() => void> = [];

  constructor(readonly path: string) {
    const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    this.sock = new net.Socket({ fd, readable: true, writable: false });
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d: string) => {
      this.text += d;
      this.wake();
    });
    this.sock.on('end', () => {
      this.ended = true;
      this.wake();
    });
    this.sock.on('error', () => undefined);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once the text matches (or fails the test after `ms`). */
  async waitFor(re: RegExp | string, ms = 15_000): Promise<string> {
    const end = Date.now() + ms;
    const ok = () => (typeof re === 'string' ? this.text.includes(re) : re.test(this.text));
    while (!ok()) {
      if (Date.now() > end) throw new Error(`${path.basename(this.path)}: no ${String(re)} within ${ms} ms; got ${JSON.stringify(this.text.slice(-400))}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
    return this.text;
  }

  /** Stops reading: the FIFO fills and the shim's writer waits, as behind a slow reader. */
  pause(): void {
    this.sock.pause();
  }

  resume(): void {
    this.sock.resume();
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface Stdio {
  stdin: string;
  stdout: string;
  stderr: string;
  out: FifoReader;
  err: FifoReader;
  /** Opens the stdin FIFO for writing (resolves once the shim reads it). */
  openStdin(): Promise<fs.promises.FileHandle>;
}

export interface BundleOptions {
  env?: string[];
  annotations?: Record<string, string>;
  memoryLimit?: number;
  terminal?: boolean;
  mounts?: Array<{ destination: string; source: string; type: string; options: string[] }>;
}

const CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_MKNOD', 'CAP_AUDIT_WRITE'];

/** An OCI process, as containerd puts it into config.json and ExecProcessRequest.spec. */
export function ociProcess(args: string[], o: BundleOptions = {}): Record<string, unknown> {
  return {
    terminal: !!o.terminal,
    user: { uid: 0, gid: 0 },
    args,
    env: o.env ?? ['PATH=/bin', 'HOME=/root'],
    cwd: '/',
    capabilities: { bounding: CAPS, effective: CAPS, permitted: CAPS },
    noNewPrivileges: true,
  };
}

export class TaskHarness {
  readonly dir: string;
  readonly launcher: LocalLauncher;
  readonly events: RecordedEvent[];
  readonly service: TaskService;
  private readonly eventsServer: Server;
  private readonly publisher: EventPublisher;
  private readonly readers: FifoReader[] = [];
  private shutdownCalled = false;
  private seq = 0;
  readonly sandboxId: string;

  private constructor(o: { dir: string; sandboxId: string; launcher: LocalLauncher; server: Server; publisher: EventPublisher; events: RecordedEvent[] }) {
    this.dir = o.dir;
    this.events = o.events;
    this.sandboxId = o.sandboxId;
    this.launcher = o.launcher;
    this.eventsServer = o.server;
    this.publisher = o.publisher;
    const log = pino({ level: process.env.KATATS_TEST_LOG ?? 'silent' }, pino.destination(2));
    this.service = new TaskService({
      sandboxId: o.sandboxId,
      namespace: 'katats-test',
      config: { ...loadConfig(undefined, {}), source: '<test>' },
      launcher: o.launcher.launch,
      events: o.publisher,
      stateDir: path.join(o.dir, 'state'),
      log: log.child({ sandbox: o.sandboxId }),
      onShutdown: () => {
        this.shutdownCalled = true;
      },
    });
  }

  static async start(sandboxId: string, o: LauncherOptions = {}): Promise<TaskHarness> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-ts-'));
    const sock = path.join(dir, 'events.sock');
    const server = new Server();
    const events: RecordedEvent[] = [];
    registerService(server, 'containerd.services.events.ttrpc.v1.Events', {
      Forward: (req) => {
        const env = req.envelope!;
        const { name, message } = unpackAny(env.event!);
        events.push({ topic: env.topic, name, event: message as Record<string, unknown> });
        return {};
      },
    });
    await server.listen(sock);
    const publisher = new EventPublisher({ address: `unix://${sock}`, namespace: 'katats-test', logger: pino({ enabled: false }), retryDelayMs: 20 });
    return new TaskHarness({ dir, sandboxId, launcher: localLauncher(o), server, publisher, events });
  }

  /** The guest launched last. */
  get guest(): LocalGuest {
    const g = this.launcher.guests.at(-1);
    if (!g) throw new Error('no guest was launched');
    return g;
  }

  get shutdown(): boolean {
    return this.shutdownCalled;
  }

  /** One Task API call as containerd makes it: request and response through the wire codecs. */
  async call<M extends Method>(method: M, req: Init<Req<M>>, ctx: CtxOptions = {}): Promise<Res<M>> {
    const impl = this.service.impl as Partial<ServiceImpl<'containerd.task.v2.Task'>>;
    const fn = impl[method] as ((r: unknown, c: CallContext) => Promise<unknown>) | undefined;
    if (!fn) throw new Error(`${method} is not implemented`);
    const decoded = decode(REQ[method] as 'containerd.task.v2.CreateTaskRequest', encode(REQ[method] as 'containerd.task.v2.CreateTaskRequest', req as Init<Messages['containerd.task.v2.CreateTaskRequest']>));
    const res = await fn.call(impl, decoded, callContext(method, ctx));
    const resName = RES[method];
    if (!resName) return res as Res<M>;
    return decode(resName as 'containerd.task.v2.StateResponse', encode(resName as 'containerd.task.v2.StateResponse', res as Init<Messages['containerd.task.v2.StateResponse']>)) as unknown as Res<M>;
  }

  /** A bundle dir with config.json and a busybox rootfs, as containerd prepares one. */
  bundle(id: string, args: string[], o: BundleOptions = {}): string {
    const b = path.join(this.dir, 'bundles', `${id}.${++this.seq}`);
    fs.mkdirSync(b, { recursive: true });
    busyboxRootfs(b);
    const spec = {
      ociVersion: '1.0.2',
      process: ociProcess(args, o),
      root: { path: 'rootfs', readonly: false },
      hostname: id,
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
        { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
        { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
        { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
        ...(o.mounts ?? []),
      ],
      annotations: o.annotations ?? {},
      linux: {
        namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }],
        resources: o.memoryLimit ? { memory: { limit: o.memoryLimit } } : undefined,
        maskedPaths: ['/proc/kcore', '/proc/keys'],
        readonlyPaths: ['/proc/sys'],
      },
    };
    fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify(spec));
    return b;
  }

  /** Stdio FIFOs for one process, their output read as ctr reads it. */
  stdio(name: string, o: { stdin?: boolean } = {}): Stdio {
    const d = path.join(this.dir, 'io', `${name}.${++this.seq}`);
    fs.mkdirSync(d, { recursive: true });
    const p = (f: string) => path.join(d, f);
    for (const f of ['stdout', 'stderr', ...(o.stdin ? ['stdin'] : [])]) execFileSync('mkfifo', [p(f)]);
    const out = new FifoReader(p('stdout'));
    const err = new FifoReader(p('stderr'));
    this.readers.push(out, err);
    return {
      stdin: o.stdin ? p('stdin') : '',
      stdout: p('stdout'),
      stderr: p('stderr'),
      out,
      err,
      openStdin: () => fs.promises.open(p('stdin'), 'w'),
    };
  }

  /** Create + Start of a container running `args`; returns its stdio. */
  async run(id: string, args: string[], o: BundleOptions & { stdin?: boolean } = {}): Promise<Stdio> {
    const io = this.stdio(id, o);
    await this.call('Create', { id, bundle: this.bundle(id, args, o), stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: false });
    await this.call('Start', { id });
    return io;
  }

  /** Exec + Start of `args` in container `id`. */
  async exec(id: string, execId: string, args: string[], o: { stdin?: boolean } = {}): Promise<Stdio> {
    const io = this.stdio(`${id}-${execId}`, o);
    const spec = { type_url: 'types.containerd.io/opencontainers/runtime-spec/1/Process', value: Buffer.from(JSON.stringify(ociProcess(args))) };
    await this.call('Exec', { id, exec_id: execId, spec, stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, terminal: false });
    await this.call('Start', { id, exec_id: execId });
    return io;
  }

  /** Kill (SIGKILL) if running, Wait, Delete: the end ctr gives a task. */
  async remove(id: string): Promise<void> {
    const st = await this.call('State', { id });
    if (st.status !== 3) {
      await this.call('Kill', { id, signal: 9, all: true }).catch(() => undefined);
      await this.call('Wait', { id });
    }
    await this.call('Delete', { id });
  }

  /** Events of one container, as topics in order, after the publisher delivered what it has. */
  async topics(containerId: string): Promise<string[]> {
    await this.publisher.flush();
    return this.events.filter((e) => e.event.container_id === containerId).map((e) => e.topic);
  }

  async flushEvents(): Promise<RecordedEvent[]> {
    await this.publisher.flush();
    return this.events;
  }

  /** Everything down; then the checks that nothing was left: no crun container, runner, mount or dir. */
  async close(): Promise<void> {
    for (const r of this.readers) r.close();
    await this.service.forceCleanup();
    await this.launcher.cleanup();
    await this.publisher.close();
    await this.eventsServer.close({ graceful: false });
    const mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(this.dir));
    fs.rmSync(this.dir, { recursive: true, force: true });
    expect(mounted).toEqual([]);
    for (const g of this.launcher.guests) {
      expect(runnerProcesses(g.agent.dir)).toEqual([]);
      expect(fs.existsSync(g.agent.dir)).toBe(false);
    }
    // This test process's own crun root (helpers.ts): any container in it was left by this harness.
    expect(crunContainers('')).toEqual([]);
  }
}
