// The Task service through its launcher seam: the real agent in local mode stands in for the VM
// (local-guest.ts), so every lifecycle case runs in seconds without QEMU or containerd.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../proto/ttrpc/index.js';
import { sleep } from '../agent/helpers.js';
import { TaskHarness } from './task-harness.js';

const CREATED = 1;
const RUNNING = 2;
const STOPPED = 3;
const PAUSED = 4;
const SIGHUP = 1;
const SIGUSR1 = 10;

/** The error a promise rejects with (the test fails if it resolves). */
async function failure(p: Promise<unknown>): Promise<{ code: number; message: string }> {
  const r = await p.then(
    (v) => ({ resolved: v }),
    (e: unknown) => ({ error: e as { code: number; message: string } }),
  );
  if (!('error' in r)) throw new Error(`expected a failure, got ${JSON.stringify(r.resolved)}`);
  return r.error;
}

/** Settles with 'pending' when `p` has not settled within `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  return Promise.race([p, sleep(ms).then(() => 'pending' as const)]);
}

const LOOP = 'while :; do sleep 0.1; done';

/** A harness (one pod, one shim's Task service) for the enclosing describe block. */
function useHarness(sandboxId: string, o: Parameters<typeof TaskHarness.start>[1] = {}): () => TaskHarness {
  let h: TaskHarness | undefined;
  beforeAll(async () => {
    h = await TaskHarness.start(sandboxId, o);
  });
  afterAll(async () => {
    await h?.close();
  });
  return () => h!;
}

describe('TaskService through the local agent', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-basic');
  beforeAll(() => {
    h = harness();
  });

  it('creates the sandbox container (booting one guest), runs it, passes its output and exit code, and deletes it', async () => {
    const io = await h.run('ts-basic', ['sh', '-c', 'echo hello; echo oops >&2; exit 3']);
    expect(h.launcher.guests.length).toBe(1);
    const w = await h.call('Wait', { id: 'ts-basic' });
    expect(w.exit_status).toBe(3);
    await io.out.waitFor('hello\n');
    await io.err.waitFor('oops\n');
    expect((await h.call('State', { id: 'ts-basic' })).status).toBe(STOPPED);
    const d = await h.call('Delete', { id: 'ts-basic' });
    expect(d.exit_status).toBe(3);
    expect(await h.topics('ts-basic')).toEqual(['/tasks/create', '/tasks/start', '/tasks/exit', '/tasks/delete']);
    // The pod's last container is gone: so is its guest.
    await h.launcher.guests[0]!.handle.exited;
  });

  it('boots a new guest for a new sandbox container after the last one was deleted (the shim stays usable)', async () => {
    // Failed before the VM had explicit states: the old VM's "dead" flag stuck to the new one.
    const io = await h.run('ts-basic', ['sh', '-c', 'echo again']);
    expect(h.launcher.guests.length).toBe(2);
    expect((await h.call('Wait', { id: 'ts-basic' })).exit_status).toBe(0);
    await io.out.waitFor('again\n');
    await h.call('Delete', { id: 'ts-basic' });
  });

});

