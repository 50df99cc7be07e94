// GetDiagnosticData (upstream's termination_log) and AddSwapPath (no swap here) in local mode.
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, useAgent, type TestAgent } from './helpers.js';

describe('diagnostics', () => {
  const agent = useAgent('dg-');
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });

  it('GetDiagnosticData reads the termination message the container wrote, capped at 4 KiB', async () => {
    const msg = path.join(t.dir, 'termination-log');
    fs.writeFileSync(msg, '');
    const spec = containerSpec(t.rootfs, ['sh', '-c', 'printf "bye \\377" > /dev/termination-log; head -c 5000 /dev/zero | tr "\\0" x >> /dev/termination-log; sleep 100'], {
      mounts: [{ destination: '/dev/termination-log', source: msg, type: 'bind', options: ['rbind', 'rw'] }],
    });
    spec.Annotations = { 'io.kubernetes.container.terminationMessagePath': '/dev/termination-log' };
    await t.svc.CreateContainer({ container_id: 'dg-1', OCI: spec });
    await t.svc.StartContainer({ container_id: 'dg-1' });
    for (let i = 0; i < 100 && fs.statSync(msg).size < 5005; i++) await new Promise((r) => setTimeout(r, 50));
    const r = await t.svc.GetDiagnosticData({ container_id: 'dg-1', log_type: 'termination_log' });
    expect(r.data.startsWith('bye \ufffd')).toBe(true);
    expect(Buffer.byteLength(r.data)).toBeLessThanOrEqual(4096 + 2);
    expect(r.data.length).toBe(4096);
    const bad = await t.svc.GetDiagnosticData({ container_id: 'dg-1', log_type: 'kernel' }).catch((e: { code: number; message: string }) => e);
    expect((bad as { code: number }).code).toBe(Code.InvalidArgument);
    const none = await t.svc.GetDiagnosticData({ container_id: 'dg-nope', log_type: 'termination_log' }).catch((e: { code: number }) => e);
    expect((none as { code: number }).code).toBe(Code.NotFound);
    await t.svc.SignalProcess({ container_id: 'dg-1', exec_id: '', signal: 9 });
    await t.svc.WaitProcess({ container_id: 'dg-1', exec_id: '' });
    await t.svc.RemoveContainer({ container_id: 'dg-1' });
  });

  it('AddSwapPath is Unimplemented and says why', async () => {
    const e = (await t.svc.AddSwapPath({ path: '/run/swapfile' }).catch((x: unknown) => x)) as { code: number; message: string };
    expect(e.code).toBe(Code.Unimplemented);
    expect(e.message).toMatch(/swap is not supported/);
  });
});
