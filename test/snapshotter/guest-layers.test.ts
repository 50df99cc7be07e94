// Verified layers in a real QEMU guest (TCG unless KVM was proven), through bookworm's containerd
// 1.6 and ctr with `--snapshotter tardev` and katats configured with shared_fs = none: nothing of
// the host's filesystem reaches the guest, each layer file is hot-plugged read-only and opened
// through dm-verity with the root hash the snapshotter computed. A three-layer image (whiteouts, an
// opaque dir) runs from its layers; a byte flipped in a layer file on the host makes the create
// fail with the agent's verity error naming the layer while the pod serves the next request; a
// byte flipped under a running container makes the read of that block fail, and nothing else; two
// pods of the image open the same layer files read-only.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../../harness/containerd.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { layeredImage, LAYERED_BIG, LAYERED_EXPECT, LAYERED_INDEX, type LayeredImage } from '../../harness/images/layered.js';
import { listProcs } from '../../harness/procs.js';
import { SnapshotterProcess, untilContainerdReaches } from '../../harness/snapshotter.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { chainIdOf } from '../../snapshotter/resolve.js';
import { layerName } from '../../snapshotter/store.js';
import { katatsEnv, type KatatsEnv } from '../shim/katats-env.js';
import * as helpers from '../shim/shim-helpers.js';

const POD = 'layerpod';
const GROUP = ['--annotation', `io.containerd.runc.v2.group=${POD}`];
const tardev = ['--snapshotter', 'tardev'];
let env: KatatsEnv;
let cd: Containerd;
let sn: SnapshotterProcess;
let img: LayeredImage;
let busybox: string;
let chains: string[];
const logsOf = (sandbox: string) => helpers.logsOf(env.logDir, sandbox, cd.logFile, 30);
const layerFile = (i: number) => path.join(sn.root, 'layers', layerName(chains[i]!));

/** Flips one bit of the layer file in the block holding line `line` of /data/big (layer 2); returns the undo. */
function flipInBig(line: number): () => void {
  const file = layerFile(1);
  const bytes = fs.readFileSync(file);
  const at = bytes.indexOf(Buffer.from(`big-block line ${String(line).padStart(5, '0')}`));
  if (at < 0) throw new Error(`line ${line} of ${LAYERED_BIG.path} not found in ${file}`);
  const fd = fs.openSync(file, 'r+');
  const flip = () => {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0]! ^= 0x20;
    fs.writeSync(fd, b, 0, 1, at);
    fs.fsyncSync(fd);
  };
  flip();
  return () => {
    flip();
    fs.closeSync(fd);
  };
}

beforeAll(async () => {
  const { binDir } = await buildHostBinaries(() => {});
  env = await katatsEnv({ qemuToml: 'shared_fs = "none"' });
  img = await layeredImage();
  let chain = '';
  chains = img.diffIds.map((d) => (chain = chainIdOf(chain, d)));
  sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
  cd = await startContainerd({ runtimes: [env.runtime], proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }] });
  await sn.start(30_000, cd.address);
  await untilContainerdReaches(cd, 'tardev');
  await cd.ctrOk(['images', 'import', ...tardev, '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000 });
  const bb = await busyboxImage();
  await cd.ctrOk(['images', 'import', ...tardev, '--index-name', 'katats.local/busybox:index', bb.archive], { timeoutMs: 300_000 });
  busybox = bb.name;
}, 900_000);

afterAll(async () => {
  for (const id of ['lay1', POD, 'lay-run']) {
    await cd?.ctr(['task', 'kill', '-s', 'SIGKILL', id]);
    await cd?.ctr(['task', 'rm', '-f', id]);
    await cd?.ctr(['container', 'rm', id]);
  }
  await cd?.ctr(['images', 'rm', '--sync', img.name, LAYERED_INDEX, busybox, 'katats.local/busybox:index']);
  // Before containerd: its stop would kill the snapshotter, which names it on its command line.
  const unmounted = await sn?.stop();
  await helpers.endKatatsSuite(cd, env);
  expect(unmounted ?? []).toEqual([]);
}, 300_000);

