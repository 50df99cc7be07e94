// What `containerd-shim-katats-v2 start` prints, per containerd generation (see shim/start.ts).
import { describe, expect, it } from 'vitest';
import { bootstrapOutput, DAEMON_V8_FLAGS, daemonNodeArgs } from '../../shim/start.js';

const ADDR = 'unix:///run/katats/s/0123abcd';

describe('start output', () => {
  it('is the bare address for containerd 1.6, which passes no MAX_SHIM_VERSION', () => {
    expect(bootstrapOutput(ADDR, undefined)).toBe(ADDR);
    expect(bootstrapOutput(ADDR, '')).toBe(ADDR);
    expect(bootstrapOutput(ADDR, 'x')).toBe(ADDR);
  });

  it('is JSON bootstrap params, never above the version containerd announced', () => {
    expect(JSON.parse(bootstrapOutput(ADDR, '2'))).toEqual({ version: 2, address: ADDR, protocol: 'ttrpc' });
    expect(JSON.parse(bootstrapOutput(ADDR, '3'))).toEqual({ version: 3, address: ADDR, protocol: 'ttrpc' });
    expect(JSON.parse(bootstrapOutput(ADDR, '4')).version).toBe(3);
  });
});

describe('the daemon\'s node flags', () => {
  it('keep an idle daemon small, and the flags node was started with come after them (the last of a flag wins)', () => {
    expect(daemonNodeArgs([])).toEqual(DAEMON_V8_FLAGS);
    expect(DAEMON_V8_FLAGS).toContain('--v8-pool-size=1');
    expect(daemonNodeArgs(['--v8-pool-size=4', '--enable-source-maps'])).toEqual([...DAEMON_V8_FLAGS, '--v8-pool-size=4', '--enable-source-maps']);
  });
});
