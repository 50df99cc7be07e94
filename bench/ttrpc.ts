// ttrpc round trips per second: TS<->TS, TS<->Go and Go<->Go (Debian's containerd/ttrpc 1.1.1)
// measured in the same run, so the TS/Go ratios compare like with like on this machine.
// Run: npx tsx bench/ttrpc.ts [--quick]
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { Bench } from 'tinybench';
import { Client } from '../proto/ttrpc/index.js';
import { buildGoPeer, goBench, startGoServer } from '../test/interop/go-peer.js';
import { PEER_SERVICE, bytesValue } from '../test/interop/ts-peer.js';
import { startReady } from './support/child.js';

export interface TtrpcFigure {
  size: number;
  inFlight: number;
  tsToTs: number;
  tsClientGoServer: number;
  goClientTsServer: number;
  goToGo: number;
}

const CASES = [
  { size: 100, inFlight: 1 },
  { size: 100, inFlight: 64 },
  { size: 64 * 1024, inFlight: 1 },
  { size: 64 * 1024, inFlight: 64 },
];

async function tsClientRate(sock: string, size: number, inFlight: number, timeMs: number): Promise<number> {
  const client = await Client.connect(sock);
  const msg = bytesValue(Buffer.alloc(size, 1));
  // One iteration is a batch of 64 calls (sequential or all in flight) so that tinybench's own
  // per-iteration cost does not count as ttrpc time; the warm-up lets V8 optimise the hot path.
  const BATCH = 64;
  const bench = new Bench({ time: timeMs, warmupTime: 500, warmupIterations: 20 });
  bench.add('call', async () => {
    if (inFlight === 1) for (let i = 0; i < BATCH; i++) await client.call(PEER_SERVICE, 'Echo', msg);
    else await Promise.all(Array.from({ length: inFlight }, () => client.call(PEER_SERVICE, 'Echo', msg)));
  });
  await bench.run();
  await client.close();
  const r = bench.tasks[0]!.result;
  if (r.state !== 'completed') throw new Error(`tinybench task ${r.state}`);
  return (1000 / r.period) * (inFlight === 1 ? BATCH : inFlight);
}

export async function runTtrpcBench(opts: { quick?: boolean; log?: (s: string) => void } = {}): Promise<TtrpcFigure[]> {
  const log = opts.log ?? ((s: string) => process.stderr.write(s + '\n'));
  const seconds = opts.quick ? 0.5 : 2;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-bench-ttrpc-'));
  const goSock = path.join(dir, 'go.sock');
  const tsSock = path.join(dir, 'ts.sock');
  log('ttrpc: building the Go peer from Debian sources');
  const bin = await buildGoPeer();
  const go = await startGoServer(bin, goSock);
  const ts = await startReady(process.execPath, [...process.execArgv, path.join(import.meta.dirname, 'support/ttrpc-echo-server.ts'), tsSock]);
  const out: TtrpcFigure[] = [];
  try {
    for (const c of CASES) {
      log(`ttrpc: ${c.size} B x ${c.inFlight} in flight`);
      const goToGo = (await goBench(bin, goSock, c.size, c.inFlight, seconds)).callsPerSec;
      const goClientTsServer = (await goBench(bin, tsSock, c.size, c.inFlight, seconds)).callsPerSec;
      const tsClientGoServer = await tsClientRate(goSock, c.size, c.inFlight, seconds * 1000);
      const tsToTs = await tsClientRate(tsSock, c.size, c.inFlight, seconds * 1000);
      out.push({ ...c, tsToTs, tsClientGoServer, goClientTsServer, goToGo });
    }
  } finally {
    await ts.stop();
    await go.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

export function ttrpcTable(rows: TtrpcFigure[]): string {
  const f = (n: number) => `${(n / 1000).toFixed(1)}k`;
  const r = (a: number, b: number) => (a / b).toFixed(2);
  const lines = [
    '| payload | in flight | Go->Go | TS->TS | TS/Go | TS client->Go server | ratio | Go client->TS server | ratio |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const x of rows) {
    const size = x.size >= 1024 ? `${x.size / 1024} KiB` : `${x.size} B`;
    lines.push(
      `| ${size} | ${x.inFlight} | ${f(x.goToGo)}/s | ${f(x.tsToTs)}/s | ${r(x.tsToTs, x.goToGo)} | ${f(x.tsClientGoServer)}/s | ${r(x.tsClientGoServer, x.goToGo)} | ${f(x.goClientTsServer)}/s | ${r(x.goClientTsServer, x.goToGo)} |`,
    );
  }
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runTtrpcBench({ quick: process.argv.includes('--quick') });
  console.log(ttrpcTable(rows));
}
