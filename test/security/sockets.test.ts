// A shim never unlinks a live socket, and two daemons never serve one pod: containerd's rule for
// shim sockets (a second start finds the running shim and returns its address; only a socket
// nothing listens on may be removed). Attacks: a second listener on a live path, and two
// `start`s of one pod at once.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, dialUnix, Server } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { tempDir } from '../support/tmp.js';
import { shimHost, until, type ShimHost } from './shim-host.js';

function canConnect(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** A unix socket file nothing listens on: its owner was killed before it could unlink it. */
async function staleSocket(p: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(p)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}

describe('ttrpc Server.listen', () => {
  const t = tempDir('kt-sock-');
  afterAll(() => t.cleanup());

  it('refuses a live socket with EADDRINUSE and leaves it serving', async () => {
    const p = path.join(t.dir, 'live.sock');
    const a = new Server();
    a.registerRaw('t.S', { Echo: (b) => b });
    await a.listen(p);
    const ino = fs.statSync(p).ino;
    const b = new Server();
    const err = (await b.listen(p).catch((e: unknown) => e)) as NodeJS.ErrnoException;
    expect(err.code).toBe('EADDRINUSE');
    expect(err.message).toContain(p);
    expect(fs.statSync(p).ino).toBe(ino);
    const c = await Client.connect(p);
    expect(Buffer.from(await c.call('t.S', 'Echo', Buffer.from('still a')))).toEqual(Buffer.from('still a'));
    await c.close();
    await a.close();
    await b.close();
  });

  it('replaces a stale socket, and never removes a file that is not a socket', async () => {
    const p = path.join(t.dir, 'stale.sock');
    await staleSocket(p);
    expect(fs.lstatSync(p).isSocket()).toBe(true);
    expect(await canConnect(p)).toBe(false);
    const s = new Server();
    await s.listen(p);
    expect(await canConnect(p)).toBe(true);
    await s.close();
    const f = path.join(t.dir, 'plain');
    fs.writeFileSync(f, 'not a socket');
    const err = (await new Server().listen(f).catch((e: unknown) => e)) as NodeJS.ErrnoException;
    expect(err.code).toBe('EEXIST');
    expect(fs.readFileSync(f, 'utf8')).toBe('not a socket');
  });

  it('makes the socket 0600 whatever the umask', async () => {
    const p = path.join(t.dir, 'mode.sock');
    const old = process.umask(0);
    try {
      const s = new Server();
      await s.listen(p);
      expect(fs.statSync(p).mode & 0o777).toBe(0o600);
      await s.close();
    } finally {
      process.umask(old);
    }
  });
});

describe('shim start', () => {
  let h: ShimHost;
  beforeAll(async () => {
    h = await shimHost();
  }, 120_000);
  afterAll(() => h?.cleanup());

  const address = (out: string) => out.trim();

  it('against a live socket returns its address without touching it', async () => {
    const first = await h.run('start', 'live1', h.bundle('live1'));
    expect(first.code, first.stderr).toBe(0);
    const sock = address(first.stdout).replace(/^unix:\/\//, '');
    const ino = fs.statSync(sock).ino;
    const again = await h.run('start', 'live1', h.bundle('live1'));
    expect(again.code, again.stderr).toBe(0);
    expect(address(again.stdout)).toBe(address(first.stdout));
    expect(fs.statSync(sock).ino).toBe(ino);
    expect(h.daemons().length).toBe(1);
    await h.shutdown(address(first.stdout));
    expect(await until(() => h.daemons(), (d) => d.length === 0)).toEqual([]);
    // Its last words reach its log before it exits.
    expect(fs.readFileSync(path.join(h.logDir, 'live1.log'), 'utf8')).toContain('"msg":"shim exiting"');
  }, 120_000);

  it('two starts of one pod at once yield one daemon and the same address', async () => {
    const ann = { 'io.kubernetes.cri.sandbox-id': 'podx' };
    // A stale socket from a killed daemon makes both starters want to replace it.
    const [r1, r2] = await Promise.all([h.run('start', 'podx', h.bundle('podx', ann)), h.run('start', 'appx', h.bundle('appx', ann))]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r2.code, r2.stderr).toBe(0);
    expect(address(r2.stdout)).toBe(address(r1.stdout));
    expect(h.daemons().length).toBe(1);
    const sock = address(r1.stdout).replace(/^unix:\/\//, '');
    expect(await canConnect(sock)).toBe(true);
    await h.shutdown(address(r1.stdout));
    expect(await until(() => h.daemons(), (d) => d.length === 0)).toEqual([]);
    // Once more with a stale socket at the pod's address.
    await staleSocket(sock);
    const [s1, s2, s3] = await Promise.all(['podx', 'appx', 'appy'].map((id) => h.run('start', id, h.bundle(id, ann))));
    for (const r of [s1, s2, s3]) {
      expect(r!.code, r!.stderr).toBe(0);
      expect(address(r!.stdout)).toBe(address(r1.stdout));
    }
    expect(h.daemons().length).toBe(1);
    await h.shutdown(address(r1.stdout));
    expect(await until(() => h.daemons(), (d) => d.length === 0)).toEqual([]);
  }, 120_000);

  it('a daemon that fails after "ready", while it loads, closes its socket: the call queued there fails at once', async () => {
    // An install whose daemon bundle is broken: `start` succeeds (the socket is bound before the
    // daemon's code loads), so the failure must reach containerd's first call, not leave it waiting.
    const dist = path.join(h.dir, 'broken-dist');
    fs.mkdirSync(path.join(dist, 'bin'), { recursive: true });
    const built = path.dirname(path.dirname(h.shim));
    for (const f of fs.readdirSync(built).filter((f) => f.startsWith('shim'))) fs.copyFileSync(path.join(built, f), path.join(dist, f));
    fs.writeFileSync(path.join(dist, 'shim-daemon.cjs'), "throw new Error('the daemon bundle is broken');\n");
    const shim = path.join(dist, 'bin', 'containerd-shim-katats-v2');
    fs.writeFileSync(shim, `#!/bin/sh\nexec ${process.execPath} ${path.join(dist, 'shim.mjs')} "$@"\n`, { mode: 0o755 });
    const r = await h.run('start', 'broken', h.bundle('broken'), { shim });
    expect(r.code, r.stderr).toBe(0);
    const sock = address(r.stdout).replace(/^unix:\/\//, '');
    const client = new Client(() => dialUnix(sock));
    const t0 = Date.now();
    const err = (await serviceClient(client, 'containerd.task.v2.Task')
      .Connect({ id: 'broken' }, { timeoutMs: 60_000 })
      .catch((e: unknown) => e)) as Error;
    await client.close();
    expect(err).toBeInstanceOf(Error);
    expect(Date.now() - t0).toBeLessThan(30_000);
    // The daemon is gone, said why in its log, and took its socket with it.
    expect(await until(() => h.daemons(), (d) => d.length === 0)).toEqual([]);
    expect(fs.readFileSync(path.join(h.logDir, 'broken.log'), 'utf8')).toContain('the daemon bundle is broken');
    expect(fs.existsSync(sock)).toBe(false);
  }, 120_000);
});
