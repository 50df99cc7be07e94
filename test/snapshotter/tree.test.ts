// The layer tree's own rules, without an image: path cleaning as containerd cleans "/" + name,
// whiteouts that name nothing, names EROFS cannot hold, and the bound on entries.
import { describe, expect, it } from 'vitest';
import { components, LayerTree } from '../../snapshotter/erofs/tree.js';
import type { TarEntry } from '../../snapshotter/tar/reader.js';

const entry = (path: string, type: TarEntry['type'] = 'file', x: Partial<TarEntry> = {}): TarEntry => ({
  type,
  path,
  linkname: '',
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtimeSec: 0,
  mtimeNsec: 0,
  devmajor: 0,
  devminor: 0,
  xattrs: new Map(),
  offset: 0,
  ...x,
});

describe('layer tree', () => {
  it('cleans paths as containerd does: ".." stops at the root, "." and empty parts vanish', () => {
    expect(components('./a//b/./c/')).toEqual(['a', 'b', 'c']);
    expect(components('../../etc/passwd')).toEqual(['etc', 'passwd']);
    expect(components('a/../../b')).toEqual(['b']);
    expect(components('/')).toEqual([]);
  });

  it('refuses whiteouts of nothing, over-long names, a non-directory root, and more entries than its bound', () => {
    expect(() => new LayerTree().add(entry('dir/.wh.'))).toThrow(/names nothing/);
    expect(() => new LayerTree().add(entry('dir/.wh...'))).toThrow(/names nothing/);
    expect(() => new LayerTree().add(entry('x'.repeat(256)))).toThrow(/longer than 255 bytes/);
    expect(() => new LayerTree().add(entry('./', 'symlink', { linkname: 'x' }))).toThrow(/root of the layer is a symlink/);
    const t = new LayerTree(3);
    for (const p of ['a', 'b', 'c']) t.add(entry(p));
    expect(() => t.add(entry('d'))).toThrow(/more than 3 tar entries/);
  });

  it('a hard link to a directory is refused; a file replacing a directory drops the directory', () => {
    const t = new LayerTree();
    t.add(entry('d', 'dir'));
    t.add(entry('d/f'));
    expect(() => t.add(entry('l', 'hardlink', { linkname: 'd' }))).toThrow(/names the directory "d"/);
    t.add(entry('d'));
    expect(t.root.children!.get('d')?.kind).toBe('file');
    expect(() => t.add(entry('d/f'))).toThrow(/beneath "d", which is a file/);
  });
});
