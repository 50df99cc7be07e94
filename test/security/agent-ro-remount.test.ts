// A read-only bind whose remount the kernel refuses must fail the request and leave nothing
// mounted, never a writable bind. As root on this host every remount succeeds; in a user
// namespace the flags of the mounts inherited from the parent namespace (here nosuid, nodev)
// are locked, and a remount that would clear them is refused (EPERM). So the agent runs there,
// as its own process in local mode, and is asked for a read-only bind of such a mount.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { parseMountInfo } from '../../sys/mount.js';
import { sleep } from '../agent/helpers.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

describe('a read-only bind the kernel will not make read-only', () => {
  let dir = '';
  let locked = '';
  let agent: ChildProcess | undefined;
  let client: Client | undefined;
  let svc: ReturnType<typeof serviceClient<'grpc.AgentService'>>;
  let stateDir = '';

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-ro-'));
    locked = path.join(dir, 'locked');
    fs.mkdirSync(locked);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'nosuid,nodev,size=1m', 'tmpfs', locked]);
    fs.writeFileSync(path.join(locked, 'data'), 'host data\n');
    stateDir = path.join(dir, 'state');
    const sock = path.join(dir, 'agent.sock');
    agent = spawn(
      'unshare',
      ['--user', '--map-root-user', '--mount', '--propagation', 'private', '--', path.join(repo, 'node_modules/.bin/tsx'), path.join(repo, 'agent/main.ts'), '--listen', sock, '--state-dir', stateDir, '--log-level', 'warn'],
      { stdio: ['ignore', 'ignore', 'inherit'], detached: true },
    );
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (i > 600 || agent.exitCode !== null) throw new Error('agent in a user namespace did not start');
      await sleep(50);
    }
    client = await Client.connect(sock);
    svc = serviceClient(client, 'grpc.AgentService');
  });

  afterAll(async () => {
    await client?.close();
    if (agent?.pid) {
      const exited = new Promise((r) => agent!.once('exit', r));
      process.kill(-agent.pid, 'SIGTERM');
      await Promise.race([exited, sleep(10_000)]);
      if (agent.exitCode === null && agent.signalCode === null) process.kill(-agent.pid, 'SIGKILL');
    }
    if (locked) execFileSync('umount', [locked]);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** The agent's mounts (its own mount namespace) at `mp`. */
  const agentMounts = (mp: string) => parseMountInfo(fs.readFileSync(`/proc/${agent!.pid}/mountinfo`, 'utf8')).filter((m) => m.mountPoint === mp);

  it('fails the request and leaves nothing mounted; with the locked flags kept it is read-only', async () => {
    const mp = path.join(stateDir, 'sandbox', 'storage', 'ro');
    const storage = (options: string[]) => ({ driver: 'virtio-fs', source: locked, fstype: 'bind', mount_point: mp, options });
    const err = await svc.CreateSandbox({ hostname: 'ro', sandbox_id: 'ro-1', storages: [storage(['ro'])] }).catch((e) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/remount/);
    expect(agentMounts(mp)).toEqual([]);
    // The same bind keeping nosuid,nodev may be remounted: it is, read-only.
    await svc.CreateSandbox({ hostname: 'ro', sandbox_id: 'ro-2', storages: [storage(['ro', 'nosuid', 'nodev'])] });
    const m = agentMounts(mp);
    expect(m).toHaveLength(1);
    expect(m[0]!.options).toContain('ro');
    await svc.DestroySandbox({});
    expect(agentMounts(mp)).toEqual([]);
    expect(fs.readFileSync(path.join(locked, 'data'), 'utf8')).toBe('host data\n');
  });
});
