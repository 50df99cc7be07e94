// A private containerd (bookworm's 1.6, and sid's 2.x where its .deb can be had) with runc and gVisor:
// it starts and stops cleanly, the busybox image imports, `ctr run --rm` prints the right kernel,
// exit codes propagate, and nothing is left behind.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OVERHEAD_ROOT } from '../../shim/sandbox-cgroups.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { spawn } from 'node:child_process';
import { bundleIds, containerdBinaries, reapStaleInstances, startContainerd, type Containerd, type ContainerdBinaries, type ContainerdFlavor } from '../../harness/containerd.js';
import { cleanupRunsc, prepareRunsc, runscRuntime, type Runsc } from '../../harness/runsc.js';
import { listProcs, procsMatching } from '../../harness/procs.js';
import { mountsUnder } from '../../harness/mounts.js';
import { busyboxImage, BUSYBOX_INDEX, type BusyboxImage } from '../../harness/images/busybox.js';
import { REPO_ROOT } from '../../harness/paths.js';

const progress = (line: string) => process.stderr.write(line + '\n');

const FLAVORS: ContainerdFlavor[] = ['bookworm', 'sid'];

describe.each(FLAVORS)('private containerd (%s)', (flavor) => {
  let bins: ContainerdBinaries | undefined;
  let binsError = '';
  let runsc: Runsc | undefined;
  let runscError = '';
  let cd: Containerd | undefined;
  let img: BusyboxImage;

  beforeAll(async () => {
    try {
      bins = await containerdBinaries(flavor, { onProgress: progress });
    } catch (err) {
      binsError = `containerd of ${flavor} is not available here: ${(err as Error).message}`;
      return;
    }
    try {
      runsc = await prepareRunsc({ onProgress: progress });
    } catch (err) {
      runscError = `runsc (Debian's package) is not available here: ${(err as Error).message}`;
    }
    img = await busyboxImage({ onProgress: progress });
    // A shim registered by path under another runtime name (the slot katats' shim will use): here the
    // runc shim itself, linked as containerd-shim-relabelled-v2.
    const relabelled = { name: 'relabelled', runtimeType: 'io.containerd.relabelled.v2', shimBinary: path.join(bins.binDir, 'containerd-shim-runc-v2') };
    cd = await startContainerd({ binaries: bins, runtimes: [relabelled, ...(runsc ? [runscRuntime(runsc)] : [])], onProgress: progress });
  }, 300_000);

  afterAll(async () => {
    await cd?.stop();
  }, 60_000);

  // The test command installs containerd and fetches runsc: their absence is a failure, not a skip.
  const need = (): Containerd => {
    if (!cd) throw new Error(binsError || 'containerd did not start');
    return cd;
  };
  const needRunsc = (): void => {
    if (!runsc) throw new Error(runscError);
  };

  test('starts with its own root, state and sockets, and answers', async () => {
    const c = need();
    expect(fs.statSync(c.address).isSocket()).toBe(true);
    expect(fs.statSync(c.ttrpcAddress).isSocket()).toBe(true);
    const v = await c.ctrOk(['version']);
    expect(v.stdout).toMatch(/Server:[\s\S]*Version:/);
    expect(v.stdout).toContain(bins!.version.split('+')[0]!.split('~')[0]!);
    const cfg = fs.readFileSync(c.configFile, 'utf8');
    expect(cfg).toContain(`root = "${c.root}"`);
    expect(cfg).toContain(`state = "${c.state}"`);
    expect(cfg).toMatch(/disabled_plugins = \[[^\]]*io\.containerd\.grpc\.v1\.cri/);
    // The default snapshotter is overlayfs.
    const plugins = await c.ctrOk(['plugins', 'ls']);
    expect(plugins.stdout).toMatch(/io\.containerd\.snapshotter\.v1\s+overlayfs\s+\S+\s+ok/);
  });

  test('the busybox OCI archive imports under both names', async () => {
    const c = need();
    await c.importImage(img.archive, BUSYBOX_INDEX);
    const names = await c.images();
    expect(names).toContain(img.name);
    expect(names).toContain(BUSYBOX_INDEX);
    const ls = await c.ctrOk(['images', 'ls']);
    expect(ls.stdout).toContain(img.manifest.digest);
    const content = await c.ctrOk(['content', 'ls', '-q']);
    for (const d of [img.manifest.digest, img.config.digest, img.layer.digest]) expect(content.stdout).toContain(d);
  });

  test('runc: ctr run --rm prints the host kernel', async () => {
    const c = need();
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runc'), img.name, 'uname-runc', 'uname', '-r']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(os.release());
  });

  test('runc: the exit code propagates', async () => {
    const c = need();
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runc'), img.name, 'exit-runc', 'sh', '-c', 'exit 3']);
    expect(r.code).toBe(3);
  });

  test('a runtime registered with its own shim binary is found by name', async () => {
    const c = need();
    expect(c.runtimeArgs('relabelled')).toEqual(['--runtime', 'io.containerd.relabelled.v2']);
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('relabelled'), img.name, 'relabelled', 'sh', '-c', 'echo via-relabelled; exit 4']);
    expect(r.stdout.trim()).toBe('via-relabelled');
    expect(r.code).toBe(4);
  });

  test('runsc: ctr run --rm prints gVisor\'s kernel', async () => {
    const c = need();
    needRunsc();
    const id = 'uname-runsc';
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runsc'), img.name, id, 'uname', '-r']);
    if (r.code !== 0) await cleanupRunsc(c, id);
    expect(r.code, `runsc cannot run here: ${r.stderr.trim().slice(-500)}`).toBe(0);
    expect(r.stdout.trim()).toBe('4.4.0');
  });

  test('runsc: the exit code propagates', async () => {
    const c = need();
    needRunsc();
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runsc'), img.name, 'exit-runsc', 'sh', '-c', 'exit 3']);
    expect(r.code).toBe(3);
  });

  test('runsc: a shell that waits for a busy pipeline survives', async () => {
    // Debian sid's Go 1.26 build of runsc panics here (see harness/runsc.ts); trixie's does not.
    const c = need();
    needRunsc();
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runsc'), img.name, 'pipe-runsc', 'sh', '-c', 'dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum; echo done']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351  -\ndone\n');
    expect(r.code).toBe(0);
  });

  test('runsc: a failed start is cleaned up completely', async () => {
    const c = need();
    needRunsc();
    const id = 'broken-runsc';
    const r = await c.ctr(['run', '--rm', ...c.runtimeArgs('runsc'), img.name, id, '/no/such/binary']);
    expect(r.code).not.toBe(0);
    await cleanupRunsc(c, id);
    const bundle = path.join(c.state, 'io.containerd.runtime.v2.task', c.namespace, id);
    expect(procsMatching((p) => p.cmdline.includes(bundle) || p.cmdline.includes(`-id ${id} `))).toEqual([]);
    expect(mountsUnder(bundle)).toEqual([]);
    expect(fs.existsSync(c.shimSocketPath(id))).toBe(false);
    expect((await c.ctrOk(['containers', 'ls', '-q'])).stdout).not.toContain(id);
  });

  test('stops and leaves nothing behind', async () => {
    const c = need();
    // A running container of each runtime, left for stop() to clean up after a polite check.
    await c.ctrOk(['run', '-d', ...c.runtimeArgs('runc'), img.name, 'idle-runc', 'sleep', '600']);
    if (runsc) await c.ctrOk(['run', '-d', ...c.runtimeArgs('runsc'), img.name, 'idle-runsc', 'sleep', '600']);
    expect(c.leftovers().procs.length).toBeGreaterThan(0);
    const report = await c.stop();
    cd = undefined;
    // The running tasks went through containerd; nothing needed killing or unmounting.
    expect(report.tasksRemoved.sort()).toEqual(runsc ? ['idle-runc', 'idle-runsc'] : ['idle-runc']);
    expect(report.killed).toEqual([]);
    expect(report.unmounted).toEqual([]);
    expect(fs.existsSync(c.dir)).toBe(false);
    expect(procsMatching([c.dir + '/', c.namespace])).toEqual([]);
    expect(listProcs().some((p) => p.pid === c.pid)).toBe(false);
    expect(mountsUnder(c.dir)).toEqual([]);
    for (const ctl of fs.readdirSync('/sys/fs/cgroup')) expect(fs.existsSync(path.join('/sys/fs/cgroup', ctl, c.namespace))).toBe(false);
    expect(fs.existsSync(path.join('/run/containerd/runc', c.namespace))).toBe(false);
    for (const id of ['idle-runc', 'idle-runsc', 'uname-runc', 'uname-runsc', 'broken-runsc']) expect(fs.existsSync(c.shimSocketPath(id))).toBe(false);
  }, 120_000);
});