describe('requests a state does not admit', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-state');
  beforeAll(() => {
    h = harness();
  });

  it('answers a request its state does not admit with FailedPrecondition naming the state, before the guest sees it', async () => {
    await h.call('Create', { id: 'ts-state', bundle: h.bundle('ts-state', ['sh', '-c', LOOP]), stdout: h.stdio('sm').stdout });
    expect((await h.call('State', { id: 'ts-state' })).status).toBe(CREATED);
    let e = await failure(h.call('Pause', { id: 'ts-state' }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/container ts-state is created: cannot pause/);
    e = await failure(h.call('Exec', { id: 'ts-state', exec_id: 'x', spec: { type_url: 'p', value: Buffer.from('{"args":["true"],"cwd":"/"}') } }));
    expect(e.message).toMatch(/is created: cannot exec/);
    await h.call('Start', { id: 'ts-state' });
    e = await failure(h.call('Start', { id: 'ts-state' }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/is running: cannot start/);
    e = await failure(h.call('Resume', { id: 'ts-state' }));
    expect(e.message).toMatch(/is running: cannot resume/);
    e = await failure(h.call('Delete', { id: 'ts-state' }));
    expect(e.message).toMatch(/is running: cannot delete/);
    // Paused: execs of it are reported paused too, and no exec starts in it.
    await h.exec('ts-state', 'loop', ['sh', '-c', LOOP]);
    await h.call('Pause', { id: 'ts-state' });
    expect((await h.call('State', { id: 'ts-state' })).status).toBe(PAUSED);
    expect((await h.call('State', { id: 'ts-state', exec_id: 'loop' })).status).toBe(PAUSED);
    e = await failure(h.call('Pause', { id: 'ts-state' }));
    expect(e.message).toMatch(/is paused: cannot pause/);
    e = await failure(h.call('Exec', { id: 'ts-state', exec_id: 'y', spec: { type_url: 'p', value: Buffer.from('{"args":["true"],"cwd":"/"}') } }));
    expect(e.message).toMatch(/is paused: cannot exec/);
    e = await failure(h.call('Delete', { id: 'ts-state', exec_id: 'loop' }));
    expect(e.message).toMatch(/exec loop of container ts-state is running: cannot delete/);
    await h.call('Resume', { id: 'ts-state' });
    expect((await h.call('State', { id: 'ts-state', exec_id: 'loop' })).status).toBe(RUNNING);
    await h.call('Kill', { id: 'ts-state', signal: 9, all: true });
    expect((await h.call('Wait', { id: 'ts-state' })).exit_status).toBe(137);
    // A finished process: a kill is NotFound (containerd's "process already finished").
    e = await failure(h.call('Kill', { id: 'ts-state', signal: 9 }));
    expect(e.code).toBe(Code.NotFound);
    e = await failure(h.call('Start', { id: 'ts-state' }));
    expect(e.message).toMatch(/is stopped: cannot start/);
    await h.call('Delete', { id: 'ts-state', exec_id: 'loop' });
    await h.call('Delete', { id: 'ts-state' });
    e = await failure(h.call('State', { id: 'ts-state' }));
    expect(e.code).toBe(Code.NotFound);
  });
});

describe('kills before a start', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-early');
  beforeAll(() => {
    h = harness();
  });

  it('a created exec has no process to signal; a created task killed simply ends, with its exit told', async () => {
    await h.run('ts-early', ['sh', '-c', LOOP]);
    const spec = { type_url: 'p', value: Buffer.from('{"args":["true"],"cwd":"/"}') };
    await h.call('Exec', { id: 'ts-early', exec_id: 'idle', spec });
    const e = await failure(h.call('Kill', { id: 'ts-early', exec_id: 'idle', signal: 9 }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/exec idle of container ts-early is created/);
    await h.call('Delete', { id: 'ts-early', exec_id: 'idle' });
    await h.call('Create', { id: 'ts-early-b', bundle: h.bundle('ts-early-b', ['true']) });
    await h.call('Kill', { id: 'ts-early-b', signal: 15 });
    expect((await h.call('Wait', { id: 'ts-early-b' })).exit_status).toBe(128 + 15);
    expect((await h.call('Delete', { id: 'ts-early-b' })).exit_status).toBe(128 + 15);
    expect(await h.topics('ts-early-b')).toEqual(['/tasks/create', '/tasks/exit', '/tasks/delete']);
    await h.remove('ts-early');
  });
});

describe('the sandbox boot', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-boot', { bootDelayMs: 400 });
  beforeAll(() => {
    h = harness();
  });

  it('two concurrent first Creates of a pod boot one VM, and both containers run in it', async () => {
    const a = h.stdio('a');
    const b = h.stdio('b');
    const [ra, rb] = await Promise.allSettled([
      h.call('Create', { id: 'ts-boot', bundle: h.bundle('ts-boot', ['sh', '-c', 'echo a; ' + LOOP]), stdout: a.stdout }),
      h.call('Create', { id: 'ts-boot-b', bundle: h.bundle('ts-boot-b', ['sh', '-c', 'echo b; ' + LOOP]), stdout: b.stdout }),
    ]);
    expect(h.launcher.peakInFlight).toBe(1);
    expect(h.launcher.guests.length).toBe(1);
    expect([ra.status, rb.status]).toEqual(['fulfilled', 'fulfilled']);
    await h.call('Start', { id: 'ts-boot' });
    await h.call('Start', { id: 'ts-boot-b' });
    await a.out.waitFor('a\n');
    await b.out.waitFor('b\n');
    await h.remove('ts-boot-b');
    await h.remove('ts-boot');
  });

  it('a Create joining a boot that fails fails too, and the next sandbox boots afresh', async () => {
    const bad = h.call('Create', { id: 'ts-boot', bundle: h.bundle('ts-boot', ['true'], { annotations: { 'io.katacontainers.config.hypervisor.machine_type': 'x' } }) });
    const joiner = h.call('Create', { id: 'ts-boot-b', bundle: h.bundle('ts-boot-b', ['true']) });
    const [eb, ej] = await Promise.all([failure(bad), failure(joiner)]);
    expect(eb.code).toBe(Code.InvalidArgument);
    expect(ej.code).toBe(Code.FailedPrecondition);
    expect(ej.message).toMatch(/failed to boot/);
    const io = await h.run('ts-boot', ['echo', 'fresh']);
    await io.out.waitFor('fresh\n');
    await h.remove('ts-boot');
  });
});

