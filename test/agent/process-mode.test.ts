// The agent as its own process: `tsx agent/main.ts --listen` (local mode), the esbuild bundle
// with its runner beside it, and guest mode on a character-device channel (a pty that socat
// joins to a unix socket, as QEMU joins a virtio-serial port to its chardev socket).
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, Code } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { buildAgent } from '../../agent/build.js';
import { busyboxRootfs, containerSpec, crunContainers, readAll, removeTestCrunRoot, runnerProcesses, sleep, TEST_CGROUP_PARENT, TEST_CRUN_ROOT, type TestAgent } from './helpers.js';
import { allowAllPolicy } from '../../policy/allow-all.js';

const repo = path.resolve(import.meta.dirname, '..', '..');

async function waitFor(file: string, ms = 20_000, agent?: Agent): Promise<void> {
  const end = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (agent) agent.assertRunning();
    if (Date.now() > end) throw new Error(`${file} did not appear`);
    await sleep(50);
  }
}

/** A spawned agent whose stderr is kept (its last 64 KiB), so a failure says why the agent went away. */
interface Agent {
  proc: ChildProcess;
  stderr(): string;
  assertRunning(): void;
}

/**
 * Starts an agent process in this test process's own cgroup parent and crun root, so the
 * afterAll checks see its containers and suites in other processes never share them.
 */
function spawnAgent(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Agent {
  const proc = spawn(cmd, [...args, '--cgroup-parent', TEST_CGROUP_PARENT, '--crun-root', TEST_CRUN_ROOT], { stdio: ['ignore', 'ignore', 'pipe'], env });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-65_536);
  });
  const agent: Agent = {
    proc,
    stderr: () => err,
    assertRunning() {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`agent exited (${proc.exitCode ?? proc.signalCode}): ${err}`);
    },
  };
  return agent;
}

/** Waits for the agent's socket and connects; an agent that died says so with its stderr. */
async function connectAgent(agent: Agent, sock: string): Promise<Client> {
  await waitFor(sock, 20_000, agent);
  try {
    return await Client.connect(sock);
  } catch (e) {
    await sleep(200); // let the exit event arrive, if that is what happened
    agent.assertRunning();
    throw new Error(`${(e as Error).message}; agent still running, stderr: ${agent.stderr()}`);
  }
}

function stop(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
  });
}

