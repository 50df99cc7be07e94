// Wiring: one sandbox, the two services, the policy interceptor, on one ttrpc server that can
// listen on a unix socket (local mode) and/or serve a channel stream (the guest's port).
import { Server } from '../proto/ttrpc/index.js';
import { registerService } from '../proto/rpc.js';
import type { AgentConfig } from './config.js';
import { Sandbox } from './sandbox.js';
import { agentService, healthService } from './service.js';
import { policyInterceptor } from './policy-hook.js';

export interface Agent {
  server: Server;
  sandbox: Sandbox;
  /** Removes every container, releases the sandbox and stops serving. */
  shutdown(): Promise<void>;
}

export function createAgent(config: AgentConfig): Agent {
  const sandbox = new Sandbox(config);
  const server = new Server({ logger: config.log.child({ subsystem: 'ttrpc' }) });
  server.interceptor = policyInterceptor(sandbox.policy);
  registerService(server, 'grpc.AgentService', agentService(sandbox));
  registerService(server, 'grpc.Health', healthService());
  return {
    server,
    sandbox,
    async shutdown() {
      await Promise.allSettled([...sandbox.containers.values()].map((c) => c.remove()));
      await sandbox.teardown();
      await server.close({ graceful: true, graceMs: 1000 });
    },
  };
}
