// katats-chv: a cloud-hypervisor-compatible VMM for hosts where the real one cannot run (it needs
// /dev/kvm or /dev/mshv that work). Takes cloud-hypervisor's own options for what the shim uses
//   --api-socket [path=]FILE   --event-monitor path=FILE|fd=N   --log-file FILE
// and katats' own for its QEMU backend
//   --run-dir DIR (default: next to the API socket)  --accel auto|kvm|tcg  --qemu BINARY
//   --agent-log FILE  --cache-dir DIR
// The API socket is served by katats-fds' front (it accepts the TAP fds vm.add-net sends) relaying
// to fastify on NAME.http next to it (FILE less its .sock); without the helper fastify serves FILE
// itself and fd passing is refused.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { exitAfterFlush } from '../../sys/exit.js';
import { settleWithin, withTimeout } from '../../sys/timeout.js';
import type { AccelChoice } from '../config.js';
import { findFdsHelper } from '../native.js';
import { ChvServer } from './server.js';

export const CHV_FRONT_TIMEOUT = 'KATATS_CHV_FRONT_TIMEOUT';
export const CHV_LOG_TIMEOUT = 'KATATS_CHV_LOG_TIMEOUT';
/** The longest unix socket path (sun_path less its NUL). */
const SOCKET_PATH_MAX = 107;

/** fastify's socket behind the front: next to the API's, no longer than it (api.sock -> api.http). */
export function backendSocket(api: string): string {
  return path.join(path.dirname(api), `${path.basename(api).replace(/\.sock$/, '')}.http`);
}

function checkSocketPath(p: string, what: string): void {
  const n = Buffer.byteLength(p);
  if (n > SOCKET_PATH_MAX) throw new Error(`${what} ${p} is ${n} bytes; a unix socket path takes at most ${SOCKET_PATH_MAX}`);
}

export interface ChvArgs {
  apiSocket: string;
  eventMonitor?: { path: string } | { fd: number };
  logFile?: string;
  runDir: string;
  accel: AccelChoice;
  qemu?: string;
  agentLog?: string;
  cacheDir?: string;
}

