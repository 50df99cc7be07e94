// The real shim binary on the host without containerd or a VM: `start`, `delete` and the daemon
// they spawn, against a private config (state and log dirs in a temp dir). Enough for the attacks
// that need no guest: ids that become paths, sockets, state modes.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildHostBinaries } from '../../scripts/build.js';
import { listProcs } from '../../harness/procs.js';
import { Client, dialUnix } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';

export interface ShimHost {
  dir: string;
  stateDir: string;
  logDir: string;
  configFile: string;
  /** A fake containerd address: the daemon only hashes it (and fails to publish events, harmlessly). */
  address: string;
  shim: string;
  /** A bundle dir with a config.json carrying `annotations`. */
  bundle(name: string, annotations?: Record<string, string>): string;
  run(action: 'start' | 'delete', id: string, bundle: string, extra?: { namespace?: string; env?: NodeJS.ProcessEnv; shim?: string }): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** Shim daemons of this host (their command line names its fake containerd address). */
  daemons(): number[];
  /** Asks the daemon at `address` (unix://...) to shut down, as containerd does after the last Delete. */
  shutdown(address: string): Promise<void>;
  /** Kills what is left and removes the temp dir. */
  cleanup(): void;
}

export async function shimHost(): Promise<ShimHost> {
  const { binDir } = await buildHostBinaries(() => {});
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-sec-'));
  const stateDir = path.join(dir, 'run');
  const logDir = path.join(dir, 'log');
  const configFile = path.join(dir, 'configuration.toml');
  fs.writeFileSync(configFile, `[runtime]\nstate_dir = "${stateDir}"\nlog_dir = "${logDir}"\n`);
  const address = path.join(dir, 'containerd.sock');
  const shim = path.join(binDir, 'containerd-shim-katats-v2');
  const daemons = () => listProcs().filter((p) => p.cmdline.includes('shim.mjs') && p.cmdline.includes(address)).map((p) => p.pid);
  return {
    dir,
    stateDir,
    logDir,
    configFile,
    address,
    shim,
    bundle(name, annotations = {}) {
      const b = path.join(dir, 'bundles', name);
      fs.mkdirSync(b, { recursive: true });
      fs.writeFileSync(path.join(b, 'config.json'), JSON.stringify({ ociVersion: '1.1.0', process: { args: ['true'], cwd: '/' }, root: { path: 'rootfs' }, annotations }));
      return b;
    },
    run(action, id, bundle, extra = {}) {
      return new Promise((resolve, reject) => {
        const args = ['-namespace', extra.namespace ?? 'sec', '-id', id, '-address', address, '-publish-binary', '/bin/false', '-bundle', bundle, action];
        const child = spawn(extra.shim ?? shim, args, {
          cwd: bundle,
          env: { ...process.env, KATATS_CONF_FILE: configFile, TTRPC_ADDRESS: `${address}.ttrpc`, ...extra.env },
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
        child.once('error', reject);
        child.once('close', (code) => {
          clearTimeout(t);
          resolve({ code, stdout, stderr });
        });
      });
    },
    daemons,
    async shutdown(addr) {
      const client = new Client(() => dialUnix(addr.replace(/^unix:\/\//, '')));
      try {
        await serviceClient(client, 'containerd.task.v2.Task').Shutdown({ id: '', now: true }, { timeoutMs: 10_000 });
      } finally {
        await client.close();
      }
    },
    cleanup() {
      for (const pid of daemons()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls until `ok` or `ms` passed; returns the last value. */
export async function until<T>(fn: () => T, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}
