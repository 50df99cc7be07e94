// The OCI archive builder: deterministic bytes, a tar that another reader (npm `tar`) agrees with,
// digests that match their blobs, and the layout containerd's importer expects.
import fs from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { Parser, type ReadEntry } from 'tar';
import { describe, expect, test } from 'vitest';
import { tempDir } from '../support/tmp.js';
import { busyboxImage, busyboxLayer } from '../../harness/images/busybox.js';
import { buildOciImage, sha256 } from '../../harness/images/oci.js';
import { writeTar } from '../../harness/images/tar.js';

interface Entry {
  path: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  linkpath: string;
  data: Buffer;
}

function readTar(buf: Buffer): Promise<Entry[]> {
  return new Promise((resolve, reject) => {
    const out: Entry[] = [];
    const p = new Parser({ strict: true });
    p.on('entry', (e: ReadEntry) => {
      const chunks: Buffer[] = [];
      e.on('data', (c: Buffer) => chunks.push(c));
      e.on('end', () =>
        out.push({
          path: e.path,
          type: e.type,
          mode: e.mode ?? -1,
          uid: e.uid ?? -1,
          gid: e.gid ?? -1,
          mtime: e.mtime?.getTime() ?? -1,
          linkpath: e.linkpath ?? '',
          data: Buffer.concat(chunks),
        }),
      );
    });
    p.on('error', reject);
    p.on('end', () => resolve(out));
    p.end(buf);
  });
}

describe('deterministic tar', () => {
  test('sorted entries, parents first, fixed owner and mtime, readable by npm tar', async () => {
    const bytes = writeTar([
      { type: 'file', path: 'b/z.txt', data: Buffer.from('zz'), mode: 0o600 },
      { type: 'symlink', path: 'a/link', target: '/b/z.txt' },
      { type: 'file', path: 'a/x', data: Buffer.alloc(513, 7) },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
      { type: 'file', path: `deep/${'d'.repeat(90)}/${'f'.repeat(60)}`, data: Buffer.from('long name') },
    ]);
    expect(bytes.length % 512).toBe(0);
    const entries = await readTar(bytes);
    expect(entries.map((e) => e.path)).toEqual(['a/', 'a/link', 'a/x', 'b/', 'b/z.txt', 'deep/', `deep/${'d'.repeat(90)}/`, `deep/${'d'.repeat(90)}/${'f'.repeat(60)}`, 'tmp/']);
    for (const e of entries) {
      expect(e.uid).toBe(0);
      expect(e.gid).toBe(0);
      expect(e.mtime).toBe(0);
    }
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('a/link')!.type).toBe('SymbolicLink');
    expect(byPath.get('a/link')!.linkpath).toBe('/b/z.txt');
    expect(byPath.get('a/x')!.data).toEqual(Buffer.alloc(513, 7));
    expect(byPath.get('b/z.txt')!.mode).toBe(0o600);
    expect(byPath.get('tmp/')!.mode & 0o7777).toBe(0o1777);
    // Same entries in another order: the same bytes.
    const again = writeTar([
      { type: 'dir', path: 'tmp', mode: 0o1777 },
      { type: 'file', path: `deep/${'d'.repeat(90)}/${'f'.repeat(60)}`, data: Buffer.from('long name') },
      { type: 'file', path: 'a/x', data: Buffer.alloc(513, 7) },
      { type: 'symlink', path: 'a/link', target: '/b/z.txt' },
      { type: 'file', path: 'b/z.txt', data: Buffer.from('zz'), mode: 0o600 },
    ]);
    expect(again.equals(bytes)).toBe(true);
  });

  test('refuses duplicates and escapes', () => {
    expect(() => writeTar([{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a/' }])).toThrow(/duplicate/);
    expect(() => writeTar([{ type: 'file', path: '../x', data: Buffer.alloc(0) }])).toThrow(/\.\./);
  });
});

describe('busybox OCI image', () => {
  test('the layer holds busybox, its applets, and the usual directories', async () => {
    const entries = await readTar(await busyboxLayer('/bin/busybox'));
    const byPath = new Map(entries.map((e) => [e.path, e]));
    expect(byPath.get('bin/busybox')!.data.equals(fs.readFileSync('/bin/busybox'))).toBe(true);
    expect(byPath.get('bin/busybox')!.mode).toBe(0o755);
    for (const applet of ['bin/sh', 'bin/dd', 'bin/uname', 'bin/sleep', 'usr/bin/sha256sum']) expect(byPath.get(applet)?.linkpath).toBe('/bin/busybox');
    for (const d of ['dev/', 'proc/', 'sys/', 'tmp/', 'root/', 'etc/']) expect(byPath.get(d)?.type).toBe('Directory');
    expect(byPath.get('etc/passwd')!.data.toString()).toMatch(/^root:x:0:0:/);
  });

  test('digests, diffID and index annotations; cached and identical on rebuild', async () => {
    const { dir, cleanup } = tempDir('katats-images-');
    try {
      const a = await busyboxImage({ cacheDir: dir });
      const bytes = fs.readFileSync(a.archive);
      fs.rmSync(a.archive);
      fs.rmSync(a.archive.replace(/\.oci\.tar$/, '.json'));
      const b = await busyboxImage({ cacheDir: dir });
      expect(fs.readFileSync(b.archive).equals(bytes)).toBe(true);
      expect(b).toEqual(a);

      const files = new Map((await readTar(bytes)).map((e) => [e.path, e.data]));
      expect(JSON.parse(files.get('oci-layout')!.toString())).toEqual({ imageLayoutVersion: '1.0.0' });
      const blob = (d: string) => files.get(`blobs/sha256/${d.slice(7)}`)!;
      for (const [name, data] of files) if (name.startsWith('blobs/sha256/') && data.length) expect(sha256(data)).toBe('sha256:' + name.slice(13));
      const index = JSON.parse(files.get('index.json')!.toString());
      expect(index.manifests).toHaveLength(1);
      expect(index.manifests[0].digest).toBe(a.manifest.digest);
      expect(index.manifests[0].annotations).toEqual({ 'io.containerd.image.name': 'katats.local/busybox:latest', 'org.opencontainers.image.ref.name': 'latest' });
      const manifest = JSON.parse(blob(a.manifest.digest).toString());
      expect(manifest.layers[0]).toEqual(a.layer);
      const config = JSON.parse(blob(a.config.digest).toString());
      expect(config.rootfs).toEqual({ type: 'layers', diff_ids: [a.diffId] });
      expect(config.config.Cmd).toEqual(['sh']);
      expect(sha256(gunzipSync(blob(a.layer.digest)))).toBe(a.diffId);
      expect(a.layer.digest).not.toBe(a.diffId);
    } finally {
      cleanup();
    }
  });

  test('an uncompressed layer has digest == diffID; Entrypoint and Cmd are written when given', () => {
    const img = buildOciImage({ name: 'x.local/y:1', layers: [writeTar([{ type: 'dir', path: 'tmp' }])], gzip: false, config: { entrypoint: ['/bin/sh', '-c'], cmd: ['echo hi'] } });
    expect(img.layers[0]!.digest).toBe(img.diffIds[0]);
    expect(img.layers[0]!.mediaType).toBe('application/vnd.oci.image.layer.v1.tar');
  });
});