describe('an instance whose owner died', () => {
  test('is reaped: containerd, shim, container, cgroups, socket and dirs', async () => {
    // node itself (with tsx as a loader), so that the pid we kill is the owner the instance records.
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'support', 'orphan-owner.ts')], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('\n')) resolve(buf.trim());
      });
      child.once('exit', (code) => reject(new Error(`orphan owner exited early (${code})`)));
    });
    const [, dir, namespace, socket] = line.split(' ') as [string, string, string, string];
    expect(procsMatching([dir + '/']).length).toBeGreaterThanOrEqual(2); // containerd and the shim
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
    expect(Number(fs.readFileSync(path.join(dir, 'owner'), 'utf8'))).toBe(child.pid);
    // What a katats shim killed with its test leaves: an empty katats_overhead/<id> per hierarchy.
    const ids = bundleIds(path.join(dir, 'state'));
    expect(ids.length).toBeGreaterThan(0);
    const overhead = fs.readdirSync('/sys/fs/cgroup').flatMap((ctl) => ids.map((id) => path.join('/sys/fs/cgroup', ctl, OVERHEAD_ROOT, id)));
    for (const d of overhead) fs.mkdirSync(d, { recursive: true });
    expect(await reapStaleInstances()).toContain(dir);
    for (const d of overhead) expect(fs.existsSync(d), d).toBe(false);
    expect(procsMatching([dir + '/'])).toEqual([]);
    expect(fs.existsSync(dir)).toBe(false);
    expect(fs.existsSync(socket)).toBe(false);
    for (const ctl of fs.readdirSync('/sys/fs/cgroup')) expect(fs.existsSync(path.join('/sys/fs/cgroup', ctl, namespace))).toBe(false);
  }, 60_000);
});
