import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // VM and containerd tests share the machine's 2 cores: files run in separate forks, few at once.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'host', include: ['test/**/*.test.ts'] } },
      // The guest agent's node runs --jitless on TCG (no WebAssembly, so no fetch): its attestation
      // path (KBS client, CDH endpoint, unsealing) runs here under the same flag, host-only.
      { extends: true, test: { name: 'guest-jitless', include: ['test/attestation/cdh.test.ts'], execArgv: ['--jitless'] } },
    ],
  },
});
