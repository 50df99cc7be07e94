// `katats demo --tamper`: what dm-verity protected layers buy, shown to a newcomer. A private
// containerd with the tardev snapshotter and katats (shared_fs = none: nothing of the host's
// filesystem reaches the guest) runs a three-layer image from its verified layers; then one byte
// of one layer file is flipped on the host, as a compromised host could, and the same container
// is refused by the guest; the byte is put back and it runs again. For comparison the same image
// runs over today's 9p share from containerd's overlayfs snapshot, which serves whatever the host
// holds. Everything it starts, it stops; the layer file is restored whatever happens.
import fs from 'node:fs';
import path from 'node:path';
import { startContainerd, type Containerd } from '../harness/containerd.js';
import { layeredImage, LAYERED_INDEX } from '../harness/images/layered.js';
import { SnapshotterProcess, untilContainerdReaches } from '../harness/snapshotter.js';
import { chainIdOf } from '../snapshotter/resolve.js';
import { layerName } from '../snapshotter/store.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';
import { buildHostBinaries } from './build.js';

const say = (s: string) => process.stdout.write(s + '\n');
const progress = (s: string) => process.stderr.write(`  … ${s}\n`);

async function run(c: Containerd, image: string, id: string, args: string[], script: string): Promise<{ ok: boolean; text: string; seconds: number }> {
  const t0 = performance.now();
  const r = await c.ctr(['run', '--rm', ...args, ...c.runtimeArgs('katats'), image, id, 'sh', '-c', script], { timeoutMs: 300_000 });
  const seconds = (performance.now() - t0) / 1000;
  if (r.code !== 0) await c.ctr(['container', 'rm', id]);
  return { ok: r.code === 0, text: (r.code === 0 ? r.stdout : r.stderr).trim(), seconds };
}

export async function tamperDemo(): Promise<number> {
  say('katats demo --tamper: image layers as dm-verity protected disks');
  let env: KatatsEnv | undefined;
  let c: Containerd | undefined;
  let sn: SnapshotterProcess | undefined;
  let restore: (() => void) | undefined;
  let failed = false;
  try {
    const { binDir } = await buildHostBinaries(progress);
    env = await katatsEnv({ onProgress: progress, qemuToml: 'shared_fs = "none"' });
    const img = await layeredImage({ onProgress: progress });
    sn = SnapshotterProcess.prepare({ katats: path.join(binDir, 'katats') });
    c = await startContainerd({ runtimes: [env.runtime], proxyPlugins: [{ name: 'tardev', type: 'snapshot', address: sn.address }], onProgress: progress });
    await sn.start(30_000, c.address);
    await untilContainerdReaches(c, 'tardev');
    await c.ctrOk(['images', 'import', '--snapshotter', 'tardev', '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000 });
    // The default snapshotter too, for the shared-filesystem comparison.
    await c.ctrOk(['images', 'import', '--index-name', LAYERED_INDEX, img.archive], { timeoutMs: 300_000 });
    const ninep = path.join(env.dir, 'ninep.toml');
    fs.writeFileSync(ninep, fs.readFileSync(env.configFile, 'utf8').replace('shared_fs = "none"', 'shared_fs = "virtio-9p"'));
    let chain = '';
    const chains = img.diffIds.map((d) => (chain = chainIdOf(chain, d)));
    const file = path.join(sn.root, 'layers', layerName(chains[1]!));
    say(`containerd ${c.binaries.version}, image ${img.name} (3 layers), guest on ${env.accel.toUpperCase()}`);
    say(`the layer files on the host (one per layer, shared by every pod):`);
    for (const ch of chains) say(`  ${path.join(sn.root, 'layers', layerName(ch))}  ${fs.statSync(path.join(sn.root, 'layers', layerName(ch))).size} bytes`);

    const script = 'cat /etc/motd; head -c 20 /data/big; echo';
    say('\n1. the container, its rootfs assembled in the guest from the three layers, each opened through dm-verity:');
    const good = await run(c, img.name, 'tamper-1', ['--snapshotter', 'tardev'], script);
    say(`   ${good.ok ? 'ran' : 'FAILED'} in ${good.seconds.toFixed(2)} s: ${good.text.replace(/\n/g, ' | ')}`);
    failed ||= !good.ok;

    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf(Buffer.from('big-block line 01000'));
    const fd = fs.openSync(file, 'r+');
    const flip = () => {
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0]! ^= 0x20;
      fs.writeSync(fd, b, 0, 1, at);
      fs.fsyncSync(fd);
    };
    restore = () => {
      flip();
      fs.closeSync(fd);
      restore = undefined;
    };
    flip();
    say(`\n2. the host flips one bit at byte ${at} of ${path.basename(file)} (inside /data/big), and the container is created again:`);
    const bad = await run(c, img.name, 'tamper-2', ['--snapshotter', 'tardev'], script);
    say(`   ${bad.ok ? 'RAN (the tampered layer was not caught)' : 'refused'} after ${bad.seconds.toFixed(2)} s: ${bad.text}`);
    failed ||= bad.ok;
    restore();

    say('\n3. the byte put back: the same layers run again:');
    const again = await run(c, img.name, 'tamper-3', ['--snapshotter', 'tardev'], script);
    say(`   ${again.ok ? 'ran' : 'FAILED'} in ${again.seconds.toFixed(2)} s`);
    failed ||= !again.ok;

    say('\n4. for comparison, today\'s path: the overlayfs snapshot shared over 9p (nothing checks what the host serves):');
    const shared = await run(c, img.name, 'tamper-4', ['--runtime-config-path', ninep], script);
    say(`   ${shared.ok ? 'ran' : 'FAILED'} in ${shared.seconds.toFixed(2)} s (cold pod each time, VM boot included)`);
    failed ||= !shared.ok;
    await c.ctr(['images', 'rm', '--sync', img.name, LAYERED_INDEX]);
  } finally {
    restore?.();
    if (sn) await sn.stop().catch((e: unknown) => progress(`stopping the snapshotter: ${(e as Error).message}`));
    if (c) {
      const rep = await c.stop();
      if (rep.killed.length || rep.unmounted.length) progress(`cleanup had to kill ${rep.killed.length} processes and unmount ${rep.unmounted.length} mounts`);
    }
    env?.cleanup();
  }
  return failed ? 1 : 0;
}
