// The operator's commands as processes, from the bundled `katats`: `katats snp serve` (AMD's
// RSA-4096 ARK/ASK, made at first start), `katats kbs serve` trusting its ARK, an admin token from
// `katats kbs admin-token`, a pod's key released to the guest client and refused to a pod with
// another policy digest, `katats snp report` and `katats attest verify` on the result, and both
// daemons stopping on SIGTERM without leaving their sockets.
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KbsClient, KbsClientError } from '../../attestation/client.js';
import { EmulatedSnpDevice } from '../../attestation/device.js';
import { registerVm } from '../../attestation/snp-control.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { runTool, runToolOk } from '../../sys/exec.js';
import { terminate } from '../../sys/proc.js';
import { sleep, withTimeout } from '../../sys/timeout.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-attest-bin-');
const d = (p: string): string => path.join(tmp.dir, p);
let katats: string;
const procs: { child: ChildProcess; exited: Promise<unknown> }[] = [];
let kbsUrl: string;
const HOST_DATA = Buffer.alloc(32, 0x5a);

function start(args: string[]): { child: ChildProcess; exited: Promise<unknown> } {
  const child = spawn(katats, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve({ code, err })));
  const p = { child, exited };
  procs.push(p);
  return p;
}

async function until<T>(what: string, f: () => T | undefined, ms: number): Promise<T> {
  return withTimeout(
    (async () => {
      for (;;) {
        const v = f();
        if (v !== undefined) return v;
        await sleep(100);
      }
    })(),
    ms,
    { code: 'TEST_ATTEST_WAIT', what },
  );
}

const run = (args: string[]) => runTool(katats, args, { timeoutMs: 60_000, timeoutCode: 'TEST_KATATS_TIMEOUT' });

beforeAll(async () => {
  katats = path.join((await buildHostBinaries(() => {})).binDir, 'katats');
  start(['snp', 'serve', '--state-dir', d('state'), '--run-dir', d('run'), '--log', d('snp.log')]);
  // Two RSA-4096 keys at first start: seconds on a loaded machine.
  await until('katats snp serve listening', () => (fs.existsSync(d('run/snp.sock')) ? true : undefined), 120_000);
  const admin = generateKeyPairSync('ed25519');
  fs.writeFileSync(d('admin.pub'), admin.publicKey.export({ type: 'spki', format: 'pem' }));
  fs.writeFileSync(d('admin.key'), admin.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.writeFileSync(d('policy.rego'), `package kbs\n\nallow if input.snp.host_data == "${HOST_DATA.toString('hex')}"\n`);
  start(['kbs', 'serve', '--trusted-ark', d('state/ark.pem'), '--admin-key', d('admin.pub'), '--resources', d('resources'), '--listen', '127.0.0.1:0', '--policy', d('policy.rego'), '--log', d('kbs.log')]);
  kbsUrl = await until('katats kbs serve listening', () => {
    const line = fs.existsSync(d('kbs.log')) ? fs.readFileSync(d('kbs.log'), 'utf8').split('\n').find((l) => l.includes('KBS serving')) : undefined;
    return line ? (JSON.parse(line) as { address: string }).address : undefined;
  }, 60_000);
  const token = (await runToolOk(katats, ['kbs', 'admin-token', '--key', d('admin.key')], { timeoutMs: 60_000, timeoutCode: 'TEST_KATATS_TIMEOUT' })).stdout.trim();
  const set = await fetch(`${kbsUrl}/kbs/v0/resource/default/key/disk`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' }, body: Buffer.from('s3cret') });
  expect(set.status).toBe(200);
}, 240_000);

afterAll(async () => {
  for (const p of procs) await terminate(p.child, p.exited, { graceMs: 5000 });
  tmp.cleanup();
});

describe('katats snp / kbs / attest as processes', () => {
  it('releases the key to the pod whose HOST_DATA the policy names and refuses another (403)', async () => {
    const good = await registerVm(d('run/snp.sock'), 'pod-good', Buffer.alloc(48, 1), HOST_DATA);
    const bad = await registerVm(d('run/snp.sock'), 'pod-bad', Buffer.alloc(48, 1), Buffer.alloc(32, 0x5b));
    expect((await new KbsClient({ url: kbsUrl, device: new EmulatedSnpDevice(good) }).getResource('default', 'key', 'disk')).toString()).toBe('s3cret');
    const e = await new KbsClient({ url: kbsUrl, device: new EmulatedSnpDevice(bad) }).getResource('default', 'key', 'disk').catch((x: unknown) => x);
    expect((e as KbsClientError).status).toBe(403);
  });

  it('katats snp report and katats attest verify: the report of the pod, verified under the node\'s ARK', async () => {
    const r = await run(['snp', 'report', '--port', d('run/vms/pod-good.sock'), '--data', 'c0ffee', '--out', d('r.bin'), '--chain-out', d('chain')]);
    expect(r.code, r.stderr).toBe(0);
    const v = await run(['attest', 'verify', d('r.bin'), '--chain', d('chain'), '--trusted-ark', d('state/ark.pem')]);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toContain(`Host data:          ${HOST_DATA.toString('hex')}`);
    expect(v.stdout).toMatch(/Report data:\s+c0ffee0{122}\n/);
    expect(v.stdout).toMatch(/Signature:\s+VERIFIED/);
  });

  it('both daemons stop on SIGTERM and leave no socket behind; the launch records of unreleased VMs stay for the next daemon', async () => {
    for (const p of procs) expect(await terminate(p.child, p.exited, { graceMs: 10_000 })).toBe('exited');
    expect(fs.existsSync(d('run/snp.sock'))).toBe(false);
    expect(fs.readdirSync(d('run/vms'))).toEqual(['pod-bad.launch.json', 'pod-good.launch.json']);
  });
});
