// `katats attest verify REPORT [--chain DIR]`: decodes, checks and prints a report like snpguest's
// display; a flipped bit or a chain of another chip fails with exit 1 and says why.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attestCommand } from '../../attestation/cli.js';
import { SnpFirmware } from '../../attestation/firmware.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-attest-cli-');
let fw: SnpFirmware;
let other: SnpFirmware;
const reportFile = path.join(tmp.dir, 'report.bin');

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await attestCommand(args, 'usage', { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

beforeAll(async () => {
  fw = await SnpFirmware.open(path.join(tmp.dir, 'fw'), { rsaBits: 2048 });
  other = await SnpFirmware.open(path.join(tmp.dir, 'other'), { rsaBits: 2048 });
  fw.launch('pod', { measurement: Buffer.alloc(48, 0xab), hostData: Buffer.alloc(32, 0xcd) });
  fs.writeFileSync(reportFile, fw.report('pod', Buffer.alloc(64, 0xef)));
  fw.writeChain(path.join(tmp.dir, 'chain'));
  other.writeChain(path.join(tmp.dir, 'other-chain'));
});
afterAll(() => tmp.cleanup());

describe('katats attest verify', () => {
  it('verifies against the chain and prints the fields', async () => {
    const r = await run(['verify', reportFile, '--chain', path.join(tmp.dir, 'chain'), '--trusted-ark', path.join(tmp.dir, 'chain', 'ark.pem')]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`Measurement:        ${'ab'.repeat(48)}`);
    expect(r.out).toContain(`Host data:          ${'cd'.repeat(32)}`);
    expect(r.out).toContain(`Report data:        ${'ef'.repeat(64)}`);
    expect(r.out).toContain(`Chip ID:            ${fw.chipId.toString('hex')}`);
    expect(r.out).toMatch(/Signature:\s+VERIFIED .*ARK trusted/);
  });

  it('fails on a flipped bit, on another chip\'s chain and on an untrusted ARK', async () => {
    const bad = Buffer.from(fs.readFileSync(reportFile));
    bad[0xc0]! ^= 0x80;
    fs.writeFileSync(path.join(tmp.dir, 'bad.bin'), bad);
    const flipped = await run(['verify', path.join(tmp.dir, 'bad.bin'), '--chain', path.join(tmp.dir, 'chain')]);
    expect([flipped.code, flipped.err]).toEqual([1, 'katats attest verify: report signature does not verify against the VCEK']);
    expect((await run(['verify', reportFile, '--chain', path.join(tmp.dir, 'other-chain')])).code).toBe(1);
    const untrusted = await run(['verify', reportFile, '--chain', path.join(tmp.dir, 'chain'), '--trusted-ark', path.join(tmp.dir, 'other-chain', 'ark.pem')]);
    expect(untrusted.err).toMatch(/not a trusted root/);
  });

  it('without a chain, decodes and says the signature was not checked', async () => {
    const r = await run(['verify', reportFile]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Signature:\s+NOT CHECKED/);
    expect((await run(['verify'])).code).toBe(2);
  });
});
