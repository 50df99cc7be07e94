// The real agent in a real guest (QEMU, TCG unless the probe proved KVM), reached the way the
// shim reaches it: ttrpc over the virtio-serial agent channel, each connection opened with the
// session hello (proto/agent-session.ts). What only a guest can show: the host may connect, leave
// and come back any number of times (a restarted shim, a debugging tool), even in the middle of
// an answer, and no request is lost or answered on the wrong connection; and SetPolicy is bound
// to the launch data QEMU handed the VM.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client, Code, FrameType, TtrpcError, dialUnix } from '../../proto/ttrpc/index.js';
import { dialAgentChannel } from '../../proto/agent-session.js';
import { encodeFrame } from '../../proto/ttrpc/frame.js';
import { encodeRequest } from '../../proto/ttrpc/envelope.js';
import { encode } from '../../proto/registry.js';
import { serviceClient } from '../../proto/rpc.js';
import { DEFAULT_VMM_CACHE_DIR, QemuVm } from '../../vmm/vm.js';
import { resolveAccel } from '../../vmm/accel.js';
import { buildFullGuestImage } from '../../scripts/guest-image.js';
import { tempDir } from '../support/tmp.js';
import { guestVmConfig } from '../support/guest-vm.js';
import { allowAllPolicy } from '../../policy/allow-all.js';

const tmp = tempDir('katats-agentch-');
const logger = pino({ level: process.env.KATATS_TEST_LOG ?? 'warn' }, pino.destination(2));
// The policy the launch data binds: allow-all with a line of its own.
const POLICY = `# agent-channel.test\n${allowAllPolicy()}`;
let vm: QemuVm;
let socket: string;
let runDir: string;

/** A client that connects as the shim does: session hello first. */
function shimClient(): Client {
  return new Client(() => dialAgentChannel(socket, { timeoutMs: 30_000 }), { randomStreamIds: true });
}

/** Health.Check on a fresh connection; closes it afterwards. */
async function healthOnce(timeoutMs: number): Promise<number> {
  const client = shimClient();
  try {
    const r = await serviceClient(client, 'grpc.Health').Check({ service: '' }, { timeoutMs });
    return r.status;
  } finally {
    await client.close();
  }
}

/**
 * A raw request on stream 1 (the id the next client's first call gets too), written on a
 * connection torn down before any answer. Its answer would decode as garbage for a Health.Check.
 */
function abandonRequest(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socket, () => {
      const payload = encodeRequest({
        service: 'grpc.AgentService',
        method: 'GetGuestDetails',
        payload: encode('grpc.GuestDetailsRequest', { mem_block_size: true, mem_hotplug_probe: true }),
        timeoutNano: 0,
        metadata: new Map(),
      });
      s.write(encodeFrame(1, FrameType.Request, 0, payload), () => {
        s.destroy();
        resolve();
      });
    });
    s.on('error', reject);
  });
}

/**
 * A host that asks for a large answer (the agent's Unimplemented error names the 1 MiB method it
 * was asked for) and leaves as soon as the first bytes arrive: the rest of the answer is still on
 * its way through the port, and a kernel write's worth of it reaches whoever connects next.
 */
function leaveMidAnswer(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(socket, () => {
      const payload = encodeRequest({ service: 'grpc.AgentService', method: 'X'.repeat(1 << 20), payload: Buffer.alloc(0), timeoutNano: 0, metadata: new Map() });
      s.write(encodeFrame(1, FrameType.Request, 0, payload));
    });
    s.on('data', () => {
      s.destroy();
      resolve();
    });
    s.on('error', reject);
  });
}

