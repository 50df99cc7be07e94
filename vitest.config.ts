import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    // VM and containerd tests share the machine's 2 cores: files run in separate forks, few at once.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
