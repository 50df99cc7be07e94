// Waits for the agent inside a VM that a Hypervisor driver started: polls grpc.Health over the
// driver's own agent channel until it answers SERVING, within the driver's boot deadline.
import { Client } from '../proto/ttrpc/index.js';
import { serviceClient } from '../proto/rpc.js';
import type { Hypervisor } from '../vmm/hypervisor.js';

/** Resolves with a connected client once the agent serves; the VM is killed past `deadlineMs`. */
export async function agentReady(hv: Hypervisor, deadlineMs = 300_000, pollMs = 200): Promise<Client> {
  let client: Client | undefined;
  await hv.waitReady(async (signal) => {
    while (!signal.aborted) {
      const c = new Client(() => hv.connectAgent({ timeoutMs: 10_000, signal }), { randomStreamIds: true });
      const st = await serviceClient(c, 'grpc.Health').Check({ service: '' }, { timeoutMs: 2000 }).then((r) => r.status, () => undefined);
      if (st === 1) {
        client = c;
        return;
      }
      await c.close();
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }, deadlineMs);
  return client!;
}
