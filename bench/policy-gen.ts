// `katats policy gen` figures: generation time for a pod (cold: every layer read and hashed;
// warm: the layer cache), the hashing rate on a large layer next to the machine's own gunzip and
// sha256 rate, and the generated policy's decision latency on the agent requests containerd 1.6
// and our shim sent for that pod (bench/policy.ts measures them, bundled as the agent runs).
//   npx tsx bench/policy-gen.ts [--layer-mib 256] [--quick]
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { busyboxImage } from '../harness/images/busybox.js';
import { buildOciImage } from '../harness/images/oci.js';
import { pauseImage } from '../harness/images/pause.js';
import { writeTar } from '../harness/images/tar.js';
import { messageType } from '../proto/registry.js';
import { generate } from '../policy/gen/generate.js';
import { ImageResolver, LayerCache, OciArchive } from '../policy/gen/image.js';
import { policyInput } from '../policy/input.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const root = path.resolve(import.meta.dirname, '..');
const quick = process.argv.includes('--quick');
const layerMiB = Number(arg('--layer-mib') ?? (quick ? 64 : 256));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-policy-gen-bench-'));
try {
  console.log(`policy gen bench: node ${process.version}, ${os.cpus().length} cpus (${os.cpus()[0]?.model ?? '?'}), load ${os.loadavg()[0]!.toFixed(2)}`);
  const busybox = await busyboxImage();
  const pause = await pauseImage();
  const podYaml = fs.readFileSync(path.join(root, 'test/policy/fixtures/gen/pod.yaml'), 'utf8');
  const archives = () => [busybox.archive, pause.archive].map((f) => new OciArchive(f));

  // The fixture pod: cold, then from the cache.
  const cacheFile = path.join(dir, 'layers.json');
  let t = performance.now();
  const cold = new ImageResolver(archives(), new LayerCache(cacheFile));
  const gen = await generate(podYaml, { images: cold });
  cold.cache.save();
  const coldMs = performance.now() - t;
  t = performance.now();
  const warm = new ImageResolver(archives(), new LayerCache(cacheFile));
  await generate(podYaml, { images: warm });
  const warmMs = performance.now() - t;
  console.log(`pod fixtures/gen/pod.yaml (2 containers + pause, ${cold.cache.misses.length} layers): cold ${coldMs.toFixed(0)} ms, warm ${warmMs.toFixed(0)} ms (layers read: ${warm.cache.misses.length})`);

  // A large layer: one file of random bytes (incompressible, so gunzip and sha256 see every byte).
  const data = randomBytes(layerMiB * 1024 * 1024);
  const big = buildOciImage({ name: 'katats.local/big:1', layers: [writeTar([{ type: 'file', path: 'blob', data }])], config: { cmd: ['/blob'] } });
  const bigFile = path.join(dir, 'big.oci.tar');
  fs.writeFileSync(bigFile, big.archive);
  const blob = big.archive.subarray(big.archive.indexOf(Buffer.from([0x1f, 0x8b, 0x08])));
  t = performance.now();
  createHash('sha256').update(gunzipSync(blob)).digest('hex');
  const baseMs = performance.now() - t;
  t = performance.now();
  const images = new ImageResolver([new OciArchive(bigFile), ...archives()], new LayerCache());
  await generate('apiVersion: v1\nkind: Pod\nmetadata: { name: big }\nspec: { containers: [ { name: c, image: katats.local/big:1 } ] }\n', { images });
  const bigMs = performance.now() - t;
  const mib = layerMiB + 1;
  console.log(
    `layer of ${layerMiB} MiB: generation ${bigMs.toFixed(0)} ms (${(mib / (bigMs / 1000)).toFixed(0)} MiB/s); ` +
      `gunzip+sha256 of the same blob in memory ${baseMs.toFixed(0)} ms (${(mib / (baseMs / 1000)).toFixed(0)} MiB/s)`,
  );

  // Decisions: the generated policy on the captured agent requests, state as after the pod started.
  const caseDir = path.join(dir, 'cases', 'katats-generated');
  fs.mkdirSync(caseDir, { recursive: true });
  fs.writeFileSync(path.join(caseDir, 'policy.rego'), gen.pods[0]!.text);
  const captured = (JSON.parse(fs.readFileSync(path.join(root, 'test/policy/fixtures/gen/cri-bookworm.json'), 'utf8')) as { requests: (Record<string, unknown> & { kind: string })[] }).requests;
  const lines: string[] = [];
  const pstate: Record<string, unknown> = {};
  let index = 0;
  for (const { kind, ...fields } of captured) {
    const type = messageType(`grpc.${kind}`);
    const msg = type.decode(type.encode(type.fromObject({ exec_id: fields.container_id, storages: [], devices: [], ...fields })).finish());
    lines.push(`["ep":"${kind}",${policyInput(`grpc.${kind}`, msg)}],`);
    if (kind === 'CreateContainerRequest') pstate[`container_${String(fields.container_id)}`] = index++;
  }
  fs.writeFileSync(path.join(caseDir, 'inputs.txt'), lines.join('\n') + '\n');
  // CreateContainer is decided on a fresh state (each request adds its own entries); exec needs its container.
  fs.writeFileSync(path.join(caseDir, 'data.json'), JSON.stringify({ pstate: Object.fromEntries(Object.entries(pstate).filter(([k]) => k === `container_${String(captured.find((r) => r.kind === 'ExecProcessRequest')!.container_id)}`)) }));
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'bench/policy.ts'), '--kata', path.join(dir, 'cases'), '--case', 'katats-generated', ...(quick ? ['--quick'] : [])], { stdio: 'inherit', cwd: root });
  process.exitCode = r.status ?? 1;
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
