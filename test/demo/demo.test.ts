// The README's main command, as an operator runs it from the built CLI: `katats demo` starts a
// private containerd with runc, gVisor and katats, runs `uname -r` in each and stops everything.
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { expect, it } from 'vitest';
import { buildHostBinaries } from '../../scripts/build.js';

it('katats demo: runc shows the host kernel, gVisor 4.4.0, katats the guest kernel, and nothing is left to clean up', async () => {
  const { binDir } = await buildHostBinaries(() => {});
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const p = spawn(path.join(binDir, 'katats'), ['demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (c) => resolve({ code: c, stdout, stderr }));
  });
  expect(code, `${stdout}\n${stderr}`).toBe(0);
  const table = stdout.split('\n').slice(stdout.split('\n').findIndex((l) => l.startsWith('runtime ')));
  const row = (name: string) => table.find((l) => l.startsWith(`${name} `)) ?? '';
  expect(row('runc')).toContain(os.release());
  expect(row('runsc')).toMatch(/\s4\.4\.0\s/);
  const katats = row('katats');
  expect(katats).toMatch(/VM on (TCG|KVM): guest kernel (\S+)/);
  const guestKernel = /guest kernel (\S+)/.exec(katats)![1]!;
  expect(katats.split(/\s+/)[1]).toBe(guestKernel);
  expect(guestKernel).not.toBe(os.release());
  expect(stdout).toMatch(/katats\/runc: [\d.]+x for a cold pod/);
  expect(stderr).not.toMatch(/cleanup had to kill/);
}, 900_000);
