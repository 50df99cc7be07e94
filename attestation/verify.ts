// Checking a report: the chain (ARK -> ASK -> VCEK, the ARK one the verifier trusts), the report's
// ECDSA P-384/SHA-384 signature over bytes 0x000-0x29F against the VCEK, and that the VCEK is this
// chip's at this TCB (its hwID is the report's CHIP_ID, its SPLs the REPORTED_TCB), as a verifier of
// AMD's reports does.
import { verify as verifySig } from 'node:crypto';
import { ChainError, vcekIdentity, verifyChain, type CertChain } from './chain.js';
import { decodeReport, SIG_ALGO_ECDSA_P384_SHA384, type Report } from './report.js';

export class ReportVerifyError extends Error {
  readonly code = 'ERR_SNP_VERIFY';
}

export interface VerifyOptions {
  /** DER of the ARKs this verifier trusts; without it any self-consistent chain is accepted (`katats attest verify` shows which). */
  trustedArks?: Buffer[];
  at?: Date;
}

export async function verifyReport(bytes: Buffer, chain: CertChain, o: VerifyOptions = {}): Promise<Report> {
  const r = decodeReport(bytes);
  if (r.signatureAlgo !== SIG_ALGO_ECDSA_P384_SHA384) throw new ReportVerifyError(`signature algorithm ${r.signatureAlgo} is not ECDSA P-384 with SHA-384`);
  if (r.flags.signingKey !== 0) throw new ReportVerifyError(`report is signed by key ${r.flags.signingKey}, not the VCEK`);
  let vcek;
  try {
    vcek = await verifyChain(chain, o.trustedArks, o.at);
  } catch (e) {
    if (e instanceof ChainError) throw new ReportVerifyError(`certificate chain: ${e.message}`);
    throw e;
  }
  if (!verifySig('sha384', r.signed, { key: vcek, dsaEncoding: 'ieee-p1363' }, r.signature)) throw new ReportVerifyError('report signature does not verify against the VCEK');
  const id = vcekIdentity(chain.vcek);
  if (!r.flags.maskChipKey && !id.hwId.equals(r.chipId)) throw new ReportVerifyError('the VCEK is not the key of the chip the report names (hwID != CHIP_ID)');
  const t = r.reportedTcb;
  if (id.tcb.bootloader !== t.bootloader || id.tcb.tee !== t.tee || id.tcb.snp !== t.snp || id.tcb.microcode !== t.microcode) {
    throw new ReportVerifyError('the VCEK certifies another TCB than the report\'s REPORTED_TCB');
  }
  return r;
}
