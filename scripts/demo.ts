// The demo shows what katats does today, end to end with real peers. Today: our ttrpc speaking
// to Go's containerd/ttrpc (built from Debian's sources) in both directions, and how fast.
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { Client } from '../proto/ttrpc/index.js';
import { buildGoPeer, goCall, startGoServer } from '../test/interop/go-peer.js';
import { PEER_SERVICE, bytesValue, fromBytesValue, peerServer } from '../test/interop/ts-peer.js';
import { runTtrpcBench, ttrpcTable } from '../bench/ttrpc.js';

const say = (s: string) => console.log(s);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-demo-'));
try {
  say('katats demo: ttrpc wire compatibility with containerd\'s Go ttrpc 1.1.1');
  const bin = await buildGoPeer();

  const tsSock = path.join(dir, 'ts.sock');
  const server = peerServer();
  await server.listen(tsSock);
  const res = await goCall(bin, tsSock, PEER_SERVICE, 'Metadata', {
    payload: Buffer.from('containerd-namespace'),
    metadata: { 'containerd-namespace': ['k8s.io'] },
  });
  say(`  Go client -> TS server: Metadata(containerd-namespace) = ${res.ok ? res.payload.toString() : `error ${res.code}`}`);
  const late = await goCall(bin, tsSock, PEER_SERVICE, 'Sleep', { payload: Buffer.from('2000'), timeoutMs: 100 });
  say(`  Go client -> TS server: Sleep(2 s) with a 100 ms deadline = ${late.ok ? 'ok' : `error code ${late.code} (${late.message})`}`);
  await server.close();

  const goSock = path.join(dir, 'go.sock');
  const go = await startGoServer(bin, goSock);
  const client = await Client.connect(goSock);
  const echoed = fromBytesValue(await client.call(PEER_SERVICE, 'Echo', bytesValue(Buffer.alloc(3 << 20, 7))));
  say(`  TS client -> Go server: Echo(3 MiB) returned ${echoed.length} bytes`);
  await client.close();
  await go.close();

  say('\nround trips per second (quick run; ratios against Go->Go from this run):');
  say(ttrpcTable(await runTtrpcBench({ quick: true, log: () => {} })));
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
