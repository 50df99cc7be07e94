// The verity tree against Debian's veritysetup (cryptsetup-bin): the same salt, sizes and hash
// offset must give the same root hash and the same tree bytes; a partial last block is hashed
// zero-padded (veritysetup ignores it, so it is compared on the padded copy).
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runToolOk } from '../../sys/exec.js';
import { VERITY_BLOCK, verityFormat, verityGeometry, parseSalt, ZERO_SALT } from '../../snapshotter/verity.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-verity-');
afterAll(() => tmp.cleanup());

async function veritysetup(data: string, hash: string, salt: Buffer, hashOffset = 0): Promise<string> {
  const args = ['format', '--format=1', '--hash', 'sha256', '--data-block-size', '4096', '--hash-block-size', '4096', '--no-superblock', '--salt', salt.length ? salt.toString('hex') : '-'];
  if (hashOffset) args.push('--hash-offset', String(hashOffset));
  const r = await runToolOk('veritysetup', [...args, data, hash], { timeoutMs: 120_000, timeoutCode: 'TEST_VERITYSETUP_TIMEOUT' });
  const m = /Root hash:\s+([0-9a-f]{64})/.exec(r.stdout);
  if (!m) throw new Error(`no root hash in: ${r.stdout}`);
  return m[1]!;
}

function writeData(file: string, size: number): void {
  // Random bytes at the start, the end and a few places between; zeros (sparse) elsewhere keep big cases fast.
  fs.writeFileSync(file, randomBytes(Math.min(size, 3 * VERITY_BLOCK + 17)));
  fs.truncateSync(file, size);
  const fd = fs.openSync(file, 'r+');
  for (let i = 0; i < 4 && size > 0; i++) fs.writeSync(fd, randomBytes(Math.min(size, 777)), 0, Math.min(size, 777), randomInt(0, Math.max(1, size - 777)));
  fs.closeSync(fd);
}

describe('verity geometry', () => {
  it('levels and sizes as veritysetup counts them', () => {
    expect(verityGeometry(1)).toMatchObject({ levels: 0, hashBlocks: 0 });
    expect(verityGeometry(2)).toMatchObject({ levels: 1, levelBlocks: [1], hashBlocks: 1 });
    expect(verityGeometry(128)).toMatchObject({ levels: 1, levelBlocks: [1], hashBlocks: 1 });
    expect(verityGeometry(129)).toMatchObject({ levels: 2, levelBlocks: [2, 1], levelStart: [1, 0], hashBlocks: 3 });
    expect(verityGeometry(244)).toMatchObject({ levels: 2, hashBlocks: 3 });
    expect(verityGeometry(128 * 128 + 1)).toMatchObject({ levels: 3, levelBlocks: [129, 2, 1], levelStart: [3, 1, 0] });
  });
  it('refuses bad salts', () => {
    expect(() => parseSalt('abc')).toThrow(/even number of hex/);
    expect(() => parseSalt('zz')).toThrow(/hex/);
    expect(parseSalt('-').length).toBe(0);
  });
});

describe('verity tree vs veritysetup', () => {
  const sizes = [
    VERITY_BLOCK, // one block: no tree, the root is the block's digest
    2 * VERITY_BLOCK,
    128 * VERITY_BLOCK,
    129 * VERITY_BLOCK,
    1_000_000, // partial last block
    randomInt(1, 40) * VERITY_BLOCK + randomInt(1, VERITY_BLOCK),
    randomInt(200, 3000) * VERITY_BLOCK + randomInt(0, VERITY_BLOCK),
    (128 * 128 + 1) * VERITY_BLOCK, // three levels
  ];
  for (const [i, size] of sizes.entries()) {
    const salt = i % 3 === 0 ? ZERO_SALT : i % 3 === 1 ? randomBytes(randomInt(1, 64)) : Buffer.alloc(0);
    it(`${size} bytes, salt of ${salt.length} bytes`, async () => {
      const data = path.join(tmp.dir, `d${i}`);
      writeData(data, size);
      const padded = Math.ceil(size / VERITY_BLOCK) * VERITY_BLOCK;
      // veritysetup's view of the same bytes: the padded copy, tree appended in the same file.
      const copy = path.join(tmp.dir, `c${i}`);
      fs.copyFileSync(data, copy);
      fs.truncateSync(copy, padded);
      const theirs = await veritysetup(copy, copy, salt, padded);
      // The big cases again through the worker threads (byte-identical or the test fails below).
      const ours = await verityFormat(data, { salt, hashFile: data, hashOffset: padded, workers: size > 8 * 1024 * 1024 ? 2 : 0 });
      expect(ours.rootHash).toBe(theirs);
      expect(ours.dataBlocks).toBe(padded / VERITY_BLOCK);
      const a = fs.readFileSync(data);
      const b = fs.readFileSync(copy);
      expect(a.length).toBe(b.length);
      expect(Buffer.compare(a.subarray(padded), b.subarray(padded))).toBe(0);
      // And with a separate hash file at offset 0.
      const h1 = path.join(tmp.dir, `h1-${i}`);
      const h2 = path.join(tmp.dir, `h2-${i}`);
      fs.truncateSync(copy, padded); // drop the appended tree: the data alone again
      expect(await veritysetup(copy, h2, salt)).toBe(theirs);
      await verityFormat(data, { salt, dataBytes: size, hashFile: h1, workers: size > 1024 * 1024 ? 1 : 0 });
      if (ours.hashBlocks) expect(fs.readFileSync(h1).equals(fs.readFileSync(h2))).toBe(true);
      for (const f of [data, copy, h1, h2]) fs.rmSync(f, { force: true });
    });
  }

  it('a change in the tail of a partial last block changes our root hash (veritysetup ignores it)', async () => {
    const data = path.join(tmp.dir, 'tail');
    writeData(data, 1_000_000);
    const hash = path.join(tmp.dir, 'tail.hash');
    const before = await verityFormat(data);
    const theirsBefore = await veritysetup(data, hash, ZERO_SALT);
    const fd = fs.openSync(data, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, 999_999);
    b[0] = b[0]! ^ 0xff;
    fs.writeSync(fd, b, 0, 1, 999_999);
    fs.closeSync(fd);
    const after = await verityFormat(data);
    expect(after.rootHash).not.toBe(before.rootHash);
    expect(await veritysetup(data, hash, ZERO_SALT)).toBe(theirsBefore);
  });
});
