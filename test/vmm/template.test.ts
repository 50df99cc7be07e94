// VM templates with the real guest image and agent (TCG unless KVM was proven): clones of one
// template run side by side, each with its own launch data; a template is found only for its own
// key; removing the template under running clones leaves them serving; nothing is left behind.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestImage } from '../../guest/build.js';
import { allowAllPolicy } from '../../policy/allow-all.js';
import type { Client } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import { agentReady } from '../../shim/factory.js';
import type { VmConfig } from '../../vmm/config.js';
import { templateKeyInput } from '../../vmm/template/key.js';
import { buildTemplate, cloneTemplate } from '../../vmm/template/qemu-template.js';
import { type Template, TemplateStore } from '../../vmm/template/store.js';
import { guestVmConfig, qemusTagged } from '../support/guest-vm.js';
import type { QemuVm } from '../../vmm/vm.js';

const tag = `tt${process.pid}`;
// tmpfs, as a template's RAM file wants.
const tmp = fs.mkdtempSync('/dev/shm/katats-tpl-');
const logger = pino({ level: process.env.KATATS_TEST_LOG ?? 'warn' }, pino.destination(2));
const policy = (n: string) => `# template.test ${n}\n${allowAllPolicy()}`;
let image: GuestImage;
let store: TemplateStore;
let template: Template;

function config(name: string, launchData: Buffer): VmConfig {
  const dir = path.join(tmp, 'pods', name);
  fs.mkdirSync(path.join(dir, 'shared'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'host_data'), launchData);
  return guestVmConfig(image, `${tag}-${name}`, dir, {
    sharedDir: { path: path.join(dir, 'shared'), tag: 'kataShared' },
    launchDataFile: path.join(dir, 'host_data'),
    runDir: path.join(dir, 'vm'),
  });
}

const digests = () => ({ kernel: image.manifest.kernel.sha256, initrd: image.manifest.initrd.sha256, rootfs: image.manifest.rootfs.sha256 });
const ourQemus = () => qemusTagged(tag);

async function agentOf(vm: QemuVm): Promise<Client> {
  let client: Client | undefined;
  await vm.waitReady(async (signal) => {
    client = await agentReady(vm.config.agentSocket, signal, 60_000);
  }, 120_000);
  return client!;
}

beforeAll(async () => {
  image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
  store = new TemplateStore(path.join(tmp, 'templates'));
  // The template's launch data is zeros: no policy hashes to it.
  const cfg = config('template', Buffer.alloc(32));
  template = await buildTemplate({
    store,
    input: templateKeyInput(cfg, 'tcg', digests()),
    config: cfg,
    start: { logger },
    log: logger,
    ready: async (vm) => {
      await (await agentOf(vm)).close();
      return { warmMs: 0 };
    },
  });
}, 900_000);

afterAll(() => {
  const left = ourQemus();
  for (const l of left) process.kill(Number(l.split(' ')[0]), 'SIGKILL');
  store?.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
  expect(left).toEqual([]);
});

describe('VM templates', () => {
  it('is found for its own key only', () => {
    const same = templateKeyInput(config('other-paths', Buffer.alloc(32)), 'tcg', digests());
    expect('template' in store.lookup(same)).toBe(true);
    const bigger = templateKeyInput({ ...config('bigger', Buffer.alloc(32)), memoryMiB: 640 }, 'tcg', digests());
    const r = store.lookup(bigger);
    expect('reason' in r && r.reason).toMatch(/^key mismatch: .*template "512M", pod "640M"$/);
    const otherParams = templateKeyInput({ ...config('params', Buffer.alloc(32)), kernelParams: ['agent.log=debug'] }, 'tcg', digests());
    const p = store.lookup(otherParams);
    // On TCG both command lines end with the agent's --jitless and a template's eager compilation,
    // and crun's fixed addresses (VmConfig.guestNodeJit and guestCrunAslr auto).
    expect('reason' in p && p.reason).toMatch(/^key mismatch: .*argv\[\d+\]: template "[^"]*", pod "[^"]* agent\.log=debug katats\.node_opts=--jitless,--no-lazy,--no-flush-bytecode katats\.crun_aslr=off"$/);
  });

  it('clones run side by side, each with its own launch data, and outlive the removed template', async () => {
    const [pa, pb] = [policy('a'), policy('b')];
    const sha = (t: string) => createHash('sha256').update(t).digest();
    const vms: QemuVm[] = [];
    const clients: Client[] = [];
    try {
      for (const [name, p] of [['a', pa], ['b', pb]] as const) {
        const vm = await cloneTemplate(template, config(name, sha(p)), { logger });
        vms.push(vm);
        clients.push(await agentOf(vm));
      }
      const [a, b] = clients.map((c) => serviceClient(c, 'grpc.AgentService'));
      // Each clone checks against its own fw_cfg, not the template's zeros the init copied at boot:
      // bound to its policy, it refuses everything else until that is set.
      await expect(a!.SetGuestDateTime({ Sec: Math.floor(Date.now() / 1000), Usec: 0 })).rejects.toThrow(`binds policy sha256:${sha(pa).toString('hex')}, which was not set yet`);
      await expect(b!.SetPolicy({ policy: pa })).rejects.toThrow(`does not match the launch data sha256:${sha(pb).toString('hex')}`);
      await a!.SetPolicy({ policy: pa });
      await b!.SetPolicy({ policy: pb });
      // The template's files go while both clones run: they keep their (privately mapped) RAM.
      store.destroy();
      expect(fs.readdirSync(store.root)).toEqual([]);
      for (const c of clients) {
        expect((await serviceClient(c, 'grpc.Health').Check({ service: '' })).status).toBe(1);
        await serviceClient(c, 'grpc.AgentService').SetGuestDateTime({ Sec: Math.floor(Date.now() / 1000), Usec: 0 });
      }
      expect(vms.every((v) => v.running)).toBe(true);
    } finally {
      for (const c of clients) await c.close();
      for (const vm of vms) await vm.quit();
    }
    for (const vm of vms) {
      expect(fs.readdirSync(vm.config.runDir).filter((f) => f.endsWith('.sock'))).toEqual([]);
      expect(fs.existsSync(vm.config.agentSocket)).toBe(false);
    }
    expect(ourQemus()).toEqual([]);
  }, 600_000);
});
