// Bind mounts of a container in a guest without a shared filesystem (shared_fs = none): the shim
// copies each source into the guest with the agent's CopyFile and binds the copy. Against the real
// agent in local mode (its copy root plays the guest's shared directory, crun runs the container):
// CRI's kinds of sources arrive with their bytes, modes, owners and a config map's symlinks, a
// read-only bind stays read-only, the copies go when the container is removed, and what cannot or
// should not be copied is refused naming the mount, with nothing of the container's mounts sent.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { grpc } from '../../proto/gen/types.js';
import { shareContainerFiles, unshareContainerFiles, type ShareRequest } from '../../shim/rootfs-share.js';
import { COPY_LIMITS } from '../../shim/guest-copy.js';
import { sharedDir as agentSharedDir } from '../../agent/places.js';
import { containerSpec, readAll, useAgent } from '../agent/helpers.js';

const agent = useAgent('gcopy-');
let src: string;

beforeAll(() => {
  src = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-gcopy-'));
});
afterAll(() => {
  fs.rmSync(src, { recursive: true, force: true });
});

function share(id: string, spec: grpc.Spec): Promise<string> {
  const t = agent();
  const guest: ShareRequest['guest'] = {
    agent: t.svc,
    sharedFs: 'none',
    sharedDir: path.join(src, 'host-share'),
    guestDirs: { shared: agentSharedDir(t.stateDir), sandboxShm: path.join(t.stateDir, 'sandbox', 'shm') },
  };
  return shareContainerFiles({ id, bundle: src, rootfs: [], spec, guest, podShm: false, rootfsInGuest: true, call: { timeoutMs: 30_000 } });
}

const bind = (source: string, destination: string, ro = true): grpc.Mount => ({ source, destination, type: 'bind', options: ['rbind', ro ? 'ro' : 'rw'] });

