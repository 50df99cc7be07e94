// OOM kills in the guest reach containerd: for the VM's whole life the shim keeps one
// GetOOMEvent long-poll open against the agent (Kata's watchOOMEvents) and hands each container
// id it names to the Task service, which publishes TaskOOM (CRI turns it into "OOMKilled").
import type { Logger } from 'pino';
import type { ServiceClient } from '../proto/rpc.js';
import { Code, TtrpcError } from '../proto/ttrpc/index.js';

/** After a failed GetOOMEvent (the agent restarting its channel, a transient error), the pause before the next. */
export const OOM_RETRY_MS = 1000;

export interface OomWatch {
  /** Ends the long-poll; the loop settles without another call. */
  stop(): void;
  /** Settles once the loop has ended. */
  done: Promise<void>;
}

export function watchOom(agent: ServiceClient<'grpc.AgentService'>, onOom: (containerId: string) => void, log: Logger): OomWatch {
  const ac = new AbortController();
  const pause = () =>
    new Promise<void>((resolve) => {
      const t = setTimeout(done, OOM_RETRY_MS);
      function done() {
        clearTimeout(t);
        ac.signal.removeEventListener('abort', done);
        resolve();
      }
      ac.signal.addEventListener('abort', done, { once: true });
    });
  const loop = async () => {
    while (!ac.signal.aborted) {
      try {
        const { container_id } = await agent.GetOOMEvent({}, { signal: ac.signal });
        if (container_id) onOom(container_id);
      } catch (err) {
        if (ac.signal.aborted) return;
        // An agent without OOM events will not grow them by asking again.
        if (err instanceof TtrpcError && err.code === Code.Unimplemented) {
          log.warn({ err }, 'the agent has no OOM events: TaskOOM will not be published');
          return;
        }
        log.debug({ err }, 'GetOOMEvent failed; asking again');
        await pause();
      }
    }
  };
  const done = loop().catch((err: unknown) => log.error({ err }, 'OOM event loop failed'));
  return { stop: () => ac.abort(), done };
}