/** cloud-hypervisor's "k=v,k=v" option values. */
function kv(v: string, bare: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of v.split(',')) {
    const i = part.indexOf('=');
    if (i < 0) out[bare] = part;
    else out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

export function parseChvArgs(argv: string[]): ChvArgs {
  const get = (i: number, name: string): string => {
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${name} needs a value`);
    return v;
  };
  let api: string | undefined;
  const a: Partial<ChvArgs> = { accel: 'auto' };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i]!;
    switch (name) {
      case '--api-socket':
        api = kv(get(i++, name), 'path').path;
        break;
      case '--event-monitor': {
        const o = kv(get(i++, name), 'path');
        if (o.fd !== undefined) {
          if (!/^\d+$/.test(o.fd)) throw new Error(`--event-monitor fd=${o.fd} is not a number`);
          a.eventMonitor = { fd: Number(o.fd) };
        } else if (o.path) a.eventMonitor = { path: o.path };
        else throw new Error('--event-monitor wants path=FILE or fd=N');
        break;
      }
      case '--log-file':
        a.logFile = get(i++, name);
        break;
      case '--run-dir':
        a.runDir = get(i++, name);
        break;
      case '--accel': {
        const v = get(i++, name);
        if (v !== 'auto' && v !== 'kvm' && v !== 'tcg') throw new Error(`--accel ${v} is not auto|kvm|tcg`);
        a.accel = v;
        break;
      }
      case '--qemu':
        a.qemu = get(i++, name);
        break;
      case '--agent-log':
        a.agentLog = get(i++, name);
        break;
      case '--cache-dir':
        a.cacheDir = get(i++, name);
        break;
      case '-v':
        break;
      default:
        throw new Error(`unknown option ${name}`);
    }
  }
  if (!api) throw new Error('--api-socket is required');
  return { ...a, apiSocket: api, runDir: a.runDir ?? path.join(path.dirname(api), 'chv'), accel: a.accel ?? 'auto' } as ChvArgs;
}

/** Starts katats-fds' front on `api`, relaying to `backend`; resolves once it listens. */
function startFront(api: string, backend: string): Promise<ChildProcess> {
  const helper = findFdsHelper();
  const child = spawn(helper, ['front', api, backend], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = new Promise<ChildProcess>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`katats-fds front exited (${code}) before it listened on ${api}`)));
    child.stdout!.once('data', () => resolve(child));
  });
  return withTimeout(ready, 10_000, { code: CHV_FRONT_TIMEOUT, what: `katats-fds front on ${api}` }).catch((e: unknown) => {
    child.kill('SIGKILL');
    throw e;
  });
}

export async function runChv(argv: string[]): Promise<void> {
  const args = parseChvArgs(argv);
  const dest = args.logFile ? pino.destination({ dest: args.logFile, mkdir: true }) : pino.destination(2);
  const log = pino({ level: process.env.KATATS_CHV_LOG ?? 'info', base: { vmm: 'katats-chv' } }, dest);
  // Open before anything can fail: pino flushes at exit, and a file not open yet makes that throw
  // over the error that said why katats-chv ended.
  // (pino's file destination opens asynchronously: 'ready' comes after this line.)
  if (args.logFile) {
    await withTimeout(new Promise<void>((resolve, reject) => dest.once('ready', resolve).once('error', reject)), 10_000, { code: CHV_LOG_TIMEOUT, what: `katats-chv log ${args.logFile}` });
  }
  checkSocketPath(args.apiSocket, 'the API socket');
  const events = args.eventMonitor ? ('fd' in args.eventMonitor ? fs.createWriteStream('', { fd: args.eventMonitor.fd }) : fs.createWriteStream(args.eventMonitor.path, { flags: 'a', mode: 0o600 })) : undefined;
  events?.on('error', (err) => log.warn({ err }, 'event monitor write failed'));
  fs.mkdirSync(args.runDir, { recursive: true, mode: 0o700 });
  let front: ChildProcess | undefined;
  let listen = args.apiSocket;
  try {
    findFdsHelper();
    listen = backendSocket(args.apiSocket);
  } catch (err) {
    log.warn({ err }, 'katats-fds is not available: serving the API without fd passing');
  }
  checkSocketPath(listen, 'the API backend socket');
  const server = await ChvServer.start({
    listen,
    ...(events ? { events } : {}),
    runDir: args.runDir,
    accel: args.accel,
    log,
    ...(args.qemu ? { qemuBinary: args.qemu } : {}),
    ...(args.agentLog ? { agentLogFile: args.agentLog } : {}),
    ...(args.cacheDir ? { cacheDir: args.cacheDir } : {}),
    onVmmShutdown: () => end(0),
  });
  if (listen !== args.apiSocket) front = await startFront(args.apiSocket, listen);
  let ending = false;
  function end(code: number): void {
    if (ending) return;
    ending = true;
    server
      .close()
      .catch((err: unknown) => log.error({ err }, 'stopping the VM failed'))
      .then(async () => {
        // Reaped before we go: an orphaned zombie would wait for an init that may never reap it.
        if (front && front.exitCode === null && front.signalCode === null) {
          const gone = new Promise((r) => front!.once('exit', r));
          front.kill('SIGKILL');
          await settleWithin(gone, 2000);
        }
      })
      .finally(() => {
        for (const f of [args.apiSocket, listen]) fs.rmSync(f, { force: true });
        events?.end();
        exitAfterFlush((cb) => dest.flush(cb), code);
      })
      .catch((err: unknown) => log.error({ err }, 'katats-chv: ending failed'));
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => end(0));
  front?.once('exit', () => {
    log.error('katats-fds front exited: the API socket is gone; stopping');
    end(1);
  });
  log.info({ api: args.apiSocket, runDir: args.runDir, accel: args.accel }, 'katats-chv serving');
}
