// The harness's CNI network without a containerd: Debian's plugins linked into an instance's bin
// dir, one bridge network configured, the bridge made with the gateway address of a /24 no route
// covers; a dead instance's bridge goes when the instance is reaped.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CNI_PLUGINS, cniBridgeOf, removeCniBridge, setupCniNetwork } from '../../harness/cni.js';
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

  it('links the plugins, writes a bridge network, makes the bridge; a dead instance loses it when reaped', async () => {
    // Laid out as a harness instance whose owner is gone (a pid that has exited).
    const dir = path.join(base.dir, 'katats-ctrd-test');
    const cni = path.join(dir, 'root', 'cni');
    const net = await setupCniNetwork({ confDir: path.join(cni, 'net.d'), binDir: path.join(cni, 'bin'), dataDir: path.join(cni, 'ipam'), namespace: `katats-cni-${process.pid}` });
    made.push(net.bridge);
    expect(net.bridge).toMatch(/^kt[0-9a-f]{10}$/);
    expect(net.subnet).toMatch(/^10\.222\.\d+\.0\/24$/);
    for (const p of CNI_PLUGINS) expect(fs.statSync(path.join(cni, 'bin', p)).mode & 0o111).not.toBe(0);
    const conf = JSON.parse(fs.readFileSync(path.join(cni, 'net.d', '10-katats.conflist'), 'utf8')) as { plugins: { type: string; ipMasq?: boolean; ipam?: { dataDir: string } }[] };
    expect(conf.plugins.map((p) => p.type)).toEqual(['bridge', 'portmap']);
    expect(conf.plugins[0]!.ipMasq).toBe(false);
    expect(conf.plugins[0]!.ipam!.dataDir).toBe(path.join(cni, 'ipam'));
    expect(execFileSync('ip', ['-o', 'addr', 'show', 'dev', net.bridge], { encoding: 'utf8' })).toContain(`inet ${net.gateway}/24`);
    expect(cniBridgeOf(path.join(cni, 'net.d'))).toBe(net.bridge);

    const dead = spawnSync('true').pid!;
    fs.writeFileSync(path.join(dir, 'owner'), String(dead));
    expect(await reapStaleInstances(base.dir)).toEqual([dir]);
    expect(links()).not.toContain(net.bridge);
    expect(fs.existsSync(dir)).toBe(false);
  });
});
