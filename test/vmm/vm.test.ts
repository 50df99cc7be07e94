// The QEMU driver with the real guest image (TCG here; KVM where the probe proves it works): the
// real agent reached over the agent channel, launch data, a hot-plugged disk a container reads,
// QEMU dying, a boot deadline, a wedged QEMU killed through quit(), and a guest that floods its
// console and its agent log port and then powers off.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestImage } from '../../guest/build.js';
import { Client, Code, TtrpcError, dialUnix } from '../../proto/ttrpc/index.js';
import { serviceClient } from '../../proto/rpc.js';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import { sleep, TimeoutError, withTimeout } from '../../sys/timeout.js';
import { KvmUnavailableError, probeKvm, resolveAccel } from '../../vmm/accel.js';
import type { VmConfig } from '../../vmm/config.js';
import { QMP_TIMEOUT } from '../../vmm/qmp.js';
import { DEFAULT_VMM_CACHE_DIR, QemuVm, VmError } from '../../vmm/vm.js';
import { busyboxRootfs, containerSpec } from '../agent/helpers.js';
import { tempDir } from '../support/tmp.js';
import { guestVmConfig, qemusTagged } from '../support/guest-vm.js';
import { allowAllPolicy } from '../../policy/allow-all.js';

const tag = `vt${process.pid}`;
const tmp = tempDir('katats-vmm-');
const logger = pino({ level: process.env.KATATS_TEST_LOG ?? 'warn' }, pino.destination(2));
// The pod's policy the launch data binds: allow-all with a line of its own.
const POLICY = `# vm.test\n${allowAllPolicy()}`;
const GUEST_SHARED = '/run/kata-containers/shared/containers';
let image: GuestImage;

function config(name: string, extra: Partial<VmConfig> = {}): VmConfig {
  return guestVmConfig(image, `${tag}-${name}`, path.join(tmp.dir, name), extra);
}

const ourQemus = () => qemusTagged(tag);

