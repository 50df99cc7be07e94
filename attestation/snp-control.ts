// The shim's side of `katats snp serve`'s control socket: register a VM's launch values and get the
// socket made for it (to be wired to the VM's dedicated virtio-serial port), release it at teardown.
// One request per connection, a named time limit, the answer bounded.
import net from 'node:net';
import { withTimeout } from '../sys/timeout.js';
import type { ControlRequest, ControlResponse } from './daemon.js';

export const SNP_CONTROL_TIMEOUT_MS = 10_000;
const MAX_ANSWER = 16 * 1024;

export class SnpControlError extends Error {
  readonly code = 'KATATS_SNP_CONTROL';
}

async function ask(controlSocket: string, req: ControlRequest, timeoutMs: number): Promise<ControlResponse> {
  const c = net.connect(controlSocket);
  const answer = new Promise<ControlResponse>((resolve, reject) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', (e) => reject(new SnpControlError(`SNP daemon at ${controlSocket}: ${e.message}`)));
    c.on('close', () => reject(new SnpControlError(`SNP daemon at ${controlSocket} closed the connection without answering`)));
    c.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_ANSWER) reject(new SnpControlError(`SNP daemon answer longer than ${MAX_ANSWER} bytes`));
        return;
      }
      try {
        resolve(JSON.parse(buf.slice(0, nl)) as ControlResponse);
      } catch (e) {
        reject(new SnpControlError(`SNP daemon answer is not JSON: ${(e as Error).message}`));
      }
    });
    c.write(`${JSON.stringify(req)}\n`);
  });
  try {
    return await withTimeout(answer, timeoutMs, { code: 'KATATS_SNP_CONTROL_TIMEOUT', what: `SNP daemon ${req.op} of ${req.vm}`, onTimeout: () => c.destroy() });
  } finally {
    c.destroy();
  }
}

/** Records the VM's MEASUREMENT and HOST_DATA with the node's SNP daemon; returns the VM's report socket. */
export async function registerVm(
  controlSocket: string,
  vm: string,
  measurement: Buffer,
  hostData: Buffer,
  timeoutMs = SNP_CONTROL_TIMEOUT_MS,
): Promise<string> {
  const r = await ask(controlSocket, { op: 'launch', vm, measurement: measurement.toString('hex'), host_data: hostData.toString('hex') }, timeoutMs);
  if (!r.ok || typeof r.socket !== 'string') throw new SnpControlError(`SNP daemon refused VM ${vm}: ${r.error ?? 'no socket in the answer'}`);
  return r.socket;
}

export async function releaseVm(controlSocket: string, vm: string, timeoutMs = SNP_CONTROL_TIMEOUT_MS): Promise<void> {
  const r = await ask(controlSocket, { op: 'release', vm }, timeoutMs);
  if (!r.ok) throw new SnpControlError(`SNP daemon did not release VM ${vm}: ${r.error ?? 'refused'}`);
}
