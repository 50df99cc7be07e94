// Verifying SNP evidence for the KBS: the report against its chain (rooted in an ARK the KBS
// trusts), REPORT_DATA against the session's runtime data, then the report as claims for the
// attestation policy. The evidence is JSON: {attestation_report: base64 of the 1184 bytes,
// cert_chain: [{cert_type: "ark"|"ask"|"vcek", data: base64 DER}]}.
import { ChainError, parseCert, type CertChain } from '../chain.js';
import { ReportFormatError, type Report } from '../report.js';
import { reportDataFor, type HashAlgorithm, type RuntimeData } from '../runtime-data.js';
import { ReportVerifyError, verifyReport } from '../verify.js';
import { KbsError } from './errors.js';

export interface SnpEvidence {
  attestation_report: string;
  cert_chain: { cert_type: string; data: string }[];
}

/** What the attestation policy sees of a report (hex for byte strings, numbers and booleans otherwise). */
export interface Claims {
  measurement: string;
  host_data: string;
  report_data: string;
  chip_id: string;
  vmpl: number;
  guest_svn: number;
  family_id: string;
  image_id: string;
  policy: { abi_major: number; abi_minor: number; smt: boolean; migrate_ma: boolean; debug: boolean; single_socket: boolean };
  reported_tcb: { bootloader: number; tee: number; snp: number; microcode: number };
  platform_info: { smt_enabled: boolean; tsme_enabled: boolean };
}

export function claimsOf(r: Report): Claims {
  return {
    measurement: r.measurement.toString('hex'),
    host_data: r.hostData.toString('hex'),
    report_data: r.reportData.toString('hex'),
    chip_id: r.chipId.toString('hex'),
    vmpl: r.vmpl,
    guest_svn: r.guestSvn,
    family_id: r.familyId.toString('hex'),
    image_id: r.imageId.toString('hex'),
    policy: {
      abi_major: r.policy.abiMajor,
      abi_minor: r.policy.abiMinor,
      smt: r.policy.smt,
      migrate_ma: r.policy.migrateMa,
      debug: r.policy.debug,
      single_socket: r.policy.singleSocket,
    },
    reported_tcb: { ...r.reportedTcb },
    platform_info: { smt_enabled: r.platformInfo.smtEnabled, tsme_enabled: r.platformInfo.tsmeEnabled },
  };
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function b64(what: string, s: unknown): Buffer {
  if (typeof s !== 'string' || !B64.test(s)) throw new KbsError('InvalidRequest', `${what} is not base64`);
  return Buffer.from(s, 'base64');
}

export async function verifySnpEvidence(evidence: unknown, runtime: RuntimeData, trustedArks: Buffer[], alg: HashAlgorithm): Promise<Claims> {
  const ev = evidence as Partial<SnpEvidence> | null;
  if (typeof ev !== 'object' || ev === null || !Array.isArray(ev.cert_chain)) throw new KbsError('InvalidRequest', 'tee-evidence must be {attestation_report, cert_chain}');
  const report = b64('attestation_report', ev.attestation_report);
  const certs: Partial<Record<'ark' | 'ask' | 'vcek', Buffer>> = {};
  for (const c of ev.cert_chain) {
    const t = String((c as { cert_type?: unknown }).cert_type ?? '').toLowerCase();
    if (t !== 'ark' && t !== 'ask' && t !== 'vcek') continue;
    certs[t] = b64(`cert_chain ${t}`, (c as { data?: unknown }).data);
  }
  if (!certs.ark || !certs.ask || !certs.vcek) throw new KbsError('AttestationFailed', 'the evidence must carry the ARK, ASK and VCEK certificates');
  let chain: CertChain;
  try {
    chain = { ark: parseCert(certs.ark), ask: parseCert(certs.ask), vcek: parseCert(certs.vcek) };
  } catch (e) {
    throw new KbsError('AttestationFailed', `certificate chain: ${(e as Error).message}`);
  }
  let r: Report;
  try {
    r = await verifyReport(report, chain, { trustedArks });
  } catch (e) {
    if (e instanceof ReportVerifyError || e instanceof ReportFormatError || e instanceof ChainError) throw new KbsError('AttestationFailed', e.message);
    throw new KbsError('AttestationFailed', `report: ${(e as Error).message}`);
  }
  if (!reportDataFor(runtime, alg).equals(r.reportData)) throw new KbsError('AttestationFailed', 'REPORT_DATA does not bind this session\'s nonce and TEE key');
  return claimsOf(r);
}
