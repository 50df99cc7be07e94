// The cloud-hypervisor client against the servers present here: katats-chv always, and the real
// cloud-hypervisor binary when one is installed and can run (the reason it was not run shows as a
// skipped test's name, never as a silent pass). Without a VM: every lifecycle error (404 before
// create, 405 on an illegal transition, 409 on a duplicate id, 400 on a schema violation with its
// messages, as the server says them when the client's own check is bypassed), devices added
// before boot, TAP fds passed with vm.add-net as SCM_RIGHTS, vmm.shutdown. With one VM (QEMU under
// katats-chv, TCG here): the agent reached through hybrid vsock, a disk hot-plugged and removed,
// pause/resume, and the event monitor's order for the whole life.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestImage } from '../../guest/build.js';
import { Client } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import { ClhApiError, ClhRequestError } from '../../vmm/clh/client.js';
import { ClhHypervisor, type ClhLaunch } from '../../vmm/clh/driver.js';
import { httpRequest } from '../../vmm/clh/http.js';
import { dialHybridVsock, HybridVsockError } from '../../vmm/clh/hybrid-vsock.js';
import type { VmConfig } from '../../vmm/clh/types.js';
import { chvCommand, probeRealClh } from '../../vmm/clh/vmm-binary.js';
import type { HypervisorEvent } from '../../vmm/hypervisor.js';
import { agentReady } from '../../harness/agent-ready.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('katats-clh-');
const logger = pino({ level: process.env.KATATS_TEST_LOG ?? 'warn' }, pino.destination(2));
const REAL = process.env.KATATS_CLH_BINARY ?? '/usr/bin/cloud-hypervisor';
const real = await probeRealClh(REAL);

function launch(name: string, config: VmConfig, extra: Partial<ClhLaunch> = {}): ClhLaunch {
  const runDir = path.join(tmp.dir, name);
  return { flavour: 'katats-chv', command: chvCommand(), vmId: name, config, runDir, startTimeoutMs: 60_000, logFile: path.join(runDir, 'vmm.log'), chvArgs: ['--accel', 'tcg'], log: logger, ...extra };
}

/** A request the client would refuse, sent as it is, to see what the server says. */
async function raw(socket: string, method: string, endpoint: string, body: string | undefined): Promise<{ status: number; messages: unknown }> {
  const r = await httpRequest(socket, method, `/api/v1/${endpoint}`, body === undefined ? undefined : Buffer.from(body), { timeoutMs: 10_000, code: 'TEST', what: endpoint });
  return { status: r.status, messages: r.body.length ? JSON.parse(r.body.toString()) : undefined };
}

async function apiError(p: Promise<unknown>): Promise<ClhApiError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(ClhApiError);
  return e as ClhApiError;
}

function tapExists(name: string): boolean {
  return fs.existsSync(`/sys/class/net/${name}`);
}

afterAll(() => tmp.cleanup());

