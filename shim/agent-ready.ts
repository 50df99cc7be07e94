// The shim's one way to wait for a guest's agent, booted cold or restored from a template: dial
// the agent channel once (session hello included) within the boot deadline, then poll
// grpc.Health over that connection until it answers. Later dials (the client reconnecting) get
// the shorter redial deadline.
import type net from 'node:net';
import { dialAgentChannel } from '../proto/agent-session.js';
import { serviceClient } from '../proto/rpc.js';
import { Client } from '../proto/ttrpc/index.js';
import { sleep } from '../sys/timeout.js';
import type { ConnectOptions } from '../vmm/hypervisor.js';

/** How long one Health.Check may take while the agent is polled. */
const HEALTH_POLL_TIMEOUT_MS = 1000;
const HEALTH_POLL_INTERVAL_MS = 100;

export type AgentConnect = (o: ConnectOptions) => Promise<net.Socket>;

/** A client of the agent once it answers Health.Check; aborting `signal` closes it and throws the reason. */
export async function healthyAgent(connect: AgentConnect, signal: AbortSignal, firstTimeoutMs: number, redialTimeoutMs: number): Promise<Client> {
  let first: net.Socket | undefined = await dialAgentChannel(() => connect({ timeoutMs: firstTimeoutMs, signal }), { timeoutMs: firstTimeoutMs, signal });
  const client = new Client(
    () => {
      const s = first;
      first = undefined;
      return s ? Promise.resolve(s) : dialAgentChannel(() => connect({ timeoutMs: redialTimeoutMs }), { timeoutMs: redialTimeoutMs });
    },
    { randomStreamIds: true },
  );
  const health = serviceClient(client, 'grpc.Health');
  for (;;) {
    if (signal.aborted) {
      await client.close();
      throw signal.reason;
    }
    try {
      await health.Check({ service: '' }, { timeoutMs: HEALTH_POLL_TIMEOUT_MS });
      return client;
    } catch {
      await sleep(HEALTH_POLL_INTERVAL_MS);
    }
  }
}
