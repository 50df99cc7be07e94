// The pieces that bound what a guest's output costs the host: a rotating, rate-limited log file
// and a console line splitter. (test/vmm/vm.test.ts floods them from a real guest.)
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { LineSplitter } from '../../vmm/console-lines.js';
import { RotatingLog } from '../../vmm/rotating-log.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-guest-output-');
afterAll(() => tmp.cleanup());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function memoryLogger(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}

describe('RotatingLog', () => {
  it('rotates at the size limit on a line end, keeps N older files and never more', async () => {
    const file = path.join(tmp.dir, 'rot', 'agent.log');
    const { log } = memoryLogger();
    const l = new RotatingLog(file, { maxFileBytes: 1000, rotatedFiles: 2, bytesPerSec: 1e9, burstBytes: 1e9, reportIntervalMs: 1000 }, log, 'agent log');
    for (let i = 0; i < 100; i++) l.write(Buffer.from(`line ${String(i).padStart(3, '0')} ${'x'.repeat(90)}\n`));
    await l.close();
    const files = fs.readdirSync(path.dirname(file)).sort();
    expect(files).toEqual(['agent.log', 'agent.log.1', 'agent.log.2']);
    for (const f of files) {
      const text = fs.readFileSync(path.join(path.dirname(file), f), 'utf8');
      expect(text.length).toBeLessThanOrEqual(1000);
      expect(text.endsWith('\n')).toBe(true);
      expect(text.split('\n')[0]).toMatch(/^line \d{3} x+$/);
    }
    // The newest lines are in the live file, the oldest kept ones in .2.
    expect(fs.readFileSync(file, 'utf8')).toContain('line 099');
    expect(l.stats.rotations).toBeGreaterThanOrEqual(9);
    expect(l.stats.dropped).toBe(0);
  });

  it('a line longer than the file limit is cut, not kept whole', async () => {
    const file = path.join(tmp.dir, 'long.log');
    const l = new RotatingLog(file, { maxFileBytes: 100, rotatedFiles: 1, bytesPerSec: 1e9, burstBytes: 1e9, reportIntervalMs: 1000 }, memoryLogger().log, 'console');
    l.write(Buffer.alloc(350, 0x61));
    await l.close();
    expect(fs.statSync(file).size).toBeLessThanOrEqual(100);
    expect(fs.statSync(`${file}.1`).size).toBe(100);
    expect(fs.existsSync(`${file}.2`)).toBe(false);
  });

  it('drops what exceeds the byte rate, counts it, and says so once per interval in the file and the log', async () => {
    const file = path.join(tmp.dir, 'rate.log');
    const { log, lines } = memoryLogger();
    const l = new RotatingLog(file, { maxFileBytes: 1 << 20, rotatedFiles: 1, bytesPerSec: 1000, burstBytes: 2000, reportIntervalMs: 200 }, log, 'guest console');
    const chunk = Buffer.alloc(100, 0x62);
    for (let i = 0; i < 500; i++) l.write(chunk); // 50 KB at once: 2 KB burst, the rest dropped
    await sleep(350);
    for (let i = 0; i < 500; i++) l.write(chunk);
    await l.close();
    expect(l.stats.written).toBeLessThan(4000);
    expect(l.stats.dropped).toBeGreaterThan(95_000);
    const text = fs.readFileSync(file, 'utf8');
    const notes = text.split('\n').filter((x) => x.startsWith('[katats] guest console:'));
    expect(notes.length).toBe(2);
    expect(notes[0]).toMatch(/\d+ bytes dropped in the last \d+ s \(over 1000 bytes\/s\)/);
    const warnings = lines.filter((x) => x.msg === 'guest console over its rate: output dropped');
    expect(warnings.length).toBe(2);
    expect((warnings[0]!.droppedBytes as number) + (warnings[1]!.droppedBytes as number)).toBe(l.stats.dropped);
  });
});

describe('LineSplitter', () => {
  it('splits on newlines, cuts overlong lines into pieces, holds at most one piece, keeps UTF-8 whole across chunks', () => {
    const out: string[] = [];
    const s = new LineSplitter(10, (l) => out.push(l));
    s.push(Buffer.from('short\nexactly10c\n'));
    s.push(Buffer.from('a'.repeat(25)));
    expect(s.held).toBeLessThanOrEqual(10);
    s.push(Buffer.from('b\n'));
    const euro = Buffer.from('€\n');
    s.push(euro.subarray(0, 1));
    s.push(euro.subarray(1));
    s.push(Buffer.from('tail'));
    s.flush();
    expect(out).toEqual(['short', 'exactly10c', 'a'.repeat(10), 'a'.repeat(10), 'aaaaab', '€', 'tail']);
  });

  it('a 10 MB line without a newline never holds more than the limit', () => {
    let pieces = 0;
    const s = new LineSplitter(4096, () => pieces++);
    const mb = Buffer.alloc(1 << 20, 0x7a);
    for (let i = 0; i < 10; i++) {
      s.push(mb);
      expect(s.held).toBeLessThanOrEqual(4096);
    }
    expect(pieces).toBe(Math.floor((10 << 20) / 4096));
  });
});
