// Process stdio through the agent: bulk output without loss, bounded buffering with a slow
// reader, terminals (output, window size, input).
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { containerSpec, processSpec, readAll, sleep, useAgent, type TestAgent } from './helpers.js';

describe('agent stdio', () => {
  const agent = useAgent('io-', { outputBufferBytes: 1 << 20 });
  let t: TestAgent;
  beforeAll(() => {
    t = agent();
  });

  it('moves 100 MB of stdout through ReadStdout without loss (sha256 checked in the container)', async () => {
    const cid = 'io-100mb';
    const n = 100 * 1024 * 1024;
    await t.svc.CreateContainer({
      container_id: cid,
      OCI: containerSpec(t.rootfs, ['sh', '-c', `head -c ${n} /dev/urandom > /tmp/d; sha256sum /tmp/d | cut -d" " -f1 >&2; cat /tmp/d; rm /tmp/d`], {
        mounts: [],
      }),
    });
    await t.svc.StartContainer({ container_id: cid });
    const hash = createHash('sha256');
    let total = 0;
    const t0 = Date.now();
    const stderrP = readAll(t, cid, '', 'ReadStderr');
    for (;;) {
      try {
        const r = await t.svc.ReadStdout({ container_id: cid, exec_id: '', len: 1 << 20 });
        hash.update(r.data);
        total += r.data.length;
      } catch (e) {
        expect((e as Error).message).toMatch(/eof/);
        break;
      }
    }
    const secs = (Date.now() - t0) / 1000;
    const want = (await stderrP).toString().trim();
    expect(total).toBe(n);
    expect(hash.digest('hex')).toBe(want);
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(0);
    await t.svc.RemoveContainer({ container_id: cid });
    console.log(`100 MB through ReadStdout in ${secs.toFixed(2)} s (${(100 / secs).toFixed(0)} MB/s)`);
  }, 120_000);

  it('buffers at most its bound for a reader that does not read, and the writer waits', async () => {
    const cid = 'io-slow';
    const n = 20 * 1024 * 1024;
    await t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, ['sh', '-c', `head -c ${n} /dev/zero; echo finished >&2`]) });
    await t.svc.StartContainer({ container_id: cid });
    const p = t.agent.sandbox.container(cid).init;
    await sleep(800);
    // The agent holds at most its bound (plus one pipe read); the rest waits in the writer.
    expect(p.stdout.buffered).toBeGreaterThan(0);
    expect(p.stdout.buffered).toBeLessThanOrEqual((1 << 20) + 256 * 1024);
    expect(p.stdout.isPaused).toBe(true);
    expect(p.running).toBe(true);
    const got = await readAll(t, cid);
    expect(got.length).toBe(n);
    expect(got.every((b) => b === 0)).toBe(true);
    expect((await readAll(t, cid, '', 'ReadStderr')).toString()).toBe('finished\n');
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(0);
    await t.svc.RemoveContainer({ container_id: cid });
  }, 60_000);

  it('answers ReadStdout at end of stream with an error, as upstream does, every time', async () => {
    const cid = 'io-eof';
    await t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, ['true']) });
    await t.svc.StartContainer({ container_id: cid });
    for (let i = 0; i < 2; i++) {
      const e = await t.svc.ReadStdout({ container_id: cid, exec_id: '', len: 10 }).catch((x) => x);
      expect(e.code).toBe(Code.Internal);
      expect(e.message).toMatch(/eof/);
    }
    await t.svc.WaitProcess({ container_id: cid, exec_id: '' });
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('gives a terminal process a real pty: output, window size, resize, input', async () => {
    const cid = 'io-tty';
    const script = 'stty size; tty; read x; stty size; echo "got $x"';
    await t.svc.CreateContainer({
      container_id: cid,
      OCI: containerSpec(t.rootfs, ['sh', '-c', script], { terminal: true, consoleSize: { rows: 24, cols: 80 } }),
    });
    await t.svc.StartContainer({ container_id: cid });
    let out = '';
    const readUntil = async (re: RegExp) => {
      while (!re.test(out)) {
        const r = await t.svc.ReadStdout({ container_id: cid, exec_id: '', len: 4096 });
        out += Buffer.from(r.data).toString();
      }
    };
    await readUntil(/\/dev\/pts\/\d+\r\n/);
    expect(out).toMatch(/^24 80\r\n\/dev\/pts\/\d+\r\n/);
    await t.svc.TtyWinResize({ container_id: cid, exec_id: '', row: 40, column: 120 });
    await t.svc.WriteStdin({ container_id: cid, exec_id: '', data: Buffer.from('hello\r') });
    await readUntil(/got hello/);
    expect(out).toContain('hello\r\n'); // the terminal echoes input
    expect(out).toContain('40 120\r\n');
    expect(out).toContain('got hello\r\n');
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: '' })).status).toBe(0);
    // stderr of a terminal process is the terminal: nothing separate to read.
    const e = await t.svc.ReadStderr({ container_id: cid, exec_id: '', len: 10 }).catch((x) => x);
    expect(e.message).toMatch(/eof/);
    await t.svc.RemoveContainer({ container_id: cid });
  });

  it('runs a terminal exec whose input ends with CloseStdin (end-of-file on the terminal)', async () => {
    const cid = 'io-ttyexec';
    await t.svc.CreateContainer({ container_id: cid, OCI: containerSpec(t.rootfs, ['sleep', '1000']) });
    await t.svc.StartContainer({ container_id: cid });
    await t.svc.ExecProcess({ container_id: cid, exec_id: 'tty1', process: processSpec(['sh', '-c', 'cat; echo "rc=$?"'], { terminal: true }) });
    await t.svc.WriteStdin({ container_id: cid, exec_id: 'tty1', data: Buffer.from('line1\n') });
    await t.svc.CloseStdin({ container_id: cid, exec_id: 'tty1' });
    const out = (await readAll(t, cid, 'tty1')).toString();
    expect(out).toContain('line1');
    expect(out).toContain('rc=0');
    expect((await t.svc.WaitProcess({ container_id: cid, exec_id: 'tty1' })).status).toBe(0);
    const e = await t.svc.TtyWinResize({ container_id: cid, exec_id: '', row: 1, column: 1 }).catch((x) => x);
    expect(e.code).toBe(Code.Unavailable);
    expect(e.message).toContain('no tty');
    await t.svc.RemoveContainer({ container_id: cid });
  });
});
