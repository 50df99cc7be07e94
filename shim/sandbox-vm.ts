// The pod's VM as the Task service sees it, an explicit machine (Firecracker keeps its VM state
// as an enum, not inferred from handles):
//
//   stopped --boot--> booting --> ready --(VMM exited)--> dead
//                        |          |                      |
//                        '---------'+----> stopping <------'
//                                              |
//                                           stopped
//
// One boot at a time: the Create that boots claims the machine synchronously, and every other
// Create of the pod waits for that boot instead of starting a second VM. Agent calls go only to a
// ready VM; in any other state the request fails with FailedPrecondition naming the state.
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import type { GuestHandle } from './guest.js';
import { alreadyExists, precondition } from './errdefs.js';
import { watchOom, type OomWatch } from './oom-events.js';
import { AGENT_TEARDOWN_TIMEOUT_MS } from './agent-calls.js';

export type VmState = 'stopped' | 'booting' | 'ready' | 'dead' | 'stopping';

const NEXT: Record<VmState, readonly VmState[]> = {
  stopped: ['booting'],
  booting: ['ready', 'stopping'],
  ready: ['dead', 'stopping'],
  dead: ['stopping'],
  stopping: ['stopped'],
};

export interface SandboxVmOptions {
  sandboxId: string;
  log: Logger;
  /** The VMM went away under running containers: every live process must exit. */
  onDeath: (reason: string) => void;
  /** The agent reported an OOM kill in this container. */
  onOom: (containerId: string) => void;
}

export class SandboxVm {
  private current: VmState = 'stopped';
  private guest: GuestHandle | undefined;
  private booted: Promise<GuestHandle> | undefined;
  private stopping: Promise<void> | undefined;
  private oom: OomWatch | undefined;
  /** Why the VM died before its boot was done (then the boot fails rather than report a dead VM ready). */
  private diedBooting: string | undefined;

  constructor(private readonly o: SandboxVmOptions) {}

  get state(): VmState {
    return this.current;
  }

  /** The VM being booted or run, for what only identifies it (pid, accel). */
  get handle(): GuestHandle | undefined {
    return this.guest;
  }

  private to(next: VmState): void {
    if (!NEXT[this.current].includes(next)) throw new Error(`sandbox ${this.o.sandboxId}: the VM cannot go from ${this.current} to ${next}`);
    this.o.log.debug({ from: this.current, to: next }, 'sandbox VM state');
    this.current = next;
  }

  /**
   * Boots the pod's VM: `launch` starts it, `setup` readies the guest (CreateSandbox). Claimed
   * before the first await, so a concurrent boot fails with AlreadyExists; a failed boot is undone.
   */
  boot(launch: () => Promise<GuestHandle>, setup: (g: GuestHandle) => Promise<void>): Promise<GuestHandle> {
    if (this.current !== 'stopped') throw alreadyExists(`sandbox ${this.o.sandboxId}: its VM is ${this.current}; a pod has one sandbox VM`);
    this.to('booting');
    this.diedBooting = undefined;
    this.booted = (async () => {
      try {
        const g = await launch();
        if (this.current !== 'booting') {
          // stop() ran while the launch was under way: this VM was never tracked, so it goes here.
          await g.stop().catch((err: unknown) => this.o.log.error({ err }, 'stopping a VM launched after its stop failed'));
          throw precondition(`sandbox ${this.o.sandboxId}: the VM was stopped while it booted`);
        }
        // Tracked from here on: whatever fails next, stop() must find this VM.
        this.guest = g;
        g.exited.then((x) => this.onExit(g, x.reason)).catch((err: unknown) => this.o.log.error({ err }, 'handling the VM exit failed'));
        await setup(g);
        if (this.current !== 'booting' || this.diedBooting) throw precondition(`sandbox ${this.o.sandboxId}: the VM ${this.diedBooting ? `died while it booted: ${this.diedBooting}` : 'was stopped while it booted'}`);
        this.to('ready');
        this.oom = watchOom(g.agent, this.o.onOom, this.o.log);
        return g;
      } catch (e) {
        await this.stop().catch((err: unknown) => this.o.log.error({ err }, 'undoing a failed boot failed'));
        throw e;
      }
    })();
    return this.booted;
  }

  /** The ready VM, once a boot in progress is done. For Creates that join the pod. */
  async ready(what: string): Promise<GuestHandle> {
    if (this.current === 'booting') {
      await this.booted!.catch((e: Error) => {
        throw precondition(`sandbox ${this.o.sandboxId}: its VM failed to boot (${e.message}): cannot ${what}`);
      });
    }
    if (this.current !== 'ready') throw precondition(`sandbox ${this.o.sandboxId}: the VM is ${this.current}: cannot ${what}`);
    return this.guest!;
  }

  /** The ready VM's agent. */
  agent(what: string): ServiceClient<'grpc.AgentService'> {
    if (this.current !== 'ready') throw precondition(`sandbox ${this.o.sandboxId}: the VM is ${this.current}: cannot ${what}`);
    return this.guest!.agent;
  }

  private onExit(g: GuestHandle, reason: string): void {
    if (g !== this.guest) return;
    if (this.current === 'booting') {
      this.o.log.error({ reason }, 'sandbox VM died while it booted');
      this.diedBooting = reason;
      return;
    }
    if (this.current !== 'ready') return;
    this.to('dead');
    this.oom?.stop();
    this.o.onDeath(reason);
  }

  /** Powers the VM off (DestroySandbox first while the agent lives). Idempotent. */
  stop(): Promise<void> {
    if (this.current === 'stopped') return Promise.resolve();
    if (this.current === 'stopping') return this.stopping!;
    const wasReady = this.current === 'ready';
    this.to('stopping');
    this.stopping = (async () => {
      this.oom?.stop();
      this.oom = undefined;
      const g = this.guest;
      try {
        if (g && wasReady) await g.agent.DestroySandbox({}, { timeoutMs: AGENT_TEARDOWN_TIMEOUT_MS }).catch((err) => this.o.log.warn({ err }, 'DestroySandbox failed'));
        await g?.stop();
        if (g) this.o.log.info('sandbox VM stopped');
      } finally {
        this.guest = undefined;
        this.to('stopped');
      }
    })();
    return this.stopping;
  }
}
