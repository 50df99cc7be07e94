// `katats verity format` and `katats layer build` from the bundled binary: the root hash they print
// is veritysetup's for the same (padded) data and the library's for the same layer.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeTar } from '../../harness/images/tar.js';
import { buildHostBinaries } from '../../scripts/build.js';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { runTool, runToolOk } from '../../sys/exec.js';
import { parse as parseToml } from 'smol-toml';
import { snapshotterConfig } from '../../shim/cli/snapshotter-install.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-layer-cli-');
let katats: string;

beforeAll(async () => {
  katats = path.join((await buildHostBinaries(() => {})).binDir, 'katats');
}, 180_000);
afterAll(() => tmp.cleanup());

const run = (args: string[]) => runTool(katats, args, { timeoutMs: 60_000, timeoutCode: 'TEST_KATATS_TIMEOUT' });

describe('katats verity format', () => {
  it('prints what veritysetup prints for the zero-padded data, with the zero salt by default', async () => {
    const data = path.join(tmp.dir, 'data');
    fs.writeFileSync(data, randomBytes(1_000_000));
    const ours = await run(['verity', 'format', data]);
    expect(ours.code, ours.stderr).toBe(0);
    const padded = path.join(tmp.dir, 'padded');
    fs.copyFileSync(data, padded);
    fs.truncateSync(padded, 245 * 4096);
    const theirs = await runToolOk('veritysetup', ['format', '--no-superblock', '--salt', '00'.repeat(32), padded, path.join(tmp.dir, 'h')], {
      timeoutMs: 60_000,
      timeoutCode: 'TEST_VERITYSETUP_TIMEOUT',
    });
    const line = (s: string, k: string) => s.split('\n').find((l) => l.startsWith(k));
    for (const k of ['Root hash:', 'Data blocks:', 'Hash blocks:', 'Salt:', 'Hash type:']) expect(line(ours.stdout, k), k).toBe(line(theirs.stdout, k));
    const salted = await run(['verity', 'format', data, path.join(tmp.dir, 'tree'), '--salt', 'abcd']);
    expect(salted.stdout).toMatch(/Salt:\s+abcd/);
    expect(fs.statSync(path.join(tmp.dir, 'tree')).size).toBe(3 * 4096);
    expect((await run(['verity', 'format', data, '--salt', 'xyz'])).code).toBe(1);
    expect((await run(['verity', 'frobnicate'])).code).toBe(2);
  });
});

describe('katats layer build', () => {
  it('prints the root hash the library computes, for a gzip layer as for its plain tar', async () => {
    const tar = writeTar([
      { type: 'file', path: 'etc/hostname', data: Buffer.from('layer\n') },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    ]);
    fs.writeFileSync(path.join(tmp.dir, 'l.tar.gz'), gzipSync(tar));
    fs.writeFileSync(path.join(tmp.dir, 'l.tar'), tar);
    const r = await run(['layer', 'build', path.join(tmp.dir, 'l.tar.gz'), path.join(tmp.dir, 'out.layer')]);
    expect(r.code, r.stderr).toBe(0);
    const lib = await buildLayerFile(fs.createReadStream(path.join(tmp.dir, 'l.tar')), path.join(tmp.dir, 'lib.layer'));
    expect(r.stdout.trim()).toBe(lib.rootHash);
    expect(fs.readFileSync(path.join(tmp.dir, 'out.layer')).equals(fs.readFileSync(path.join(tmp.dir, 'lib.layer')))).toBe(true);
    fs.writeFileSync(path.join(tmp.dir, 'noise'), randomBytes(3000));
    const bad = await run(['layer', 'build', path.join(tmp.dir, 'noise'), path.join(tmp.dir, 'bad.layer')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/katats: tar: bad header checksum/);
    expect(fs.existsSync(path.join(tmp.dir, 'bad.layer'))).toBe(false);
  });
});

describe('katats install, the snapshotter part', () => {
  it('prints a systemd unit running katats snapshotter serve and a containerd config snippet for each config version', async () => {
    const d = (x: string) => path.join(tmp.dir, 'install', x);
    const r = await run(['install', '--bin-dir', path.dirname(katats), '--prefix', d('bin'), '--containerd-config', d('config.toml'), '--drop-in-dir', d('conf.d'), '--katats-config', d('katats.toml')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`ExecStart=${d('bin')}/katats snapshotter serve --root /var/lib/katats/snapshotter --address /run/katats/snapshotter.sock`));
    expect(r.stdout).toContain('[proxy_plugins.tardev]');
    const v2 = parseToml(snapshotterConfig(2, 'katats')) as Record<string, any>;
    expect(v2.proxy_plugins.tardev).toEqual({ type: 'snapshot', address: '/run/katats/snapshotter.sock' });
    expect(v2.plugins['io.containerd.grpc.v1.cri'].containerd).toEqual({ disable_snapshot_annotations: false, runtimes: { katats: { snapshotter: 'tardev' } } });
    const v3 = parseToml(snapshotterConfig(3, 'katats')) as Record<string, any>;
    expect(v3.plugins['io.containerd.cri.v1.images'].runtime_platforms.katats.snapshotter).toBe('tardev');
    expect(v3.plugins['io.containerd.cri.v1.runtime'].containerd.runtimes.katats.snapshotter).toBe('tardev');
    expect(v3.plugins['io.containerd.transfer.v1.local'].unpack_config.map((u: { snapshotter: string }) => u.snapshotter)).toEqual(['overlayfs', 'tardev']);
  });
});
