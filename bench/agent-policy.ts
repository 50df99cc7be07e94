// What the policy check costs an agent request, agent-side: the agent's own gate (decode the
// protobuf, serialise the input as Kata's agent does, evaluate, update the policy state), with the
// policy `katats policy gen` makes for test/policy/fixtures/gen/pod.yaml, on the requests
// containerd 1.6 and our shim sent for that pod (fixtures/gen/cri-bookworm.json), replayed in a
// loop, plus a 64 KiB WriteStdin (the pod's policy allows stdin: policy.katats.io/allow-stdin, so
// WriteStreamRequest is a rule to evaluate, not a constant); and allow-all, the image's default, on
// the same requests. Wall time and CPU time per check.
//   npx tsx bench/agent-policy.ts [--rounds 300]
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { busyboxImage } from '../harness/images/busybox.js';
import { pauseImage } from '../harness/images/pause.js';
import { messageType, root } from '../proto/registry.js';
import type { CallContext } from '../proto/ttrpc/index.js';
import { generate } from '../policy/gen/generate.js';
import { ImageResolver, LayerCache, OciArchive } from '../policy/gen/image.js';
import { allowAllPolicy } from '../policy/allow-all.js';
import { PolicyGate } from '../agent/policy-hook.js';

const repo = path.resolve(import.meta.dirname, '..');
const i = process.argv.indexOf('--rounds');
const rounds = i >= 0 ? Number(process.argv[i + 1]) : 300;
const fix = path.join(repo, 'test', 'policy', 'fixtures', 'gen');
type Req = Record<string, unknown> & { kind: string };
const captured = (JSON.parse(fs.readFileSync(path.join(fix, 'cri-bookworm.json'), 'utf8')) as { requests: Req[] }).requests;

const methodOf = new Map(root.lookupService('grpc.AgentService').methodsArray.map((m) => [m.requestType.replace(/^.*\./, ''), m.name]));
const requests = captured.map((r) => {
  const { kind, ...fields } = r;
  const t = messageType(`grpc.${kind}`);
  const payload = t.encode(t.fromObject({ exec_id: fields.container_id, storages: [], devices: [], ...fields })).finish();
  const ctx = { service: 'grpc.AgentService', method: methodOf.get(kind)!, metadata: new Map(), signal: new AbortController().signal, streamId: 1 } as unknown as CallContext;
  return { kind, payload, ctx };
});
{
  const t = messageType('grpc.WriteStreamRequest');
  const cid = String(captured.find((r) => r.kind === 'CreateContainerRequest' && r !== captured[1])?.container_id ?? 'c');
  const payload = t.encode(t.fromObject({ container_id: cid, exec_id: cid, data: Buffer.alloc(64 * 1024, 'x') })).finish();
  const ctx = { service: 'grpc.AgentService', method: 'WriteStdin', metadata: new Map(), signal: new AbortController().signal, streamId: 1 } as unknown as CallContext;
  requests.push({ kind: 'WriteStreamRequest (64 KiB)', payload, ctx });
}

const [busybox, pause] = [await busyboxImage(), await pauseImage()];
const podYaml = fs.readFileSync(path.join(fix, 'pod.yaml'), 'utf8').replace('  namespace: default\n', '  namespace: default\n  annotations:\n    policy.katats.io/allow-stdin: "true"\n');
if (!podYaml.includes('allow-stdin')) throw new Error('pod.yaml: no place for the allow-stdin annotation');
const gen = await generate(podYaml, { images: new ImageResolver([new OciArchive(busybox.archive), new OciArchive(pause.archive)], new LayerCache(undefined)) });
const policies = { generated: gen.pods[0]!.text, 'allow-all': allowAllPolicy() };

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

const log = pino({ level: 'silent' });
console.log(`node ${process.version}, ${rounds} rounds of ${requests.length} requests (${requests.map((r) => r.kind).join(', ')})`);
for (const [name, text] of Object.entries(policies)) {
  const t0 = performance.now();
  const gate = new PolicyGate({ launchDigest: undefined, defaultPolicy: { text, source: name }, log });
  const compileMs = performance.now() - t0;
  const wall = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const q of requests) {
      const c0 = process.cpuUsage();
      const w0 = performance.now();
      gate.check(q.ctx, q.payload);
      const w = performance.now() - w0;
      const c = process.cpuUsage(c0);
      if (r < 10) continue; // warm-up
      (wall.get(q.kind) ?? wall.set(q.kind, []).get(q.kind)!).push(w * 1000);
      (cpu.get(q.kind) ?? cpu.set(q.kind, []).get(q.kind)!).push(c.user + c.system);
    }
  }
  console.log(`\n${name} policy (${text.split('\n').length} lines): compiled in ${compileMs.toFixed(0)} ms`);
  for (const [kind, ws] of wall) {
    const cs = cpu.get(kind)!;
    console.log(`  ${kind.padEnd(24)} wall p50 ${quantile(ws, 0.5).toFixed(0)} µs p99 ${quantile(ws, 0.99).toFixed(0)} µs; cpu p50 ${quantile(cs, 0.5).toFixed(0)} µs`);
  }
}
