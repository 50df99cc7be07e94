// The harness's CNI network without a containerd: Debian's plugins linked into an instance's bin
// dir, two bridge networks configured (the second without a default route), each bridge made with
// the gateway address of a /24 no route covers; a dead instance's bridges go when it is reaped.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CNI_PLUGINS, cniBridgesOf, removeCniBridge, SECOND_NETWORK_ROUTE, setupCniNetworks } from '../../harness/cni.js';
import { reapStaleInstances } from '../../harness/containerd.js';
import { tempDir } from '../support/tmp.js';

const links = () => execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });

describe('harness CNI network', () => {
  const base = tempDir('kt-cni-');
  const made: string[] = [];
  afterAll(async () => {
    for (const b of made) await removeCniBridge(b);
    base.cleanup();
  });

  it('links the plugins, writes two bridge networks, makes the bridges; a dead instance loses them when reaped', async () => {
    // Laid out as a harness instance whose owner is gone (a pid that has exited).
    const dir = path.join(base.dir, 'katats-ctrd-test');
    const cni = path.join(dir, 'root', 'cni');
    const [net, second] = await setupCniNetworks({ confDir: path.join(cni, 'net.d'), binDir: path.join(cni, 'bin'), dataDir: path.join(cni, 'ipam'), namespace: `katats-cni-${process.pid}` }, 2);
    if (!net || !second) throw new Error('two networks expected');
    made.push(net.bridge, second.bridge);
    expect(net.bridge).toMatch(/^kt[0-9a-f]{10}$/);
    expect(net.subnet).toMatch(/^10\.222\.\d+\.0\/24$/);
    for (const p of CNI_PLUGINS) expect(fs.statSync(path.join(cni, 'bin', p)).mode & 0o111).not.toBe(0);
    const conf = JSON.parse(fs.readFileSync(path.join(cni, 'net.d', '10-katats.conflist'), 'utf8')) as { plugins: { type: string; ipMasq?: boolean; ipam?: { dataDir: string } }[] };
    expect(conf.plugins.map((p) => p.type)).toEqual(['bridge', 'portmap']);
    expect(conf.plugins[0]!.ipMasq).toBe(false);
    expect(conf.plugins[0]!.ipam!.dataDir).toBe(path.join(cni, 'ipam'));
    expect(execFileSync('ip', ['-o', 'addr', 'show', 'dev', net.bridge], { encoding: 'utf8' })).toContain(`inet ${net.gateway}/24`);
    expect(cniBridgesOf(path.join(cni, 'net.d'))).toEqual([net.bridge, second.bridge]);
    expect(second.subnet).not.toBe(net.subnet);
    expect(second.ifname).toBe('eth1');
    const conf2 = JSON.parse(fs.readFileSync(path.join(cni, 'net.d', '20-katats-2.conflist'), 'utf8')) as { plugins: { ipam?: { routes: { dst: string }[] } }[] };
    expect(conf2.plugins[0]!.ipam!.routes).toEqual([{ dst: SECOND_NETWORK_ROUTE }]);
    expect(execFileSync('ip', ['-o', 'addr', 'show', 'dev', second.bridge], { encoding: 'utf8' })).toContain(`inet ${second.gateway}/24`);

    const dead = spawnSync('true').pid!;
    fs.writeFileSync(path.join(dir, 'owner'), String(dead));
    expect(await reapStaleInstances(base.dir)).toEqual([dir]);
    expect(links()).not.toContain(net.bridge);
    expect(links()).not.toContain(second.bridge);
    expect(fs.existsSync(dir)).toBe(false);
  });
});
