// The pod's attestation endpoint in the guest: when QEMU gave this VM an SNP report port, the agent
// serves CoCo's local API (attestation/cdh.ts) on 127.0.0.1:8006 of the guest's network namespace,
// which every container joins. The loopback interface is the guest's own; it is brought up here.
import { webcrypto } from 'node:crypto';
import type { Logger } from 'pino';
import { CdhServer } from '../attestation/cdh.js';
import { findSnpPort, SnpPortDevice } from '../attestation/port-device.js';
import { runToolOk } from '../sys/exec.js';

const LO_UP_TIMEOUT_MS = 10_000;

// The KBS client's JOSE library uses the global WebCrypto, which node 18 (the guest's) has only behind a flag.
if (!(globalThis as { crypto?: unknown }).crypto) Object.defineProperty(globalThis, 'crypto', { value: webcrypto, configurable: true, writable: true });

/** The running endpoint, or undefined when the VM has no report port or it could not start (logged). */
export async function startCdh(log: Logger): Promise<CdhServer | undefined> {
  const reportPort = findSnpPort();
  if (!reportPort) return undefined;
  const cdhLog = log.child({ subsystem: 'cdh' });
  try {
    await runToolOk('ip', ['link', 'set', 'lo', 'up'], { timeoutMs: LO_UP_TIMEOUT_MS, timeoutCode: 'KATATS_AGENT_LO_UP_TIMEOUT' });
    const cdh = new CdhServer({ device: new SnpPortDevice(reportPort), log: cdhLog });
    const { port } = await cdh.listen();
    cdhLog.info({ port, report_port: reportPort }, 'attestation endpoint serving');
    return cdh;
  } catch (err) {
    cdhLog.error({ err }, 'the attestation endpoint could not start; containers get no resources');
    return undefined;
  }
}