describe('cloud-hypervisor client against katats-chv, without a VM', () => {
  let hv: ClhHypervisor;
  const events: HypervisorEvent[] = [];
  beforeAll(async () => {
    hv = await ClhHypervisor.create(launch('api', { payload: { kernel: '/boot/k', initramfs: '/boot/i' }, disks: [{ path: '/etc/hostname', readonly: true, id: 'root' }] }));
    hv.on('event', (e: HypervisorEvent) => events.push(e));
  }, 120_000);
  afterAll(async () => {
    await hv?.kill();
  });

  it('answers vmm.ping, reports the created VM, and refuses what the state forbids', async () => {
    const ping = await hv.client.ping();
    expect(ping.version).toBe('v1');
    expect(ping.pid).toBe(hv.pid);
    const info = await hv.client.info();
    expect(info.state).toBe('Created');
    expect(info.config.disks).toEqual([{ path: '/etc/hostname', readonly: true, id: 'root' }]);
    // Illegal transitions: 405 with CH's messages.
    for (const call of [() => hv.client.pause(), () => hv.client.resume(), () => hv.client.shutdown()]) {
      const e = await apiError(call());
      expect(e.status).toBe(405);
      expect(e.messages.join(' ')).toContain('invalid VM state transition from Created');
    }
    // A second create: 409.
    expect((await apiError(hv.client.create({ payload: { kernel: '/k' } }))).status).toBe(409);
  });

  it('validates bodies on both ends: the client refuses before sending, the server answers 400 with the schema messages', async () => {
    const refused = await hv.client.call('vm.add-disk', { path: 7, bogus: true }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ClhRequestError);
    expect((refused as ClhRequestError).messages).toEqual(expect.arrayContaining(['DiskConfig: /path must be string', 'DiskConfig: / must NOT have additional properties (bogus)']));
    const r = await raw(hv.apiSocket, 'PUT', 'vm.add-disk', JSON.stringify({ path: 7, bogus: true }));
    expect(r.status).toBe(400);
    expect(r.messages).toEqual(expect.arrayContaining(['Error from API', 'DiskConfig: /path must be string', 'DiskConfig: / must NOT have additional properties (bogus)']));
    expect((await raw(hv.apiSocket, 'PUT', 'vm.add-fs', '{"tag": "x"')).status).toBe(400); // not JSON
    expect((await raw(hv.apiSocket, 'PUT', 'vm.remove-device', undefined)).status).toBe(400); // body required
    expect((await raw(hv.apiSocket, 'GET', 'vm.boot', undefined)).status).toBe(405); // wrong method
    expect((await raw(hv.apiSocket, 'GET', 'vm.nonesuch', undefined)).status).toBe(404);
    // It kept serving: the VM is as it was.
    expect((await hv.client.info()).state).toBe('Created');
  });

  it('adds devices before boot (204), refuses a duplicate id (409), removes them, 404 for an unknown one', async () => {
    expect(await hv.client.addDisk({ path: '/etc/hosts', id: 'data0' })).toBeUndefined();
    expect((await apiError(hv.client.addDisk({ path: '/etc/hosts', id: 'root' }))).status).toBe(409);
    expect(await hv.client.addFs({ tag: 'kataShared', socket: '/nonexistent.sock', num_queues: 1, queue_size: 1024 })).toBeUndefined();
    const info = await hv.client.info();
    expect(info.config.disks?.map((d) => d.id)).toEqual(['root', 'data0']);
    expect(info.config.fs?.[0]?.id).toBe('_fs0');
    await hv.client.removeDevice('data0');
    await hv.client.removeDevice('_fs0');
    expect((await apiError(hv.client.removeDevice('data0'))).status).toBe(404);
    const after = await hv.client.info();
    expect(after.config.disks?.map((d) => d.id)).toEqual(['root']);
    expect(after.config.fs).toEqual([]);
    expect(events.filter((e) => e.event === 'device-removed').map((e) => e.properties?.id)).toEqual(['data0', '_fs0']);
  });

  it('vm.add-net takes its TAP fds as SCM_RIGHTS on the request; a passed fd that is not a TAP is refused', async () => {
    const tap = `ktc${process.pid % 100000}`;
    // katats-fds opens (and so creates) the TAP queue and sends it with the request bytes.
    expect(await hv.client.addNet({ id: 'net0', mac: '52:54:00:12:34:56' }, [{ tap }])).toBeUndefined();
    const net0 = (await hv.client.info()).config.net?.find((n) => n.id === 'net0');
    expect(net0?.fds).toHaveLength(1);
    // The TAP lives only as long as its fds (the front's relay holds them until the connection ends): nothing stays on the host.
    for (let i = 0; i < 100 && tapExists(tap); i++) await new Promise((r) => setTimeout(r, 100));
    expect(tapExists(tap)).toBe(false);
    const file = fs.openSync('/etc/hostname', 'r');
    try {
      const e = await apiError(hv.client.addNet({ id: 'net1' }, [{ fd: file }]));
      expect(e.status).toBe(400);
      expect(e.messages.join(' ')).toContain('/etc/hostname, not a TAP device');
    } finally {
      fs.closeSync(file);
    }
    await hv.client.removeDevice('net0');
  });

  it('vm.delete forgets the VM (404 after), vmm.shutdown ends the process and its socket', async () => {
    await hv.client.delete();
    expect((await apiError(hv.client.info())).status).toBe(404);
    expect((await apiError(hv.client.boot())).status).toBe(404);
    const exit = await hv.stop();
    expect(exit.code).toBe(0);
    expect(fs.existsSync(hv.apiSocket)).toBe(false);
    expect(events.map((e) => e.event)).toEqual(['device-removed', 'device-removed', 'device-removed', 'deleted', 'shutdown']);
  });
});

