// The shim daemon: one per pod. Serves containerd.task.v2.Task and v3 on its socket, publishes events
// back to containerd, and exits after Shutdown once no container is left.
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { Server } from '../proto/ttrpc/index.js';
import { registerService } from '../proto/rpc.js';
import type { ShimArgs } from './args.js';
import { loadConfig } from './config.js';
import { EventPublisher } from './events.js';
import { TaskService } from './task-service.js';
import { isSandboxProcess, privateDir, readRecord, sandboxDir, writeRecord, type SandboxRecord } from './layout.js';
import { launchSandbox } from './vm.js';
import { withPodNetwork } from './network/pod-network.js';
import { removeTree } from '../sys/mount.js';
import { exitAfterFlush } from '../sys/exit.js';
import { hasExited, signalWithGroup } from '../sys/proc.js';
import { PodSteps, shimStartedAt } from './pod-steps.js';
import { serveMonitorEndpoint, type MonitorEndpoint } from './monitor/endpoint.js';
import { MONITOR_SOCKET } from './monitor/report.js';
import type { EarlySocket } from './daemon-socket.js';
import type { CodeCacheUse } from './daemon-load.js';

/** The shim's logger, and a flush of its file (pino's multistream cannot flush with a callback). */
function shimLogger(logDir: string, sandboxId: string, bundle: string, debug: boolean): { log: Logger; flushFile: (cb: (err?: Error) => void) => void } {
  const streams: pino.StreamEntry[] = [];
  privateDir(logDir);
  const file = pino.destination({ dest: path.join(logDir, `${sandboxId}.log`), sync: false, mkdir: true });
  streams.push({ stream: file });
  // containerd reads a FIFO named "log" in the bundle and folds it into its own log.
  const fifo = path.join(bundle, 'log');
  try {
    const fd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    const stream = fs.createWriteStream('', { fd });
    // containerd stops reading once it is done with the task (1.7 before the shim's last words): an
    // EPIPE there crashed the daemon mid-exit, leaving its state. The file log goes on regardless.
    stream.on('error', () => stream.destroy());
    streams.push({ stream });
  } catch {
    // No reader (or no FIFO): the file is enough.
  }
  const log = pino({ level: debug ? 'debug' : 'info', base: { sandbox: sandboxId, pid: process.pid } }, pino.multistream(streams));
  return { log, flushFile: (cb) => file.flush(cb) };
}

