// The demo (README's main command): one private containerd with runc, gVisor and katats
// registered runs `uname -r` in a container of each, side by side: runc shows the host's kernel,
// gVisor its own 4.4.0, katats the guest VM's kernel, on QEMU and on the cloud-hypervisor path
// (its REST API; katats-chv where no cloud-hypervisor can run). Everything it starts, it stops.
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { startContainerd, type Containerd, type RuntimeRegistration } from '../harness/containerd.js';
import { prepareRunsc, runscRuntime, cleanupRunsc } from '../harness/runsc.js';
import { busyboxImage, BUSYBOX_INDEX } from '../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from '../test/shim/katats-env.js';
import { tamperDemo } from './demo-tamper.js';

const say = (s: string) => process.stdout.write(s + '\n');
const progress = (s: string) => process.stderr.write(`  … ${s}\n`);

interface Row {
  runtime: string;
  kernel: string;
  seconds: number | undefined;
  note: string;
}

async function runOne(c: Containerd, name: string, image: string, note: string, o: { label?: string; extra?: string[] } = {}): Promise<Row> {
  const label = o.label ?? name;
  const t0 = performance.now();
  const r = await c.ctr(['run', '--rm', ...c.runtimeArgs(name), ...(o.extra ?? []), image, `demo-${label}`, 'uname', '-r'], { timeoutMs: 300_000 });
  const seconds = (performance.now() - t0) / 1000;
  if (r.code !== 0) return { runtime: label, kernel: '-', seconds: undefined, note: `failed: ${(r.stderr || r.stdout).trim().split('\n').pop()}` };
  return { runtime: label, kernel: r.stdout.trim(), seconds, note };
}

if (process.argv.includes('--tamper')) {
  process.exitCode = await tamperDemo();
  process.exit();
}

say(`katats demo on ${os.hostname()} (host kernel ${os.release()}, ${os.cpus().length} cores)`);
say('preparing: host binaries, guest image, runsc, busybox image, a private containerd');
let env: KatatsEnv | undefined;
let c: Containerd | undefined;
const rows: Row[] = [];
try {
  env = await katatsEnv({ onProgress: progress });
  const runtimes: RuntimeRegistration[] = [env.runtime];
  let runscNote = 'gVisor: user-space kernel';
  try {
    runtimes.push(runscRuntime(await prepareRunsc({ onProgress: progress })));
  } catch (e) {
    runscNote = `unavailable: ${(e as Error).message}`;
  }
  c = await startContainerd({ runtimes, onProgress: progress });
  const img = await busyboxImage({ onProgress: progress });
  await c.importImage(img.archive, BUSYBOX_INDEX);
  say(`containerd ${c.binaries.version}, image ${img.name}\n`);

  rows.push(await runOne(c, 'runc', img.name, 'host kernel, namespaces'));
  if (c.runtimes.has('runsc')) {
    const row = await runOne(c, 'runsc', img.name, runscNote);
    await cleanupRunsc(c, 'demo-runsc');
    rows.push(row);
  } else rows.push({ runtime: 'runsc', kernel: '-', seconds: undefined, note: runscNote });
  rows.push(await runOne(c, 'katats', img.name, `VM on ${env.accel.toUpperCase()}: guest kernel ${env.image.manifest.kernel.release}`));
  // The same pod through the cloud-hypervisor API: a runtime config (ConfigPath, as CRI passes it) selecting clh.
  const clhConfig = path.join(env.dir, 'configuration-clh.toml');
  fs.writeFileSync(clhConfig, `[hypervisor.clh]\nguest_manifest = "${path.join(env.dir, 'guest', 'manifest.json')}"\n[runtime]\nhypervisor = "clh"\nenable_debug = true\n`);
  rows.push(await runOne(c, 'katats', img.name, 'VM through the cloud-hypervisor API (katats-chv: no cloud-hypervisor runs here)', { label: 'katats-clh', extra: ['--runtime-config-path', clhConfig] }));

  const w = [10, 20, 9];
  say(`${'runtime'.padEnd(w[0]!)} ${'uname -r'.padEnd(w[1]!)} ${'time'.padStart(w[2]!)}  note`);
  for (const r of rows) {
    const t = r.seconds === undefined ? '-' : `${r.seconds.toFixed(2)} s`;
    say(`${r.runtime.padEnd(w[0]!)} ${r.kernel.padEnd(w[1]!)} ${t.padStart(w[2]!)}  ${r.note}`);
  }
  const runc = rows[0]?.seconds;
  const kat = rows[2]?.seconds;
  if (runc && kat) say(`\nkatats/runc: ${(kat / runc).toFixed(1)}x for a cold pod (VM boot included, ${env.accel.toUpperCase()}).`);
  // A runtime that was there but failed fails the demo; runsc that could not be had is only noted.
  if (rows.some((r) => r.note.startsWith('failed:'))) process.exitCode = 1;
} finally {
  if (c) {
    const rep = await c.stop();
    if (rep.killed.length || rep.unmounted.length) progress(`cleanup had to kill ${rep.killed.length} processes and unmount ${rep.unmounted.length} mounts`);
  }
  env?.cleanup();
}
