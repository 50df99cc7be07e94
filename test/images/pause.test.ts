// The pause image: one layer whose /pause is a static binary that ends on SIGTERM and SIGINT and
// reaps the children it inherits, and an image config that runs it.
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runOk } from '../../harness/exec.js';
import { tempDir } from '../support/tmp.js';
import { pauseImage, type PauseImage } from '../../harness/images/pause.js';

function readTar(buf: Buffer): Promise<Map<string, Buffer>> {
  return new Promise((resolve, reject) => {
    const out = new Map<string, Buffer>();
    const p = new Parser({ strict: true });
    p.on('entry', (e: ReadEntry) => {
      const chunks: Buffer[] = [];
      e.on('data', (c: Buffer) => chunks.push(c));
      e.on('end', () => out.set(e.path, Buffer.concat(chunks)));
    });
    p.on('error', reject);
    p.on('end', () => resolve(out));
    p.end(buf);
  });
}

/** 'none' for a static ELF executable: no PT_INTERP program header (no dynamic loader). */
function interpreterOf(elf: Buffer): string {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return 'not a 64-bit ELF file';
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const size = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) if (elf.readUInt32LE(phoff + i * size) === 3) return 'PT_INTERP';
  return 'none';
}

let img: PauseImage;
let dir: string;
let binary: string;
let cleanup: () => void;

beforeAll(async () => {
  img = await pauseImage();
  ({ dir, cleanup } = tempDir('kt-pause-'));
  const blobs = await readTar(fs.readFileSync(img.archive));
  const layer = await readTar(gunzipSync(blobs.get(`blobs/sha256/${img.layer.digest.slice(7)}`)!));
  binary = path.join(dir, 'pause');
  fs.writeFileSync(binary, layer.get('pause')!, { mode: 0o755 });
}, 180_000);

afterAll(() => cleanup?.());

function exitOf(child: ReturnType<typeof spawn>): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

describe('pause image', () => {
  test('runs /pause, a static executable, and is cached by content', async () => {
    const blobs = await readTar(fs.readFileSync(img.archive));
    const config = JSON.parse(blobs.get(`blobs/sha256/${img.config.digest.slice(7)}`)!.toString()) as { config: { Entrypoint: string[] } };
    expect(config.config.Entrypoint).toEqual(['/pause']);
    expect(interpreterOf(fs.readFileSync(binary))).toBe('none');
    expect((await runOk(binary, ['-v'])).stdout).toBe('katats pause 1\n');
    expect(await pauseImage()).toEqual(img);
  });

  test.each(['SIGTERM', 'SIGINT'] as const)('exits 0 on %s', async (sig) => {
    const child = spawn(binary, [], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 200));
    expect(child.exitCode).toBeNull();
    child.kill(sig);
    expect(await exitOf(child)).toEqual({ code: 0, signal: null });
  });

  test('reaps the children it inherits', async () => {
    // unshare makes /pause PID 1 of a new PID namespace: the shell's orphaned child becomes its child.
    const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', `(sleep 1 &) ; exec ${binary}`], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 2500));
    const pausePid = fs
      .readdirSync('/proc')
      .filter((n) => /^\d+$/.test(n))
      .find((n) => {
        try {
          return fs.readFileSync(`/proc/${n}/cmdline`, 'utf8').replace(/\0+$/, '') === binary && fs.readFileSync(`/proc/${n}/stat`, 'utf8').includes(`) S ${child.pid} `);
        } catch {
          return false;
        }
      });
    expect(pausePid).toBeDefined();
    const zombies = fs.readFileSync(`/proc/${pausePid}/task/${pausePid}/children`, 'utf8').trim();
    expect(zombies).toBe('');
    process.kill(Number(pausePid), 'SIGTERM');
    expect(await exitOf(child)).toEqual({ code: 0, signal: null });
  });
});