describe('verified layers in a katats guest (shared_fs = none)', () => {
  it('a three-layer image runs from its layers: files, modes, whiteouts and the opaque dir as in the image, a writable upper', async () => {
    const script = [
      ...Object.keys(LAYERED_EXPECT.files).map((f) => `cat ${f}`),
      ...LAYERED_EXPECT.absent.map((f) => `test -e ${f} && echo PRESENT ${f}`),
      ...Object.keys(LAYERED_EXPECT.modes).map((f) => `stat -c '%n %a %u:%g' ${f}`),
      `md5sum ${LAYERED_BIG.path}`,
      'ls /opq',
      'echo written > /data/new && cat /data/new',
      'true',
    ].join('; ');
    // It stays running: the last case compares its VM's open files with another pod's.
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), img.name, 'lay1', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    const r = await cd.ctr(['task', 'exec', '--exec-id', 'check', 'lay1', 'sh', '-c', script]);
    expect(r.code, `${r.stderr}\n${logsOf('lay1')}`).toBe(0);
    for (const text of Object.values(LAYERED_EXPECT.files)) expect(r.stdout).toContain(text);
    expect(r.stdout).not.toMatch(/PRESENT/);
    for (const [f, m] of Object.entries(LAYERED_EXPECT.modes)) expect(r.stdout).toContain(`${f} ${m}`);
    const { createHash } = await import('node:crypto');
    expect(r.stdout).toContain(`${createHash('md5').update(LAYERED_BIG.content()).digest('hex')}  ${LAYERED_BIG.path}`);
    expect(r.stdout).toMatch(/^new$/m);
    expect(r.stdout).toMatch(/^written$/m);
    // The guest opened each of the three layers through dm-verity and built the rootfs from them.
    const agentLog = fs.readFileSync(path.join(env.logDir, 'lay1-agent.log'), 'utf8');
    expect(agentLog.match(/layer verified through dm-verity/g)?.length, logsOf('lay1')).toBe(3);
    expect(agentLog).toContain('rootfs assembled from verified layers');
    for (const c of chains) expect(agentLog).toContain(layerName(c));
  }, 600_000);

  it('a byte flipped in a layer file: the create fails with the verity error naming the layer, the pod serves the next request', async () => {
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, busybox, POD, 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    // Nothing shared with the host: no 9p or virtio-fs device in the pod's QEMU.
    const qemu = listProcs().filter((p) => helpers.qemuProcs(env.stateDir, POD).includes(p.pid));
    expect(qemu).toHaveLength(1);
    expect(qemu[0]!.cmdline).not.toMatch(/virtio-9p|vhost-user-fs/);
    const undo = flipInBig(1000);
    try {
      const r = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-bad', 'cat', '/etc/motd'], { timeoutMs: 300_000 });
      expect(r.code, logsOf(POD)).not.toBe(0);
      expect(r.stderr, logsOf(POD)).toContain(`layer ${layerName(chains[1]!)}`);
      expect(r.stderr).toMatch(/fails verification/);
      await cd.ctr(['container', 'rm', 'lay-bad']);
    } finally {
      undo();
    }
    // The pod keeps serving: an exec in its running container, a new container in it.
    const ex = await cd.ctr(['task', 'exec', '--exec-id', 'e1', POD, 'echo', 'alive']);
    expect(ex.stdout, logsOf(POD)).toBe('alive\n');
    const next = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-next', 'cat', '/etc/motd'], { timeoutMs: 300_000 });
    expect(next.code, `${next.stderr}\n${logsOf(POD)}`).toBe(0);
    expect(next.stdout).toBe(LAYERED_EXPECT.files['/etc/motd']);
    // Every layer disk the failed and the good create attached is gone again (the busybox pod's own stays).
    const shimLog = fs.readFileSync(path.join(env.logDir, `${POD}.log`), 'utf8');
    const count = (msg: string) => shimLog.split('\n').filter((l) => l.includes(msg)).length;
    expect(count('layer disk attached') - count('layer disk detached'), logsOf(POD)).toBe(1);
  }, 600_000);

  it('a byte flipped under a running container: reading that block fails with an I/O error, the rest of the file and the pod still work', async () => {
    await cd.ctrOk(['run', '-d', ...tardev, ...cd.runtimeArgs('katats'), ...GROUP, img.name, 'lay-run', 'sh', '-c', 'while :; do sleep 1; done'], { timeoutMs: 300_000 });
    const undo = flipInBig(1500);
    try {
      // Line 1500 is at byte 48000: block 11 of the file; line 10 is in block 0.
      const bad = await cd.ctr(['task', 'exec', '--exec-id', 'r1', 'lay-run', 'dd', `if=${LAYERED_BIG.path}`, 'bs=4096', 'skip=11', 'count=1', 'of=/dev/null']);
      expect(bad.code, logsOf(POD)).not.toBe(0);
      expect(bad.stderr).toMatch(/Input\/output error/);
      const good = await cd.ctr(['task', 'exec', '--exec-id', 'r2', 'lay-run', 'dd', `if=${LAYERED_BIG.path}`, 'bs=4096', 'count=1', 'status=none']);
      expect(good.code, good.stderr).toBe(0);
      expect(good.stdout).toContain('big-block line 00010');
    } finally {
      undo();
    }
    const alive = await cd.ctr(['task', 'exec', '--exec-id', 'r3', POD, 'echo', 'alive']);
    expect(alive.stdout).toBe('alive\n');
  }, 600_000);

  it('more layers than hot-plug slots: the create fails naming the setting, and the pod leaves nothing behind', async () => {
    const two = path.join(env.dir, 'two-slots.toml');
    fs.writeFileSync(two, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "none"', 'shared_fs = "none"\npcie_root_port = 2'));
    const r = await cd.ctr(['run', '--rm', ...tardev, ...cd.runtimeArgs('katats'), '--runtime-config-path', two, img.name, 'lay-slots', 'true'], { timeoutMs: 300_000 });
    expect(r.code, logsOf('lay-slots')).not.toBe(0);
    expect(r.stderr).toMatch(/no free hotplug slot.*pcie_root_port \(2\)/);
    await cd.ctr(['container', 'rm', 'lay-slots']);
    expect(helpers.qemuProcs(env.stateDir, 'lay-slots')).toEqual([]);
  }, 600_000);

  it('two pods of the image share its layer files: one file per layer on the host, open read-only in each VM', async () => {
    const files = chains.map((_, i) => layerFile(i));
    for (const pod of [POD, 'lay1']) {
      const [qemu] = helpers.qemuProcs(env.stateDir, pod);
      expect(qemu, logsOf(pod)).toBeDefined();
      const open = new Map<string, number>();
      for (const fd of fs.readdirSync(`/proc/${qemu}/fd`)) {
        const target = fs.readlinkSync(`/proc/${qemu}/fd/${fd}`);
        if (files.includes(target)) open.set(target, parseInt(/^flags:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${qemu}/fdinfo/${fd}`, 'utf8'))![1]!, 8));
      }
      expect([...open.keys()].sort(), pod).toEqual([...files].sort());
      for (const flags of open.values()) expect(flags & 3).toBe(fs.constants.O_RDONLY);
    }
  }, 600_000);
});