describe('a pod network the guest refuses', () => {
  let h: TaskHarness;
  // The guest configures the pod's network while the sandbox container is created (nothing there
  // reads it); the local agent, given no network namespace, refuses UpdateInterface.
  let withNetwork = true;
  const iface = { device: 'eth0', name: 'eth0', hwAddr: '02:00:00:00:00:01', mtu: 1500, IPAddresses: [{ family: 0, address: '10.9.0.2', mask: '24' }] };
  const harness = useHarness('ts-net', {
    onGuest: (g) => {
      if (!withNetwork) return;
      g.handle.podNetwork = {
        netns: '/proc/self/ns/net',
        plan: { endpoints: [{ link: 'eth0', tap: 'tap0_kt', mac: iface.hwAddr, mtu: 1500, iface: iface as never }], routes: [], neighbours: [], skipped: [] },
        nics: [],
        teardown: () => Promise.resolve(),
      };
    },
  });
  beforeAll(() => {
    h = harness();
  });

  it("fails the sandbox Create with the guest's refusal once the container is created, stops the guest, and the next boot works", async () => {
    const e = await failure(h.call('Create', { id: 'ts-net', bundle: h.bundle('ts-net', ['true']) }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.message).toMatch(/UpdateInterface: this agent runs in local mode without a network namespace/);
    await h.launcher.guests[0]!.handle.exited;
    expect(await h.topics('ts-net')).toEqual([]);
    withNetwork = false;
    const io = await h.run('ts-net', ['echo', 'fresh']);
    await io.out.waitFor('fresh\n');
    await h.remove('ts-net');
  });
});

describe('Kill', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-kill');
  beforeAll(() => {
    h = harness();
  });

  const trapping = (who: string) => `trap "echo ${who}-hup" HUP; trap "echo ${who}-usr1" USR1; echo ${who}-ready; ${LOOP}`;

  it('without --all signals only the init, addressed by the container id; with --all every process', async () => {
    const init = await h.run('ts-kill', ['sh', '-c', trapping('init')]);
    const ex = await h.exec('ts-kill', 'trapper', ['sh', '-c', trapping('exec')]);
    await init.out.waitFor('init-ready');
    await ex.out.waitFor('exec-ready');
    await h.call('Kill', { id: 'ts-kill', signal: SIGHUP });
    await init.out.waitFor('init-hup');
    // A signal sent after the HUP reaches the exec: had the HUP reached it too, its line would come first.
    await h.call('Kill', { id: 'ts-kill', exec_id: 'trapper', signal: SIGUSR1 });
    await ex.out.waitFor('exec-usr1');
    expect(ex.out.text).not.toContain('exec-hup');
    expect(init.out.text).not.toContain('init-usr1');
    await h.call('Kill', { id: 'ts-kill', signal: SIGHUP, all: true });
    await ex.out.waitFor('exec-hup');
    await init.out.waitFor(/init-hup[\s\S]*init-hup/);
    await h.remove('ts-kill');
  });
});

describe('exit ordering', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-order');
  beforeAll(() => {
    h = harness();
  });

  it("publishes the init's TaskExit after its execs', even when an exec's exit is held up by its output", async () => {
    // The init ends once the exec has written its output; the exec dies with the init's PID namespace.
    await h.run('ts-order', ['sh', '-c', 'while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 5']);
    const ex = h.stdio('slow-reader');
    ex.out.pause();
    const spec = { type_url: 'p', value: Buffer.from(JSON.stringify({ args: ['sh', '-c', 'head -c 300000 /dev/zero | tr "\\0" x; touch /tmp/go; sleep 1000'], cwd: '/', env: ['PATH=/bin'] })) };
    await h.call('Exec', { id: 'ts-order', exec_id: 'writer', spec, stdout: ex.stdout, stderr: ex.stderr });
    await h.call('Start', { id: 'ts-order', exec_id: 'writer' });
    const initWait = h.call('Wait', { id: 'ts-order' });
    // The guest sees the init gone; its exec's exit cannot be told before its output is read.
    const guestInit = () => h.guest.agent.agent.sandbox.containers.get('ts-order')?.init;
    for (let i = 0; i < 200 && guestInit()?.exitCode === undefined; i++) await sleep(50);
    expect(guestInit()?.exitCode).toBe(5);
    expect(await within(initWait, 500)).toBe('pending');
    ex.out.resume();
    expect((await initWait).exit_status).toBe(5);
    await ex.out.waitFor(/x{300000}/);
    const exits = (await h.flushEvents()).filter((e) => e.topic === '/tasks/exit' && e.event.container_id === 'ts-order').map((e) => e.event.id);
    expect(exits).toEqual(['writer', 'ts-order']);
    expect((await h.call('Wait', { id: 'ts-order', exec_id: 'writer' })).exit_status).toBe(137);
    await h.call('Delete', { id: 'ts-order', exec_id: 'writer' });
    await h.call('Delete', { id: 'ts-order' });
  });

});

