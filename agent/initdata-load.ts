// The VM's initdata (attestation/initdata.ts), as the agent takes it at start: QEMU serves the
// document as fw_cfg opt/katats/initdata (local mode: --initdata FILE). It counts only when its
// digest is the VM's launch data (HOST_DATA): then its policy.rego is the policy in force (bound: the
// launch data pins it through the document) and its KBS is the pod's. A document that does not match
// is no licence: the agent then refuses every request, saying why, rather than run with a policy or
// a KBS the launch data does not vouch for.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { PolicyGate } from './policy-hook.js';
import { InitdataError, initdataKbsUrl, initdataPolicy, MAX_INITDATA_BYTES, parseInitdata } from '../attestation/initdata.js';

export const FW_CFG_INITDATA = '/sys/firmware/qemu_fw_cfg/by_name/opt/katats/initdata/raw';

export type LoadedInitdata =
  | {
      ok: true;
      /** sha256 of policy.rego (the gate's bound policy), or zeros when initdata carries none. */
      policyDigest: string;
      policy?: string;
      kbsUrl?: string;
      digest: string;
    }
  | { ok: false; problem: string };

/** undefined when the VM has no initdata; else the document checked against the launch data (hex). */
export function loadInitdata(file: string, launchData: string | undefined): LoadedInitdata | undefined {
  let raw: Buffer;
  try {
    const st = fs.statSync(file);
    // fw_cfg's sysfs files report size 0: read, then bound.
    if (st.size > MAX_INITDATA_BYTES) return { ok: false, problem: `the VM's initdata is larger than ${MAX_INITDATA_BYTES} bytes` };
    raw = fs.readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return { ok: false, problem: `the VM's initdata cannot be read: ${(e as Error).message}` };
  }
  if (raw.length > MAX_INITDATA_BYTES) return { ok: false, problem: `the VM's initdata is larger than ${MAX_INITDATA_BYTES} bytes` };
  try {
    const d = parseInitdata(raw.toString('utf8'));
    const hostData = d.hostData.toString('hex');
    if (hostData !== launchData) {
      return { ok: false, problem: `the VM's initdata (${d.algorithm} ${d.digest.toString('hex')}) is not what its launch data binds (${launchData ?? 'none'})` };
    }
    const policy = initdataPolicy(d);
    const kbsUrl = initdataKbsUrl(d);
    return {
      ok: true,
      policyDigest: policy === undefined ? '0'.repeat(64) : createHash('sha256').update(policy).digest('hex'),
      ...(policy !== undefined ? { policy } : {}),
      ...(kbsUrl !== undefined ? { kbsUrl } : {}),
      digest: d.digest.toString('hex'),
    };
  } catch (e) {
    if (e instanceof InitdataError) return { ok: false, problem: `the VM's initdata: ${e.message}` };
    throw e;
  }
}

/** Initdata's policy in force and its KBS named, before the agent serves anything. */
export function applyInitdata(
  d: Extract<LoadedInitdata, { ok: true }>,
  gate: PolicyGate,
  cdh: { setKbsUrl(url: string): void } | undefined,
  log: Logger,
): void {
  log.info({ initdata_digest: d.digest, policy_sha256: d.policy === undefined ? null : d.policyDigest, kbs: d.kbsUrl ?? null }, 'initdata matches the launch data');
  if (d.policy !== undefined) {
    try {
      gate.set(d.policy);
    } catch (e) {
      // The gate stays bound to a policy it does not have: every request is refused.
      log.error({ err: (e as Error).message }, "initdata's policy.rego cannot be set: the agent refuses every request");
    }
  }
  if (d.kbsUrl === undefined) return;
  if (!cdh) {
    log.warn({ kbs: d.kbsUrl }, 'initdata names a KBS, but this VM has no SNP report port: no attestation endpoint');
    return;
  }
  try {
    cdh.setKbsUrl(d.kbsUrl);
  } catch (e) {
    log.error({ err: (e as Error).message }, "initdata's KBS URL is not usable");
  }
}