beforeAll(async () => {
  const image = await buildFullGuestImage((m) => process.stderr.write(`guest: ${m}\n`));
  const { accel } = await resolveAccel('auto', { cacheDir: DEFAULT_VMM_CACHE_DIR, kernel: image.kernel });
  process.stderr.write(`agent-channel test: booting the guest on ${accel.toUpperCase()}\n`);
  runDir = path.join(tmp.dir, 'vm');
  fs.mkdirSync(runDir, { recursive: true });
  const hostData = path.join(runDir, 'host_data');
  fs.writeFileSync(hostData, createHash('sha256').update(POLICY).digest());
  socket = path.join(runDir, 'agent.sock');
  vm = await QemuVm.start(
    guestVmConfig(image, `ach${process.pid}`, runDir, { launchDataFile: hostData, kernelParams: ['agent.log=debug'], accel }),
    { logger },
  );
  await vm.waitReady(async (signal) => {
    while (!signal.aborted) {
      if (await healthOnce(2000).then((s) => s === 1, () => false)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 180_000);
}, 900_000);

afterAll(async () => {
  if (vm?.running) await vm.kill();
  tmp.cleanup();
});

describe('the agent channel in a real guest', () => {
  it('answers every connection when the host comes and goes 40 times, even right after an abandoned request', async () => {
    // The abandoned call's answer can reach the next connection (the guest may not see the host
    // leave in between); it comes before the agent's ack to the hello, so the client skips it.
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      if (i % 2 === 1) await abandonRequest();
      statuses.push(await healthOnce(10_000));
    }
    expect(statuses).toEqual(Array(40).fill(1));
    // Every connection began with a hello the agent saw; the abandoned requests' did not.
    await new Promise((r) => setTimeout(r, 300));
    const log = fs.readFileSync(path.join(runDir, 'agent.log'), 'utf8');
    expect(log.match(/host said hello on the agent channel/g)?.length ?? 0).toBeGreaterThanOrEqual(40);
    expect(log).not.toMatch(/agent channel read failed/);
  }, 300_000);

  it('a host that leaves in the middle of a large answer: the next connection gets its own answers, not the tail', async () => {
    // Before the session hello, the next client (random stream ids and all) read the tail as a
    // frame header, skipped ~1.5 GB for it and never decoded an answer again: 5 of 5 timed out.
    for (let round = 0; round < 5; round++) {
      await leaveMidAnswer();
      expect(await healthOnce(10_000)).toBe(1);
    }
    // A host that sends no hello still gets plain ttrpc once the guest has seen the last one leave.
    await new Promise((r) => setTimeout(r, 500));
    const plain = new Client(() => dialUnix(socket), { randomStreamIds: true });
    try {
      expect((await serviceClient(plain, 'grpc.Health').Check({ service: '' }, { timeoutMs: 10_000 })).status).toBe(1);
    } finally {
      await plain.close();
    }
  }, 180_000);

  it('keeps serving concurrent calls on a long-lived connection', async () => {
    const client = shimClient();
    try {
      const health = serviceClient(client, 'grpc.Health');
      const answers = await Promise.all(Array.from({ length: 32 }, () => health.Check({ service: '' }, { timeoutMs: 30_000 })));
      expect(answers.every((a) => a.status === 1)).toBe(true);
      // The launch data binds POLICY: the agent serves nothing else before it.
      await serviceClient(client, 'grpc.AgentService').SetPolicy({ policy: POLICY }, { timeoutMs: 30_000 });
      const details = await serviceClient(client, 'grpc.AgentService').GetGuestDetails({ mem_block_size: true, mem_hotplug_probe: true }, { timeoutMs: 30_000 });
      expect(details.agent_details?.version).toBeTruthy();
      // node is not PID 1: katats-runner init is, and reaps what node cannot
      expect(details.agent_details?.init_daemon).toBe(false);
    } finally {
      await client.close();
    }
  }, 120_000);

  it('refuses a policy that is not the one named by the launch data, and takes the one that is', async () => {
    const client = shimClient();
    try {
      const agent = serviceClient(client, 'grpc.AgentService');
      const err = await agent.SetPolicy({ policy: POLICY + '# changed\n' }, { timeoutMs: 30_000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TtrpcError);
      expect((err as TtrpcError).code).toBe(Code.PermissionDenied);
      expect((err as Error).message).toContain(`launch data sha256:${createHash('sha256').update(POLICY).digest('hex')}`);
      await expect(agent.SetPolicy({ policy: POLICY }, { timeoutMs: 30_000 })).resolves.toEqual({});
    } finally {
      await client.close();
    }
  }, 120_000);
});
