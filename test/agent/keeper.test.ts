// The runner's keeper (the real binary): requests answered in order on one long-lived process,
// bad requests refused without ending it. Run on the host, so only requests that leave the host
// as it was: seeds (credited entropy) and refused clock values, never a real clock change.
import { spawn } from 'node:child_process';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { Keeper } from '../../agent/keeper.js';
import { runner } from './helpers.js';

const log = pino({ level: 'silent' });
const keepers: Keeper[] = [];
afterAll(() => keepers.forEach((k) => k.stop()));

/** The keeper's raw answers to raw request lines (what a broken or hostile caller could send). */
function raw(input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(runner(), ['keeper'], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('exit', () => resolve(out));
    p.stdin.end(input);
  });
}

describe('katats-runner keeper', () => {
  it('credits seeds to the kernel and reseeds its CRNG, answering each request in order on one process', async () => {
    const k = Keeper.start(runner(), log);
    keepers.push(k);
    await Promise.all([k.seed(Buffer.alloc(64, 1)), k.seed(Buffer.alloc(512, 2)), k.seed(Buffer.from([3]))]);
    await expect(k.seed(Buffer.alloc(513))).rejects.toThrow('seed wants 1..512 bytes, got 513');
    await expect(k.setTime(-1, 0)).rejects.toThrow('time wants SEC USEC');
    await expect(k.setTime(1, 1_000_000)).rejects.toThrow('time wants SEC USEC');
    // Still serving after refusals.
    await k.seed(Buffer.alloc(8, 4));
    expect(k.alive).toBe(true);
  });

  it('refuses malformed, unknown and over-long requests and keeps reading', async () => {
    const out = await raw(`seed zz\nseed 123\nbogus\ntime 1 2 3\nseed ${'ab'.repeat(600)}\nseed ${'a'.repeat(3000)}\nseed 00ff\n`);
    expect(out.split('\n')).toEqual([
      'error seed is not hex',
      'error seed wants 1..512 bytes as hex',
      'error unknown request',
      'error time wants SEC USEC',
      'error seed wants 1..512 bytes as hex',
      'error request longer than 2198 bytes',
      'ok',
      '',
    ]);
  });
});
