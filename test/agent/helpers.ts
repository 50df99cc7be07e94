// Shared pieces of the agent tests: a busybox rootfs, an agent served on a unix socket in this
// process (real crun, real processes), typed clients, a spec builder, and leak checks.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, expect } from 'vitest';
import { Client } from '../../proto/ttrpc/index.js';
import { serviceClient, type ServiceClient } from '../../proto/rpc.js';
import type { grpc } from '../../proto/gen/types.js';
import type { Init } from '../../proto/registry.js';
import { createAgent, type Agent } from '../../agent/server.js';
import { detectCgroups } from '../../agent/cgroups.js';
import { findRunner } from '../../agent/runtime/runner.js';
import type { AgentConfig } from '../../agent/config.js';
import { Keeper } from '../../agent/keeper.js';
import { mountPoints } from '../../sys/mount.js';

export const BUSYBOX = '/bin/busybox';

/** A rootfs holding a static busybox and a symlink per applet, plus the usual mount points. */
export function busyboxRootfs(dir: string): string {
  const root = path.join(dir, 'rootfs');
  for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp', 'etc', 'data', 'root']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(root, 'bin/busybox'));
  fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
  const applets = execFileSync(BUSYBOX, ['--list']).toString().split('\n').filter(Boolean);
  for (const a of applets) if (a !== 'busybox') fs.symlinkSync('busybox', path.join(root, 'bin', a));
  fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n');
  fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\nuser:x:1000:\n');
  return root;
}

export interface SpecOpts {
  terminal?: boolean;
  env?: string[];
  cwd?: string;
  memoryLimit?: number;
  readonlyRoot?: boolean;
  mounts?: Init<grpc.Mount>[];
  devices?: Init<grpc.LinuxDevice>[];
  cgroupsPath?: string;
  consoleSize?: { rows: number; cols: number };
}

const CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_MKNOD', 'CAP_AUDIT_WRITE'];

export function processSpec(args: string[], o: SpecOpts = {}): Init<grpc.Process> {
  return {
    Terminal: !!o.terminal,
    ConsoleSize: o.consoleSize ? { Height: o.consoleSize.rows, Width: o.consoleSize.cols } : undefined,
    User: { UID: 0, GID: 0 },
    Args: args,
    Env: o.env ?? ['PATH=/bin', 'HOME=/root', ...(o.terminal ? ['TERM=xterm'] : [])],
    Cwd: o.cwd ?? '/',
    Capabilities: { Bounding: CAPS, Effective: CAPS, Permitted: CAPS, Inheritable: [], Ambient: [] },
    Rlimits: [{ Type: 'RLIMIT_NOFILE', Hard: 1024, Soft: 1024 }],
    NoNewPrivileges: true,
  };
}