/** A waitReady probe: Health.Check over the agent channel until it answers SERVING. */
function healthProbe(socket: string, out: { client?: Client }) {
  return async (signal: AbortSignal): Promise<void> => {
    const client = new Client(() => dialUnix(socket), { randomStreamIds: true });
    out.client = client;
    const health = serviceClient(client, 'grpc.Health');
    while (!signal.aborted) {
      const st = await health.Check({ service: '' }, { timeoutMs: 2000 }).then((r) => r.status, () => undefined);
      if (st === 1) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  };
}

beforeAll(async () => {
  image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
}, 900_000);

afterAll(() => {
  tmp.cleanup();
});

describe('QEMU driver with the real guest image and agent', () => {
  it(
    'boots to the agent, hands it the launch data, hotplugs a disk a container reads, and notices QEMU dying',
    async () => {
      const cfg = config('main');
      fs.mkdirSync(cfg.runDir, { recursive: true });
      const hostData = path.join(cfg.runDir, 'host_data');
      fs.writeFileSync(hostData, createHash('sha256').update(POLICY).digest());
      // The pod's shared directory: one container's busybox rootfs, reaching the guest over 9p.
      const shared = path.join(cfg.runDir, 'shared');
      busyboxRootfs(path.join(shared, 'c1'));
      const bootDisk = path.join(cfg.runDir, 'boot0.img');
      fs.writeFileSync(bootDisk, Buffer.alloc(1 << 20));
      const vm = await QemuVm.start(
        {
          ...cfg,
          launchDataFile: hostData,
          kernelParams: ['agent.log=debug'],
          sharedDir: { path: shared, tag: 'kataShared' },
          disks: [{ id: 'boot0', path: bootDisk, readonly: true, serial: 'katats-boot0' }],
        },
        { logger },
      );
      const conn: { client?: Client } = {};
      try {
        expect(vm.accel).toBe('tcg');
        expect((await vm.queryStatus()).status).toBe('running');
        const readyMs = await vm.waitReady(healthProbe(cfg.agentSocket, conn), 180_000);
        expect(readyMs).toBeGreaterThan(0);
        const agent = serviceClient(conn.client!, 'grpc.AgentService');

        // The launch data reached the agent through fw_cfg: it binds the policy. Nothing else is
        // served before it, and no other policy is taken.
        const early = await agent.GetGuestDetails({ mem_block_size: true, mem_hotplug_probe: false }, { timeoutMs: 30_000 }).catch((e: unknown) => e);
        expect((early as TtrpcError).code).toBe(Code.PermissionDenied);
        const wrong = await agent.SetPolicy({ policy: `${POLICY}# changed\n` }, { timeoutMs: 30_000 }).catch((e: unknown) => e);
        expect((wrong as TtrpcError).code).toBe(Code.PermissionDenied);
        expect((wrong as Error).message).toContain(`launch data sha256:${createHash('sha256').update(POLICY).digest('hex')}`);
        await expect(agent.SetPolicy({ policy: POLICY }, { timeoutMs: 30_000 })).resolves.toEqual({});
        const details = await agent.GetGuestDetails({ mem_block_size: true, mem_hotplug_probe: false }, { timeoutMs: 30_000 });
        expect(details.agent_details?.version).toBeTruthy();

        // A disk attached at boot can be unplugged (DEVICE_DELETED needs the guest to let go of it).
        await vm.unplugDisk('boot0');

        // A hot-plugged disk, found by the agent at its PCI path and read by a container.
        const payload = `katats-disk-${randomBytes(6).toString('hex')}\n`;
        const disk = path.join(cfg.runDir, 'disk1.img');
        fs.writeFileSync(disk, Buffer.concat([Buffer.from(payload), Buffer.alloc((1 << 20) - payload.length)]));
        await vm.hotplugDisk({ id: 'disk1', path: disk, readonly: true, serial: 'katats-hp1' });
        const pciPath = await vm.pciPath('disk1');
        expect(pciPath).toMatch(/^[0-9a-f]{2}\/00$/);
        await agent.CreateSandbox(
          {
            sandbox_id: tag,
            hostname: 'vmtest',
            storages: [{ driver: '9p', source: 'kataShared', fstype: '9p', options: ['trans=virtio', 'version=9p2000.L', 'msize=512000', 'cache=mmap'], mount_point: GUEST_SHARED }],
          },
          { timeoutMs: 60_000 },
        );
        // Then its persona: crun's start ran at fixed addresses on TCG, the container keeps ASLR.
        const spec = containerSpec(`${GUEST_SHARED}/c1/rootfs`, ['sh', '-c', `head -c ${payload.length} /dev/hp1 && cat /proc/self/personality`], {
          devices: [{ Path: '/dev/hp1', Type: 'b', Major: 0, Minor: 0, FileMode: 0o440, UID: 0, GID: 0 }],
        });
        spec.Linux!.Resources = { Devices: [{ Allow: true, Type: 'b', Major: 0, Minor: 0, Access: 'r' }] };
        await agent.CreateContainer(
          { container_id: 'c1', exec_id: 'c1', OCI: spec, devices: [{ id: pciPath, type: 'blk', vm_path: '', container_path: '/dev/hp1', options: [] }] },
          { timeoutMs: 120_000 },
        );
        await agent.StartContainer({ container_id: 'c1' }, { timeoutMs: 60_000 });
        const out: Buffer[] = [];
        for (;;) {
          const r = await agent.ReadStdout({ container_id: 'c1', exec_id: '', len: 65536 }, { timeoutMs: 60_000 }).catch((e: Error) => e);
          if (r instanceof Error) {
            expect(r.message).toMatch(/eof/i);
            break;
          }
          out.push(Buffer.from(r.data));
        }
        expect(Buffer.concat(out).toString()).toBe(`${payload}00000000\n`);
        expect((await agent.WaitProcess({ container_id: 'c1', exec_id: '' }, { timeoutMs: 60_000 })).status).toBe(0);
        await agent.RemoveContainer({ container_id: 'c1' }, { timeoutMs: 60_000 });
        await vm.unplugDisk('disk1');

        // The agent's log came through its own port into the capped file the driver writes.
        expect(fs.readFileSync(cfg.agentLogFile!, 'utf8')).toMatch(/agent serving/);
        expect(fs.readFileSync(vm.consoleLogPath, 'utf8')).toMatch(/katats-init: exec agent/);
        // Under TCG the agent's node compiles nothing (VmConfig.guestNodeJit auto), and the init
        // left the startup snapshot, made under other V8 flags, alone.
        const started = JSON.parse(fs.readFileSync(cfg.agentLogFile!, 'utf8').split('\n').find((l) => l.includes('"agent starting"'))!) as { node_flags: string[]; crun_aslr: boolean };
        // and crun's one-shot commands run at fixed addresses (VmConfig.guestCrunAslr auto).
        expect(started.crun_aslr).toBe(vm.accel !== 'tcg');
        if (vm.accel === 'tcg') {
          expect(started.node_flags).toEqual(['--jitless']);
          expect(fs.readFileSync(cfg.agentLogFile!, 'utf8')).toMatch(/node snapshot not used: node options '--jitless'/);
        } else expect(started.node_flags).not.toContain('--jitless');

        // QEMU dies under us: the driver notices at once and says how.
        const t0 = Date.now();
        process.kill(vm.pid!, 'SIGKILL');
        const exit = await vm.exited;
        expect(Date.now() - t0).toBeLessThan(2000);
        expect(exit.reason).toBe('crashed');
        expect(exit.signal).toBe('SIGKILL');
        expect(exit.accel).toBe('tcg');
        expect(vm.running).toBe(false);
        await expect(vm.queryStatus()).rejects.toThrow(/not running/);
        expect(fs.existsSync(path.join(cfg.runDir, 'qmp.sock'))).toBe(false);
        expect(fs.existsSync(path.join(cfg.runDir, 'log.sock'))).toBe(false);
      } finally {
        await conn.client?.close();
        await vm.kill();
      }
    },
    420_000,
  );

  it(
    'a guest flooding its console and agent log port costs capped files and flat memory; its power-off is a shutdown',
    async () => {
      // The guest program a hostile guest could run in place of the agent (node -e, through the
      // init's katats.node_opts): a 256 KiB console line without a newline, then console lines,
      // and the agent log port as fast as virtio-serial takes it; after 15 s it exits, and PID 1
      // powers the VM off.
      const program = `const fs=require('fs');const until=Date.now()+15000;
const con=fs.openSync('/dev/console','w');
const long=Buffer.alloc(256*1024,0x7a);const line=Buffer.from('flood-console '+'c'.repeat(100)+'\\n');
const logLines=Buffer.from(('{"msg":"flood-agent-log '+'a'.repeat(200)+'"}\\n').repeat(280));const longLog=Buffer.alloc(1<<20,0x79);
let cb=0,lb=0,pending=2;
function done(){if(--pending===0){const s='\\nflood done console='+cb+' log='+lb+'\\n';fs.writeSync(con,s);fs.writeSync(1,s);process.exit(0);}}
function loop(fd,first,buf,count){let n=0;const go=()=>{if(Date.now()>until)return done();fs.write(fd,n++?buf:first,(e,w)=>{if(e)return done();count(w);go();});};go();}
loop(con,long,line,(n)=>cb+=n);loop(1,longLog,logLines,(n)=>lb+=n);`;
      const cfg = config('flood', {
        kernelParams: ['katats.node_snapshot=0', `katats.node_opts=-e,eval(atob('${Buffer.from(program).toString('base64')}'))`],
      });
      // Small caps, so that 15 s of flooding crosses them many times over (a TCG guest's UART
      // manages ~50 KB/s; virtio-serial, megabytes).
      const consoleLimits = { maxFileBytes: 64 << 10, rotatedFiles: 2, bytesPerSec: 16 << 10, burstBytes: 32 << 10, reportIntervalMs: 2000 };
      const agentLogLimits = { maxFileBytes: 256 << 10, rotatedFiles: 2, bytesPerSec: 64 << 10, burstBytes: 128 << 10, reportIntervalMs: 2000 };
      const vm = await QemuVm.start(cfg, {
        logger,
        outputLimits: { console: consoleLimits, agentLog: agentLogLimits, maxLineChars: 1024, linesPerSec: 50 },
      });
      const rss0 = process.memoryUsage().rss;
      let rssMax = rss0;
      let heldMax = 0;
      const sampler = setInterval(() => {
        rssMax = Math.max(rssMax, process.memoryUsage().rss);
        heldMax = Math.max(heldMax, vm.outputStats().consoleLineHeld);
      }, 100);
      try {
        const exit = await withTimeout(vm.exited, 240_000, { code: 'TEST_GUARD', what: 'the flooding guest powering off' });
        expect(exit.reason).toBe('shutdown');
        expect(exit.lastConsoleLines.join('\n')).toMatch(/flood done console=\d+ log=\d+/);
        const done = /flood done console=(\d+) log=(\d+)/.exec(exit.lastConsoleLines.join('\n'))!;
        const [guestConsole, guestLog] = [Number(done[1]), Number(done[2])];
        const stats = vm.outputStats();
        process.stderr.write(`flood (TCG): the guest wrote ${guestConsole} console bytes and ${guestLog} agent log bytes in 15 s; kept ${stats.console.written} and ${stats.agentLog!.written}; driver RSS ${rss0 >> 20} -> max ${rssMax >> 20} MiB\n`);
        // The guest really flooded: far more than the caps let through.
        expect(guestLog).toBeGreaterThan(8 << 20);
        expect(guestConsole).toBeGreaterThan(256 << 10);
        for (const [file, guest, limits] of [[vm.consoleLogPath, guestConsole, consoleLimits], [cfg.agentLogFile!, guestLog, agentLogLimits]] as const) {
          const names = fs.readdirSync(path.dirname(file)).filter((n) => n.startsWith(path.basename(file)));
          expect(names.sort()).toEqual([path.basename(file), `${path.basename(file)}.1`, `${path.basename(file)}.2`].sort());
          let total = 0;
          for (const n of names) {
            const size = fs.statSync(path.join(path.dirname(file), n)).size;
            expect(size).toBeLessThanOrEqual(limits.maxFileBytes);
            total += size;
          }
          expect(total).toBeLessThan(guest / 2);
          const all = names.map((n) => fs.readFileSync(path.join(path.dirname(file), n), 'utf8')).join('');
          expect(all).toMatch(/\[katats\] (guest console|agent log): \d+ bytes dropped in the last \d+ s/);
        }
        expect(stats.agentLog!.dropped).toBeGreaterThan(guestLog / 2);
        expect(stats.linesDropped).toBeGreaterThan(0);
        expect(heldMax).toBeLessThanOrEqual(1024);
        // Reading ~100 MB of guest output costs the driver no more than a few MiB of memory.
        expect(rssMax - rss0).toBeLessThan(64 << 20);
      } finally {
        clearInterval(sampler);
        await vm.kill();
      }
    },
    300_000,
  );

  it(
    'kills a boot that misses its deadline and reports the last console lines',
    async () => {
      // loglevel=7 overrides "quiet" so the kernel talks on the console before the deadline.
      const vm = await QemuVm.start(config('deadline', { kernelParams: ['loglevel=7'] }), { logger });
      // The deadline starts once the kernel has spoken, so a loaded machine cannot leave the report empty.
      const spoke = Date.now() + 60_000;
      while (vm.lastConsoleLines().length === 0 && Date.now() < spoke) await sleep(50);
      const err = await vm.waitReady(() => new Promise(() => {}), 1000).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmError);
      const e = err as VmError;
      expect(e.message).toMatch(/not ready within 1000 ms; QEMU killed \[vm .*, accel tcg\]/);
      expect(e.message).toMatch(/last console lines/);
      expect(e.lastConsoleLines.length).toBeGreaterThan(0);
      expect(e.exit?.reason).toBe('boot-timeout');
      expect(vm.running).toBe(false);
    },
    120_000,
  );

  it(
    'a QEMU that no longer answers QMP (stopped): commands time out with their code, and quit() still kills it',
    async () => {
      const vm = await QemuVm.start(config('wedged'), { logger, qmpCommandTimeoutMs: 1000, quitGraceMs: 2000 });
      try {
        expect((await vm.queryStatus()).running).toBe(true);
        process.kill(vm.pid!, 'SIGSTOP');
        const guard = { code: 'TEST_GUARD', what: 'the driver giving up by itself' };
        const err = await withTimeout(vm.queryStatus(), 20_000, guard).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(TimeoutError);
        expect((err as TimeoutError).code).toBe(QMP_TIMEOUT);
        const t0 = Date.now();
        const exit = await withTimeout(vm.quit(), 20_000, guard);
        expect(Date.now() - t0).toBeLessThan(10_000);
        expect(exit.signal).toBe('SIGKILL');
        expect(exit.reason).toBe('quit');
        expect(vm.running).toBe(false);
      } finally {
        await vm.kill();
      }
    },
    120_000,
  );

  it(
    'forced KVM on a host where the probe fails gives a clear error quickly, never a hang',
    async (ctx) => {
      const probe = await probeKvm({ cacheDir: DEFAULT_VMM_CACHE_DIR, kernel: image.kernel });
      // A host with working KVM: forcing it must work, which the boot tests cover.
      if (probe.usable) ctx.skip('KVM is usable on this host');
      const t0 = Date.now();
      const err = await QemuVm.start(config('kvm', { accel: 'kvm' }), { logger }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KvmUnavailableError);
      expect((err as Error).message).toMatch(/KVM was requested .* not usable/);
      expect(Date.now() - t0).toBeLessThan(15_000);
      // auto falls back to TCG
      expect((await resolveAccel('auto', { cacheDir: DEFAULT_VMM_CACHE_DIR, kernel: image.kernel })).accel).toBe('tcg');
    },
    60_000,
  );

  it('leaves no QEMU process or socket behind', () => {
    expect(ourQemus()).toEqual([]);
    for (const name of ['main', 'flood', 'deadline', 'wedged', 'kvm']) {
      for (const sock of ['qmp.sock', 'agent.sock', 'log.sock']) expect(fs.existsSync(path.join(tmp.dir, name, sock))).toBe(false);
    }
  });
});