describe('bind mounts copied into a guest with shared_fs = none', () => {
  it("CRI's files and a config map arrive with their bytes, modes, owners and symlinks; read-only stays read-only", async () => {
    const t = agent();
    const hosts = path.join(src, 'hosts');
    fs.writeFileSync(hosts, '127.0.0.1 localhost\n10.0.0.7 copied-pod\n');
    fs.chmodSync(hosts, 0o644);
    const log = path.join(src, 'termination-log');
    fs.writeFileSync(log, '');
    // A config map as the kubelet writes it: a timestamped dir, ..data pointing at it, keys through ..data.
    const cm = path.join(src, 'cm');
    fs.mkdirSync(path.join(cm, '..2026_11_30'), { recursive: true });
    fs.writeFileSync(path.join(cm, '..2026_11_30', 'key'), 'value-1\n');
    fs.writeFileSync(path.join(cm, '..2026_11_30', 'secret'), 's3cret\n', { mode: 0o600 });
    fs.chownSync(path.join(cm, '..2026_11_30', 'secret'), 1000, 1001);
    fs.symlinkSync('..2026_11_30', path.join(cm, '..data'));
    fs.symlinkSync('..data/key', path.join(cm, 'key'));
    fs.symlinkSync('..data/secret', path.join(cm, 'secret'));
    // A link out of the tree stays a link: the host's file behind it is not read into the guest.
    fs.symlinkSync('/etc/shadow', path.join(cm, 'escape'));
    // A big file in chunks (CopyFile carries at most 1 MiB each).
    const big = path.join(src, 'big');
    const bigBytes = Buffer.alloc(2_500_000, 'abcdefgh');
    fs.writeFileSync(big, bigBytes);

    const spec = containerSpec(t.rootfs, ['sh', '-c', 'cat /etc/hosts; cat /cm/key; stat -L -c "%a %u:%g" /cm/secret; readlink /cm/key; wc -c < /big; echo x >> /etc/hosts || echo hosts-ro; echo died > /dev/termination-log && cat /dev/termination-log'], {
      mounts: [bind(hosts, '/etc/hosts'), bind(cm, '/cm'), bind(big, '/big'), bind(log, '/dev/termination-log', false)],
    }) as grpc.Spec;
    const hostDir = await share('gcopy-1', spec);
    // Nothing is mounted on the host for it: the sources were copied, and the spec names the copies.
    expect(fs.existsSync(path.join(hostDir, 'mounts'))).toBe(false);
    const copies = spec.Mounts.filter((m) => m.type === 'bind');
    for (const m of copies) expect(m.source.startsWith(`${agentSharedDir(t.stateDir)}/gcopy-1/mounts/`)).toBe(true);
    expect(copies.map((m) => m.options)).toEqual([['rbind', 'ro'], ['rbind', 'ro'], ['rbind', 'ro'], ['rbind', 'rw']]);
    const cmCopy = copies[1]!.source;
    expect(fs.readlinkSync(path.join(cmCopy, '..data'))).toBe('..2026_11_30');
    expect(fs.readlinkSync(path.join(cmCopy, 'escape'))).toBe('/etc/shadow');
    const st = fs.statSync(path.join(cmCopy, '..2026_11_30', 'secret'));
    expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o600, 1000, 1001]);

    await t.svc.CreateContainer({ container_id: 'gcopy-1', OCI: spec });
    await t.svc.StartContainer({ container_id: 'gcopy-1' });
    const [out, err] = await Promise.all([readAll(t, 'gcopy-1'), readAll(t, 'gcopy-1', '', 'ReadStderr')]);
    await t.svc.WaitProcess({ container_id: 'gcopy-1', exec_id: '' });
    await t.svc.RemoveContainer({ container_id: 'gcopy-1' });
    await unshareContainerFiles(hostDir);
    // The copies go with the container: the guest's memory holds nothing of it any more.
    expect(fs.existsSync(path.join(agentSharedDir(t.stateDir), 'gcopy-1'))).toBe(false);
    expect(out.toString(), err.toString()).toBe(
      ['127.0.0.1 localhost', '10.0.0.7 copied-pod', 'value-1', '600 1000:1001', '..data/key', String(bigBytes.length), 'hosts-ro', 'died', ''].join('\n'),
    );
    expect(err.toString()).toMatch(/Read-only file system/);
    // The host's files are untouched: the container wrote to its copies.
    expect(fs.readFileSync(log, 'utf8')).toBe('');
  });

  it('refuses sockets, FIFOs, devices and trees over the cap, naming the mount, and sends nothing of the container\'s mounts', async () => {
    const t = agent();
    const good = path.join(src, 'good');
    fs.writeFileSync(good, '127.0.0.1 localhost\n');
    const sock = path.join(src, 'agent.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(sock, r));
    const fifo = path.join(src, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const blk = path.join(src, 'blk');
    execFileSync('mknod', [blk, 'b', '7', '250']);
    const huge = path.join(src, 'huge');
    fs.mkdirSync(huge);
    // Sparse: the cap counts the size a copy would take in the guest's memory.
    fs.writeFileSync(path.join(huge, 'data'), '');
    fs.truncateSync(path.join(huge, 'data'), COPY_LIMITS.bytes + 1);
    const many = path.join(src, 'many');
    fs.mkdirSync(many);
    for (let i = 0; i <= COPY_LIMITS.entries; i++) fs.writeFileSync(path.join(many, `f${i}`), '');
    try {
      const cases: [string, string, RegExp][] = [
        [sock, '/run/app.sock', /is a socket/],
        [fifo, '/run/fifo', /is a FIFO/],
        [blk, '/dev/xvdz', /is a block device/],
        [huge, '/data', /at most 1024 entries and 16 MiB per mount/],
        [many, '/many', /at most 1024 entries and 16 MiB per mount/],
      ];
      for (const [source, destination, why] of cases) {
        // A good mount before the bad one: nothing of either reaches the guest.
        const spec = containerSpec(t.rootfs, ['true'], { mounts: [bind(good, '/etc/hosts'), bind(source, destination)] }) as grpc.Spec;
        const e = (await share('gcopy-bad', spec).catch((x: unknown) => x)) as Error;
        expect(e, destination).toBeInstanceOf(Error);
        expect(e.message).toContain(`container gcopy-bad: bind mount of ${source} at ${destination}`);
        expect(e.message).toMatch(why);
        expect(fs.existsSync(path.join(agentSharedDir(t.stateDir), 'gcopy-bad'))).toBe(false);
      }
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