describe('an exec deleted before it started', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-never');
  beforeAll(() => {
    h = harness();
  });

  it('releases the Wait of an exec deleted before it started, and refuses a Wait after', async () => {
    await h.run('ts-never', ['sh', '-c', LOOP]);
    const spec = { type_url: 'p', value: Buffer.from('{"args":["true"],"cwd":"/"}') };
    await h.call('Exec', { id: 'ts-never', exec_id: 'never', spec });
    const w = h.call('Wait', { id: 'ts-never', exec_id: 'never' });
    expect(await within(w, 100)).toBe('pending');
    const d = await h.call('Delete', { id: 'ts-never', exec_id: 'never' });
    expect(d.exit_status).toBe(0);
    const e = await failure(within(w, 5000).then((r) => (r === 'pending' ? 'still waiting' : r)));
    expect(e.code).toBe(Code.NotFound);
    expect(e.message).toMatch(/deleted before it started/);
    expect((await failure(h.call('Wait', { id: 'ts-never', exec_id: 'never' }))).code).toBe(Code.NotFound);
    await h.remove('ts-never');
  });

});

describe('the VM dying', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-death');
  beforeAll(() => {
    h = harness();
  });

  it('the VM dying ends every process with 255, execs before their init, and the pod can be deleted', async () => {
    await h.run('ts-death', ['sh', '-c', LOOP]);
    await h.exec('ts-death', 'e1', ['sh', '-c', LOOP]);
    await h.exec('ts-death', 'e2', ['sh', '-c', LOOP]);
    await h.guest.crash();
    expect((await h.call('Wait', { id: 'ts-death' })).exit_status).toBe(255);
    expect((await h.call('Wait', { id: 'ts-death', exec_id: 'e1' })).exit_status).toBe(255);
    const exits = (await h.flushEvents()).filter((e) => e.topic === '/tasks/exit' && e.event.container_id === 'ts-death').map((e) => e.event.id).slice(-3);
    expect(exits.at(-1)).toBe('ts-death');
    expect([...exits.slice(0, 2)].sort()).toEqual(['e1', 'e2']);
    const e = await failure(h.call('Pause', { id: 'ts-death' }));
    expect(e.message).toMatch(/is stopped: cannot pause/);
    await h.call('Delete', { id: 'ts-death', exec_id: 'e1' });
    await h.call('Delete', { id: 'ts-death' });
    expect(h.service.vmState).toBe('stopped');
  });
});

describe('Pids and Connect', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-pids');
  beforeAll(() => {
    h = harness();
  });

  it("answer with the VMM's pid as Kata does (not the guest's pids), and Connect names the API version served", async () => {
    await h.run('ts-pids', ['sh', '-c', LOOP]);
    const vmm = h.guest.handle.vmmPid;
    const pids = await h.call('Pids', { id: 'ts-pids' });
    expect(pids.processes.map((p) => p.pid)).toEqual([vmm]);
    // In local mode the container's own pid is a host pid: it is not what containerd gets.
    const guestPid = h.guest.agent.agent.sandbox.container('ts-pids').init.pid;
    expect(guestPid).toBeGreaterThan(0);
    expect(pids.processes.map((p) => p.pid)).not.toContain(guestPid);
    expect((await h.call('State', { id: 'ts-pids' })).pid).toBe(vmm);
    expect(await h.call('Connect', { id: 'ts-pids' })).toEqual({ shim_pid: process.pid, task_pid: vmm, version: '2' });
    expect((await h.call('Connect', { id: 'ts-pids' }, { service: 'containerd.task.v3.Task' })).version).toBe('3');
    await h.remove('ts-pids');
  });
});