async function smoke(client: Client, rootfs: string, cid: string): Promise<void> {
  const svc = serviceClient(client, 'grpc.AgentService');
  const health = serviceClient(client, 'grpc.Health');
  expect((await health.Check({})).status).toBe(1);
  await svc.CreateContainer({ container_id: cid, OCI: containerSpec(rootfs, ['sh', '-c', 'echo from $0; exit 7', cid]) });
  await svc.StartContainer({ container_id: cid });
  const out = await readAll({ svc } as TestAgent, cid);
  expect(out.toString()).toBe(`from ${cid}\n`);
  expect((await svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(7);
  await svc.RemoveContainer({ container_id: cid });
  const e = await svc.StartContainer({ container_id: cid }).catch((x) => x);
  expect(e.code).toBe(Code.NotFound);
}

describe('agent as a process', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-agentp-'));
  const rootfs = busyboxRootfs(dir);
  const procs: ChildProcess[] = [];
  afterAll(async () => {
    await Promise.all(procs.map(stop));
    fs.rmSync(dir, { recursive: true, force: true });
    expect(crunContainers('pm-')).toEqual([]);
    expect(runnerProcesses(dir)).toEqual([]);
    removeTestCrunRoot();
    expect(fs.existsSync(TEST_CRUN_ROOT)).toBe(false);
  });

  it('local mode: tsx agent/main.ts --listen SOCK --state-dir DIR', async () => {
    const sock = path.join(dir, 'tsx.sock');
    const a = spawnAgent(path.join(repo, 'node_modules/.bin/tsx'), [path.join(repo, 'agent/main.ts'), '--listen', sock, '--state-dir', path.join(dir, 'state-tsx'), '--log-file', path.join(dir, 'tsx.log')]);
    const p = a.proc;
    procs.push(p);
    const c = await connectAgent(a, sock);
    await smoke(c, rootfs, 'pm-tsx');
    await c.close();
    await stop(p);
    const log = fs.readFileSync(path.join(dir, 'tsx.log'), 'utf8');
    expect(log).toContain('"container_id":"pm-tsx"');
    expect(log).toContain('agent stopping');
  }, 60_000);

  describe('the bundle', () => {
    let out = '';
    beforeAll(async () => {
      out = path.join(dir, 'dist');
      await buildAgent(out);
    }, 60_000);

    it('builds one agent.js with the runner beside it, and serves on a socket', async () => {
      expect(fs.existsSync(path.join(out, 'agent.js'))).toBe(true);
      expect(fs.statSync(path.join(out, 'katats-runner')).mode & 0o111).not.toBe(0);
      const text = fs.readFileSync(path.join(out, 'agent.js'), 'utf8');
      expect(text).not.toMatch(/require\(["'](pino|protobufjs)["']\)/);
      const sock = path.join(dir, 'bundle.sock');
      const a = spawnAgent(process.execPath, [path.join(out, 'agent.js'), '--listen', sock, '--state-dir', path.join(dir, 'state-bundle')]);
      const p = a.proc;
      procs.push(p);
      const c = await connectAgent(a, sock);
      await smoke(c, rootfs, 'pm-bundle');
      await c.close();
      await stop(p);
    }, 60_000);

    it('katats-runner init reaps orphans, passes SIGTERM on and exits with its child (the guest\'s PID 1, tried as a subreaper)', async () => {
      const runner = path.join(out, 'katats-runner');
      const run = (args: string[], signalAfterMs?: number) =>
        new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const p = spawn(runner, ['init', '--', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
          let stderr = '';
          p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
          if (signalAfterMs !== undefined) setTimeout(() => p.kill('SIGTERM'), signalAfterMs);
          p.on('close', (code) => resolve({ code, stderr }));
        });
      // Two grandchildren outlive their parent; they come to the init and are reaped before it ends.
      const orphans = await run(['sh', '-c', 'sh -c "sleep 0.2 & sleep 0.3 &"; sleep 1; exit 5']);
      expect(orphans.code).toBe(5);
      expect(orphans.stderr).toMatch(/sh exited with status 5; 2 orphan\(s\) reaped/);
      const term = await run(['sh', '-c', 'trap "exit 9" TERM; while :; do sleep 0.05; done'], 300);
      expect(term.code).toBe(9);
      const missing = await run(['/nonexistent/prog']);
      expect(missing.code).toBe(127);
      expect(missing.stderr).toMatch(/exec \/nonexistent\/prog/);
      // A node that refuses its startup snapshot exits 1 before the agent runs: it is started again
      // without it, once, however long the refusal took (a loaded host made it outlast a time window).
      const refusing = 'for a in "$@"; do [ "$a" = --snapshot-blob ] && { sleep 11; exit 1; }; done; echo "$@" >&2; exit 6';
      const snap = await run(['sh', '-c', refusing, 'node', '--snapshot-blob', '/x.blob', 'agent.js']);
      expect(snap.code).toBe(6);
      expect(snap.stderr).toMatch(/ended with the startup snapshot before serving; starting it without/);
      expect(snap.stderr).toMatch(/^agent\.js$/m);
      // An agent that said it serves and then exits 1 ends the init: its exit is its own.
      const served = await run(['sh', '-c', 'printf r >&"$KATATS_INIT_READY_FD"; exit 1', 'node', '--snapshot-blob', '/x.blob', 'agent.js']);
      expect(served.code).toBe(1);
      expect(served.stderr).not.toMatch(/starting it without/);
      // Without the snapshot argument a status 1 is just the program's exit.
      const plain = await run(['sh', '-c', 'exit 1', 'node', 'agent.js']);
      expect(plain.code).toBe(1);
      expect(plain.stderr).not.toMatch(/starting it without/);
    }, 60_000);

    it('guest mode: serves the channel device from KATATS_AGENT_CHANNEL and checks SetPolicy against KATATS_HOST_DATA', async () => {
      const port = path.join(dir, 'vport0p1');
      const hostSock = path.join(dir, 'chardev.sock');
      // socat stands in for QEMU: a character device on the guest side, a unix socket on the host side.
      const socat = spawn('socat', [`UNIX-LISTEN:${hostSock},fork`, `PTY,link=${port},raw,echo=0`], { stdio: 'ignore' });
      procs.push(socat);
      await waitFor(hostSock);
      // The pod's policy: allow-all with a comment of its own (its digest differs from the default's).
      const policy = `# the pod's\n${allowAllPolicy()}`;
      const defaultPolicy = path.join(dir, 'default-policy.rego');
      fs.writeFileSync(defaultPolicy, allowAllPolicy());
      const hostData = path.join(dir, 'host_data');
      fs.writeFileSync(hostData, createHash('sha256').update(policy).digest());
      // The pty exists once a host side connects; the agent opens it then.
      const raw = net.connect(hostSock);
      await new Promise((r) => raw.once('connect', r));
      await waitFor(port);
      const a = spawnAgent(process.execPath, [path.join(out, 'agent.js'), '--state-dir', path.join(dir, 'state-guest')], {
        ...process.env,
        KATATS_AGENT_CHANNEL: port,
        KATATS_HOST_DATA: hostData,
        KATATS_POLICY_FILE: defaultPolicy,
      });
      const p = a.proc;
      procs.push(p);
      const c = new Client(raw);
      const health = serviceClient(c, 'grpc.Health');
      for (let i = 0; ; i++) {
        try {
          expect((await health.Check({}, { timeoutMs: 500 })).status).toBe(1);
          break;
        } catch (e) {
          a.assertRunning();
          if (i > 40) throw e;
        }
      }
      const svc = serviceClient(c, 'grpc.AgentService');
      // Bound by the launch data: nothing before its policy, and no other policy.
      const early = await svc.GetGuestDetails({}).catch((e) => e);
      expect(early.code).toBe(Code.PermissionDenied);
      const bad = await svc.SetPolicy({ policy: policy + 'x' }).catch((e) => e);
      expect(bad.code).toBe(Code.PermissionDenied);
      await svc.SetPolicy({ policy });
      await smoke(c, rootfs, 'pm-guest');
      await c.close();
      await stop(p);
      await stop(socat);
    }, 60_000);
  });
});