describe('cloud-hypervisor client against katats-chv, with a guest (QEMU under it)', () => {
  let image: GuestImage;
  beforeAll(async () => {
    image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
  }, 900_000);

  it('boots the guest, reaches its agent over hybrid vsock, hot-plugs and removes a disk, pauses and resumes, in event order', async () => {
    const runDir = path.join(tmp.dir, 'vm');
    fs.mkdirSync(runDir, { recursive: true });
    const vsock = path.join(runDir, 'vsock.sock');
    const config: VmConfig = {
      cpus: { boot_vcpus: 1, max_vcpus: 1 },
      memory: { size: 512 << 20, shared: true },
      payload: { kernel: image.kernel, initramfs: image.initrd, cmdline: image.manifest.cmdline },
      disks: [{ path: image.rootfs, readonly: true, serial: 'katats-root', id: 'root' }],
      serial: { mode: 'File', file: path.join(runDir, 'console.log') },
      console: { mode: 'Off' },
      vsock: { cid: 3, socket: vsock },
    };
    const hv = await ClhHypervisor.create(launch('vm', config, { chvArgs: ['--accel', 'tcg', '--agent-log', path.join(runDir, 'agent.log')] }));
    const events: HypervisorEvent[] = [];
    hv.on('event', (e: HypervisorEvent) => events.push(e));
    let client: Client | undefined;
    try {
      await hv.boot();
      expect(hv.accel).toBe('tcg');
      expect((await hv.info()).state).toBe('Running');
      expect((await apiError(hv.client.boot())).status).toBe(405);
      client = await agentReady(hv, 300_000, 500);
      // A port nothing serves is refused by closing, as CH does.
      const refused = await dialHybridVsock(vsock, 9999, { timeoutMs: 2000 }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(Error);
      expect(refused instanceof HybridVsockError || (refused as { code?: string }).code === 'KATATS_HVSOCK_TIMEOUT').toBe(true);
      // A handshake line that is not CONNECT ends the connection.
      const bad = net.connect(vsock);
      await new Promise((r) => bad.once('connect', r));
      bad.write('HELLO\n');
      await new Promise((r) => bad.once('close', r));

      const disk = path.join(runDir, 'hp.img');
      fs.writeFileSync(disk, Buffer.alloc(1 << 20));
      const plugged = await hv.addDisk({ id: 'hp0', path: disk, readonly: true, serial: 'katats-hp0' });
      expect(plugged.pciPath).toMatch(/^[0-9a-f]{2}\/00$/);
      expect((await hv.info()).devices).toContain('hp0');
      await hv.removeDevice('hp0');
      await hv.pause();
      expect((await hv.info()).state).toBe('Paused');
      await hv.resume();
      expect((await serviceClient(client!, 'grpc.Health').Check({ service: '' }, { timeoutMs: 30_000 })).status).toBe(1);
      await client!.close();
      client = undefined;
      const exit = await hv.stop();
      expect(exit.reason).toBe('quit');
      expect(events.map((e) => `${e.source}:${e.event}`)).toEqual([
        'vm:booting', 'vm:booted', 'vm:device-removed', 'vm:pausing', 'vm:paused', 'vm:resuming', 'vm:resumed', 'vm:shutdown', 'vmm:shutdown',
      ]);
      // Nothing of the VM is left: no QEMU, no sockets.
      const qemus = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('qemu-system') && l.includes(runDir));
      expect(qemus).toEqual([]);
      expect(fs.existsSync(vsock)).toBe(false);
    } finally {
      await client?.close();
      await hv.kill();
    }
  }, 600_000);
});

describe('cloud-hypervisor client against the real cloud-hypervisor', () => {
  if (!real.usable) {
    it.skip(`not run: ${real.why ?? 'unusable'}`, () => {});
    return;
  }
  it('answers vmm.ping and vm.create/vm.info; vm.boot either boots or says why', async () => {
    const h = await ClhHypervisor.create(launch('real', { payload: { kernel: '/nonexistent' } }, { flavour: 'cloud-hypervisor', command: [REAL], chvArgs: [] }));
    try {
      expect((await h.client.ping()).version).toBeTruthy();
      expect((await h.client.info()).state).toBe('Created');
      const e = await h.client.boot().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ClhApiError);
    } finally {
      await h.kill();
    }
  }, 120_000);
});