/** Serves the pod on `early`, the socket main.ts bound before this module loaded. */
export async function serveShim(args: ShimArgs, early: EarlySocket, load: { codeCache: CodeCacheUse }): Promise<void> {
  const cfg = loadConfig();
  const sandboxId = args.id;
  const { log, flushFile } = shimLogger(cfg.runtime.log_dir, sandboxId, args.bundle, args.debug || cfg.runtime.enable_debug);
  const ttrpcAddress = process.env.TTRPC_ADDRESS ?? `${args.address.replace(/^unix:\/\//, '')}.ttrpc`;
  const events = new EventPublisher({ address: ttrpcAddress, namespace: args.namespace, logger: log });

  const server = new Server({ logger: log });
  const steps = new PodSteps();
  let monitor: MonitorEndpoint | undefined;
  let stopping = false;
  /** Our socket file once listening (its inode tells ours from a successor's). */
  const own: { socket?: fs.Stats } = {};
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    await service.forceCleanup().catch((err) => log.error({ err }, 'cleanup failed'));
    // Last line of defence: no VMM or virtiofsd may outlive its shim, whatever state the service was in.
    const rec = readRecord(cfg.runtime.state_dir, sandboxId);
    for (const [what, pid] of [['VMM', rec?.vmmPid], ['virtiofsd', rec?.virtiofsdPid]] as const) {
      if (!pid || !isSandboxProcess(pid, sandboxDir(cfg.runtime.state_dir, sandboxId))) continue;
      if (hasExited(pid)) continue;
      signalWithGroup(pid, 'SIGKILL');
      log.warn({ pid }, `killed a ${what} the cleanup had not stopped`);
    }
    // Each step on its own: a failure in one must not leave the socket and state behind.
    await server.close({ graceMs: 2000 }).catch((err) => log.error({ err }, 'closing the server failed'));
    await events.close().catch((err) => log.error({ err }, 'closing the event publisher failed'));
    await monitor?.close().catch((err: unknown) => log.error({ err }, 'closing the monitor endpoint failed'));
    // Closing the listener unlinked our socket; a file there now is a successor's, unless ours lingers.
    const st = fs.lstatSync(args.socket, { throwIfNoEntry: false });
    if (st && own.socket && st.ino === own.socket.ino && st.dev === own.socket.dev) fs.rmSync(args.socket, { force: true });
    await removeTree(sandboxDir(cfg.runtime.state_dir, sandboxId)).catch((err) => log.error({ err }, 'removing the sandbox state failed'));
    log.info('shim exiting');
    exitAfterFlush(flushFile, code);
  };
  // stop() catches every step itself; a throw that still escapes must end the process, not hang it.
  const stopSoon = (code: number) => {
    stop(code).catch((err: unknown) => {
      log.fatal({ err }, 'stopping the shim failed');
      exitAfterFlush(flushFile, code || 1);
    });
  };
  const service: TaskService = new TaskService({
    sandboxId,
    namespace: args.namespace,
    config: cfg,
    launcher: withPodNetwork(async (req) => {
      let rec: SandboxRecord = { sandboxId, namespace: args.namespace, shimPid: process.pid, socket: args.socket };
      const guest = await launchSandbox({
        ...req,
        // Recorded before the boot: a shim killed while the VM boots must not leave virtiofsd or
        // host cgroups to `delete`'s guesswork.
        onHostResources: (r) => writeRecord(cfg.runtime.state_dir, (rec = { ...rec, ...r })),
      });
      const { vmmPid, virtiofsdPid, sharedDir, cgroupDirs } = guest;
      writeRecord(cfg.runtime.state_dir, { ...rec, vmmPid, virtiofsdPid, sharedDir, cgroupDirs });
      return guest;
    }),
    events,
    stateDir: cfg.runtime.state_dir,
    log,
    steps,
    // Answer the Shutdown call before going away.
    onShutdown: () => setImmediate(() => stopSoon(0)),
  });
  // containerd 1.6 (and 2.x for a shim that bootstraps as version 2) calls v2, 2.x calls v3 when
  // `start` announced version 3: the messages are the same, so is the implementation.
  registerService(server, 'containerd.task.v2.Task', service.impl);
  registerService(server, 'containerd.task.v3.Task', service.impl);
  // Connections containerd made while this daemon loaded are served from here on.
  server.adopt(early.listener);
  early.handOver((sock) => {
    server.serve(sock);
    sock.resume();
  });
  own.socket = fs.statSync(args.socket);
  writeRecord(cfg.runtime.state_dir, { sandboxId, namespace: args.namespace, shimPid: process.pid, socket: args.socket });
  // A bug must not leave a VM without its shim: say what it was and take the sandbox down cleanly.
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception: stopping the sandbox');
    stopSoon(1);
  });
  process.on('SIGTERM', () => stopSoon(0));
  process.on('SIGINT', () => stopSoon(0));
  const servingMs = steps.done('shim_serving', Date.now() - shimStartedAt());
  // startupMs: since this daemon process began (its module loading included), for bench/factory-steps.ts;
  // startupCpuMs: the CPU time that took, which the load of other processes does not stretch.
  const cpu = process.cpuUsage();
  log.info({ socket: args.socket, config: cfg.source, maxShimVersion: process.env.MAX_SHIM_VERSION ?? null, ms: servingMs, startupMs: Math.round(performance.now()), startupCpuMs: Math.round((cpu.user + cpu.system) / 1000), codeCache: load.codeCache }, 'shim serving');
  // containerd's calls do not wait for the monitor's socket.
  const monitorSocket = path.join(sandboxDir(cfg.runtime.state_dir, sandboxId), MONITOR_SOCKET);
  try {
    monitor = await serveMonitorEndpoint({ socket: monitorSocket, sandboxId, namespace: args.namespace, view: () => service.monitorView(), log });
  } catch (err) {
    // The pod runs without it; `katats monitor` does not list it.
    log.warn({ err, socket: monitorSocket }, 'the monitor endpoint could not be served');
  }
}
