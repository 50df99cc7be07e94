// `start`: containerd expects the shim's ttrpc address on stdout and this process gone. Containers
// of one pod share a daemon: if the pod's socket answers, its address is the answer.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn } from 'node:child_process';
import type { ShimArgs } from './args.js';
import { loadConfig } from './config.js';
import { groupingId, socketPath } from './layout.js';

function canConnect(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export async function startShim(args: ShimArgs): Promise<string> {
  const cfg = loadConfig();
  const grouping = groupingId(args.bundle, args.id);
  const sock = socketPath(cfg.runtime.state_dir, args.address, args.namespace, grouping);
  const address = `unix://${sock}`;
  if (await canConnect(sock)) {
    fs.writeFileSync(path.join(args.bundle, 'address'), address);
    return address;
  }
  fs.mkdirSync(path.dirname(sock), { recursive: true });
  fs.rmSync(sock, { force: true });

  const daemonArgs = [
    ...process.execArgv,
    process.argv[1]!,
    '-namespace', args.namespace,
    '-id', grouping,
    '-address', args.address,
    '-publish-binary', args.publishBinary,
    '-bundle', args.bundle,
    '-socket', sock,
    ...(args.debug ? ['-debug'] : []),
  ];
  const child = spawn(process.execPath, daemonArgs, {
    cwd: args.bundle,
    detached: true,
    stdio: ['ignore', 'pipe', 'ignore'],
    env: process.env,
  });
  // The daemon says "ready" once its socket listens; anything else means it failed to start.
  const ready = await new Promise<boolean>((resolve) => {
    let out = '';
    const t = setTimeout(() => resolve(false), 30_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('ready\n')) {
        clearTimeout(t);
        resolve(true);
      }
    });
    child.once('exit', () => {
      clearTimeout(t);
      resolve(false);
    });
  });
  if (!ready) {
    child.kill('SIGKILL');
    throw new Error(`shim daemon for ${grouping} did not come up (see ${cfg.runtime.log_dir}/${grouping}.log)`);
  }
  child.stdout!.destroy();
  child.unref();
  fs.writeFileSync(path.join(args.bundle, 'address'), address);
  return address;
}
