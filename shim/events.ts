// Publishes task events to containerd over ttrpc (containerd.services.events.ttrpc.v1.Events/
// Forward). One ordered queue: containerd must see create before start before exit before delete,
// so a failed send is retried at the head of the queue instead of being sent out of turn.
import type { Logger } from 'pino';
import { settleWithin } from '../sys/timeout.js';
import { Client, dialUnix } from '../proto/ttrpc/index.js';
import { serviceClient, type ServiceClient } from '../proto/rpc.js';
import { packAny, timestamp, type MessageName, type Init } from '../proto/registry.js';
import type { Messages } from '../proto/gen/types.js';

export const Topic = {
  TaskCreate: '/tasks/create',
  TaskStart: '/tasks/start',
  TaskExit: '/tasks/exit',
  TaskDelete: '/tasks/delete',
  TaskExecAdded: '/tasks/exec-added',
  TaskExecStarted: '/tasks/exec-started',
  TaskOOM: '/tasks/oom',
  TaskPaused: '/tasks/paused',
  TaskResumed: '/tasks/resumed',
  TaskCheckpointed: '/tasks/checkpointed',
} as const;

export type EventName = keyof typeof Topic;

interface Item {
  topic: string;
  envelope: Init<Messages['containerd.services.events.ttrpc.v1.Envelope']>;
  attempts: number;
}

export interface PublisherOptions {
  /** containerd's ttrpc address (TTRPC_ADDRESS), unix:// prefix optional. */
  address: string;
  namespace: string;
  logger: Logger;
  queueLimit?: number;
  maxAttempts?: number;
  /** Base of the linear back-off between attempts, in ms. */
  retryDelayMs?: number;
}

export class EventPublisher {
  private readonly queue: Item[] = [];
  private running = false;
  private closed = false;
  private readonly client: Client;
  private readonly events: ServiceClient<'containerd.services.events.ttrpc.v1.Events'>;
  private readonly idleWaiters: Array<() => void> = [];
  private retryTimer: NodeJS.Timeout | undefined;
  dropped = 0;

  constructor(private readonly opts: PublisherOptions) {
    const path = opts.address.replace(/^unix:\/\//, '');
    this.client = new Client(() => dialUnix(path), { logger: opts.logger });
    this.events = serviceClient(this.client, 'containerd.services.events.ttrpc.v1.Events');
  }

  publish<N extends EventName>(name: N, event: Init<Messages[`containerd.events.${N}`]>): void {
    if (this.closed) return;
    const limit = this.opts.queueLimit ?? 2048;
    if (this.queue.length >= limit) {
      const lost = this.queue.shift()!;
      this.dropped++;
      this.opts.logger.error({ topic: lost.topic }, 'event queue full: dropping the oldest event');
    }
    const type = `containerd.events.${name}` as MessageName;
    const now = Date.now();
    this.queue.push({
      topic: Topic[name],
      attempts: 0,
      envelope: {
        timestamp: timestamp(new Date(now)),
        namespace: this.opts.namespace,
        topic: Topic[name],
        event: packAny(type, event as Init<Messages[typeof type]>),
      },
    });
    this.pump();
  }

  /** Resolves once every queued event was delivered or given up on. */
  flush(): Promise<void> {
    if (this.queue.length === 0 && !this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    await settleWithin(this.flush(), 5000);
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.client.close();
  }

  private pump(): void {
    if (this.running || this.retryTimer) return;
    this.running = true;
    this.drain().catch((err: unknown) => this.opts.logger.error({ err }, 'event publisher failed'));
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.closed) {
      const item = this.queue[0]!;
      try {
        await this.events.Forward({ envelope: item.envelope }, { timeoutMs: 5000 });
        this.queue.shift();
      } catch (err) {
        item.attempts++;
        const max = this.opts.maxAttempts ?? 5;
        if (item.attempts >= max) {
          this.queue.shift();
          this.dropped++;
          this.opts.logger.error({ err, topic: item.topic, attempts: item.attempts }, 'giving up on event');
          continue;
        }
        this.opts.logger.warn({ err, topic: item.topic, attempt: item.attempts }, 'event forward failed; retrying');
        this.running = false;
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.pump();
        }, (this.opts.retryDelayMs ?? 1000) * item.attempts);
        return;
      }
    }
    this.running = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