export function containerSpec(rootfs: string, args: string[], o: SpecOpts = {}): Init<grpc.Spec> {
  return {
    Version: '1.0.2',
    Process: processSpec(args, o),
    Root: { Path: rootfs, Readonly: o.readonlyRoot ?? true },
    Hostname: 'katats-test',
    Mounts: [
      { destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', source: 'devpts', type: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/dev/shm', source: 'shm', type: 'tmpfs', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/sys', source: 'sysfs', type: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/tmp', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
      ...(o.mounts ?? []),
    ],
    Linux: {
      Namespaces: [{ Type: 'ipc' }, { Type: 'uts' }, { Type: 'mount' }, { Type: 'network' }],
      Resources: o.memoryLimit ? { Memory: { Limit: o.memoryLimit } } : undefined,
      CgroupsPath: o.cgroupsPath,
      Devices: o.devices,
      MaskedPaths: ['/proc/kcore', '/proc/keys'],
      ReadonlyPaths: ['/proc/sys'],
    },
  };
}

export interface TestAgent {
  agent: Agent;
  client: Client;
  svc: ServiceClient<'grpc.AgentService'>;
  health: ServiceClient<'grpc.Health'>;
  dir: string;
  stateDir: string;
  rootfs: string;
  sock: string;
  close(): Promise<void>;
}

let runnerPath: string | undefined;
export function runner(): string {
  runnerPath ??= findRunner();
  return runnerPath;
}

/** The agent's cgroup parent in tests: one per test process, so concurrent suites never share a cgroup. */
export const TEST_CGROUP_PARENT = `/katats-test-${process.pid}`;
/** crun's state root likewise: suites in other processes (or checkouts) use the same container ids. */
export const TEST_CRUN_ROOT = `/run/katats-test-crun-${process.pid}`;

/** Removes this process's crun root when empty: a container left behind keeps it, and crunContainers() names it. */
export function removeTestCrunRoot(): void {
  try {
    fs.rmdirSync(TEST_CRUN_ROOT);
  } catch {
    /* in use by another agent of this process, not empty, or gone */
  }
}

/** An agent on a unix socket in a fresh temp dir, with a busybox rootfs next to it. */
export async function startAgent(over: Partial<AgentConfig> = {}): Promise<TestAgent> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-agent-'));
  const stateDir = path.join(dir, 'state');
  fs.mkdirSync(stateDir);
  const rootfs = busyboxRootfs(dir);
  const level = process.env.KATATS_TEST_LOG ?? 'silent';
  const log = pino({ level }, pino.destination(2));
  const config: AgentConfig = {
    stateDir,
    copyRoot: path.join(stateDir, 'shared', 'containers'),
    runner: runner(),
    crun: 'crun',
    sysfsRoot: '/sys',
    cgroups: detectCgroups(),
    cgroupParent: TEST_CGROUP_PARENT,
    crunRoot: TEST_CRUN_ROOT,
    setClock: false,
    pciRescan: false,
    outputBufferBytes: 1 << 20,
    log,
    // As in the guest, the runners are forked by a keeper, unless a test says otherwise.
    ...('keeper' in over ? {} : { keeper: Keeper.start(runner(), log) }),
    ...over,
  };
  // As main.ts does: the keeper's crun commands run from its sealed copy.
  if (!('keeper' in over)) await config.keeper?.loadCrun(config.crun);
  const agent = createAgent(config);
  const sock = path.join(dir, 'agent.sock');
  await agent.server.listen(sock);
  const client = await Client.connect(sock, { maxMessageSize: 8 << 20 });
  return {
    agent,
    client,
    svc: serviceClient(client, 'grpc.AgentService'),
    health: serviceClient(client, 'grpc.Health'),
    dir,
    stateDir,
    rootfs,
    sock,
    async close() {
      await client.close();
      await agent.shutdown();
      config.keeper?.stop();
      for (const m of mountPoints().filter((m) => m.startsWith(dir)).sort((a, b) => b.length - a.length)) {
        try {
          execFileSync('umount', ['-l', m]);
        } catch {
          /* gone */
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
      removeTestCrunRoot();
    },
  };
}

/** Reads a stream to its end (the agent's EOF error), returning all bytes. */
export async function readAll(t: TestAgent, cid: string, eid = '', which: 'ReadStdout' | 'ReadStderr' = 'ReadStdout', len = 1 << 20): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    try {
      const r = await t.svc[which]({ container_id: cid, exec_id: eid, len });
      parts.push(Buffer.from(r.data));
    } catch (e) {
      if (/eof/i.test((e as Error).message)) break;
      throw e;
    }
  }
  return Buffer.concat(parts);
}

/** Creates, starts and waits for a container running `args`; returns stdout, stderr and status. */
export async function runToEnd(t: TestAgent, cid: string, args: string[], o: SpecOpts = {}): Promise<{ stdout: string; stderr: string; status: number }> {
  await t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, args, o) });
  await t.svc.StartContainer({ container_id: cid });
  const [stdout, stderr] = await Promise.all([readAll(t, cid), readAll(t, cid, '', 'ReadStderr')]);
  const { status } = await t.svc.WaitProcess({ container_id: cid, exec_id: '' });
  await t.svc.RemoveContainer({ container_id: cid });
  return { stdout: stdout.toString(), stderr: stderr.toString(), status };
}

/** Containers crun knows whose id starts with `prefix`. */
export function crunContainers(prefix: string): string[] {
  if (!fs.existsSync(TEST_CRUN_ROOT)) return [];
  const out = execFileSync('crun', ['--root', TEST_CRUN_ROOT, 'list', '-q']).toString();
  return out.split('\n').filter((l) => l.startsWith(prefix));
}

/** katats-runner processes still alive whose command line mentions `needle`. */
export function runnerProcesses(needle: string): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes('katats-runner') && cmd.includes(needle)) out.push(`${pid}: ${cmd}`);
    } catch {
      /* exited */
    }
  }
  return out;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Registers beforeAll/afterAll for an agent shared by one describe block, and after it closes
 * checks that nothing is left: no crun container with `prefix`, no runner process, no mount.
 */
export function useAgent(prefix: string, over: Partial<AgentConfig> | (() => Partial<AgentConfig>) = {}): () => TestAgent {
  let t: TestAgent | undefined;
  beforeAll(async () => {
    t = await startAgent(typeof over === 'function' ? over() : over);
  });
  afterAll(async () => {
    const dir = t?.dir;
    await t?.close();
    expect(crunContainers(prefix)).toEqual([]);
    if (dir) {
      expect(runnerProcesses(dir)).toEqual([]);
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(dir)).toBe(false);
    }
  });
  return () => t!;
}
