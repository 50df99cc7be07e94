// A GuestLauncher for fast Task service tests: instead of booting a VM it starts the real agent in
// local mode (in this process, on a unix socket, with the host's crun: test/agent/helpers.ts),
// and hands the Task service a GuestHandle whose agent client talks to it. The agent's state dir
// plays the guest's /run/kata-containers: the shared directory is its shared/containers and the
// pod's /dev/shm its sandbox/shm, the places a guest agent has them; the local agent sees that
// host dir at its own path (sharedFs 'host'), so nothing is mounted to share it and the rootfs and
// bind sources the shim shares reach crun unchanged. `exited` settles when the handle is stopped,
// or when a test crashes the "VM": the agent's connections drop first, as a dying VM's channel
// does, then its containers go.
import fs from 'node:fs';
import path from 'node:path';
import type { GuestHandle, GuestLauncher, LaunchRequest, VmExit } from '../../shim/guest.js';
import type { AgentConfig } from '../../agent/config.js';
import { startAgent, type TestAgent } from '../agent/helpers.js';
import { sandboxDir as agentSandboxDir, sharedDir as sharedDirOf } from '../../agent/places.js';

export interface LocalGuest {
  handle: GuestHandle;
  agent: TestAgent;
  request: LaunchRequest;
  /** The VM dies under the shim: connections cut, then the agent's containers and state go. */
  crash(): Promise<void>;
}

export interface LocalLauncher {
  launch: GuestLauncher;
  /** Every guest launched so far, in order. */
  guests: LocalGuest[];
  /** Launches currently in progress (a test of concurrent boots reads the peak). */
  inFlight: number;
  peakInFlight: number;
  /** Stops whatever guest the Task service left running (a test that failed midway). */
  cleanup(): Promise<void>;
}

export interface LauncherOptions {
  agent?: Partial<AgentConfig> | (() => Partial<AgentConfig>);
  /** A pause before the agent starts, as a VM boot takes seconds: concurrent Creates overlap in it. */
  bootDelayMs?: number;
  /** Called with each guest before the Task service sees it (to watch the agent's server, say). */
  onGuest?: (g: LocalGuest) => void;
}

export function localLauncher(o: LauncherOptions = {}): LocalLauncher {
  const l: LocalLauncher = {
    guests: [],
    inFlight: 0,
    peakInFlight: 0,
    launch: async (request) => {
      l.inFlight++;
      l.peakInFlight = Math.max(l.peakInFlight, l.inFlight);
      try {
        if (o.bootDelayMs) await new Promise((r) => setTimeout(r, o.bootDelayMs));
        const g = await startLocalGuest(request, typeof o.agent === 'function' ? o.agent() : (o.agent ?? {}));
        l.guests.push(g);
        o.onGuest?.(g);
        return g.handle;
      } finally {
        l.inFlight--;
      }
    },
    cleanup: async () => {
      for (const g of l.guests) await g.handle.stop();
    },
  };
  return l;
}

async function startLocalGuest(request: LaunchRequest, over: Partial<AgentConfig>): Promise<LocalGuest> {
  // The launch data the shim chose reaches the agent as a VM's would (zeros: no policy bound).
  const agent = await startAgent({ launchDigest: request.launchData.toString('hex'), ...over });
  const sharedDir = sharedDirOf(agent.stateDir);
  fs.mkdirSync(sharedDir, { recursive: true });
  let settle!: (x: VmExit) => void;
  const exited = new Promise<VmExit>((r) => (settle = r));
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await agent.close();
      settle({ code: 0, signal: null, reason: 'powered off' });
    })());
  const handle: GuestHandle = {
    agent: agent.svc,
    health: agent.health,
    sharedDir,
    sharedFs: 'host',
    guestDirs: { shared: sharedDir, sandboxShm: path.join(agentSandboxDir(agent.stateDir), 'shm') },
    accel: 'tcg',
    // No VMM: the process that runs the local agent stands for it.
    vmmPid: process.pid,
    exited,
    cgroupDirs: [],
    stop,
  };
  return {
    handle,
    agent,
    request,
    crash: async () => {
      await agent.agent.server.close({ graceful: false });
      settle({ code: null, signal: 'SIGKILL', reason: 'killed by SIGKILL' });
    },
  };
}