describe('deadlines', () => {
  // What the agent's server saw of each call's deadline (ttrpc timeout_nano), by method.
  const seen: Array<{ method: string; left: number | undefined }> = [];
  let h: TaskHarness;
  const harness = useHarness('ts-deadline', {
    onGuest: (g) => {
      const server = g.agent.agent.server;
      const policy = server.interceptor;
      server.interceptor = (ctx, payload) => {
        seen.push({ method: ctx.method, left: ctx.deadline === undefined ? undefined : ctx.deadline - Date.now() });
        return policy?.(ctx, payload);
      };
    },
  });
  beforeAll(() => {
    h = harness();
  });
  const last = (method: string) => seen.filter((s) => s.method === method).at(-1);

  it("carries containerd's deadline on to the agent call, and bounds setup calls by their own limit", async () => {
    await h.run('ts-deadline', ['sh', '-c', LOOP]);
    // No deadline from containerd: setup calls still have theirs (120 s), requests the default (60 s).
    expect(last('CreateContainer')?.left).toBeGreaterThan(100_000);
    expect(last('CreateContainer')?.left).toBeLessThanOrEqual(120_000);
    await h.call('Kill', { id: 'ts-deadline', signal: SIGUSR1 });
    expect(last('SignalProcess')?.left).toBeGreaterThan(30_000);
    expect(last('SignalProcess')?.left).toBeLessThanOrEqual(60_000);
    // containerd's own deadline, shorter, wins.
    await h.call('Kill', { id: 'ts-deadline', signal: SIGUSR1 }, { timeoutMs: 4000 });
    expect(last('SignalProcess')?.left).toBeGreaterThan(0);
    expect(last('SignalProcess')?.left).toBeLessThanOrEqual(4000);
    await h.call('Pause', { id: 'ts-deadline' }, { timeoutMs: 5000 });
    expect(last('PauseContainer')?.left).toBeLessThanOrEqual(5000);
    await h.call('Resume', { id: 'ts-deadline' }, { timeoutMs: 5000 });
    expect(last('ResumeContainer')?.left).toBeLessThanOrEqual(5000);
    const io = h.stdio('dl-exec');
    const spec = { type_url: 'p', value: Buffer.from('{"args":["echo","in-time"],"cwd":"/","env":["PATH=/bin"]}') };
    await h.call('Exec', { id: 'ts-deadline', exec_id: 'dl', spec, stdout: io.stdout });
    await h.call('Start', { id: 'ts-deadline', exec_id: 'dl' }, { timeoutMs: 7000 });
    expect(last('ExecProcess')?.left).toBeLessThanOrEqual(7000);
    await io.out.waitFor('in-time\n');
    await h.remove('ts-deadline');
  });
});

describe('OOM events', () => {
  let h: TaskHarness;
  const harness = useHarness('ts-oom');
  beforeAll(() => {
    h = harness();
  });

  it('publishes TaskOOM for a container the guest OOM-killed, and its TaskExit follows', async () => {
    await h.run('ts-oom', ['sh', '-c', LOOP]);
    // awk doubles a string until the 32 MiB limit kills it (the agent watches the sandbox's other containers).
    await h.run('ts-oom-hog', ['awk', 'BEGIN { s = "x"; while (1) s = s s }'], { memoryLimit: 32 << 20 });
    expect((await h.call('Wait', { id: 'ts-oom-hog' })).exit_status).toBe(137);
    for (let i = 0; i < 100 && !(await h.topics('ts-oom-hog')).includes('/tasks/oom'); i++) await sleep(50);
    // Both, in whichever order the guest's two reports arrive (CRI's OOMKilled does not depend on it).
    expect((await h.topics('ts-oom-hog')).sort()).toEqual(['/tasks/create', '/tasks/exit', '/tasks/oom', '/tasks/start']);
    const oom = h.events.find((e) => e.topic === '/tasks/oom');
    expect(oom).toMatchObject({ name: 'containerd.events.TaskOOM', event: { container_id: 'ts-oom-hog' } });
    await h.call('Delete', { id: 'ts-oom-hog' });
    // An id the shim does not know (the guest's word only) is not passed on.
    h.guest.agent.agent.sandbox.pushOom('not-in-this-pod');
    await sleep(200);
    expect((await h.flushEvents()).filter((e) => e.topic === '/tasks/oom').map((e) => e.event.container_id)).toEqual(['ts-oom-hog']);
    await h.remove('ts-oom');
  });
});
