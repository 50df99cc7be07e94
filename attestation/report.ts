// The SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP firmware ABI, "ATTESTATION_REPORT Structure"), version 2:
// 1184 bytes, little-endian integers, signed by the VCEK with ECDSA P-384/SHA-384 over bytes
// 0x000-0x29F; the signature at 0x2A0 holds R and S as little-endian integers, each in a 72-byte
// field (48 significant bytes, zero above), then reserved zeros to the end. Encoding and decoding
// only: signing is the firmware's job (firmware.ts), checking the verifier's (verify.ts).
export const REPORT_SIZE = 0x4a0;
export const SIGNED_LENGTH = 0x2a0;
export const REPORT_VERSION = 2;
/** SIGNATURE_ALGO: ECDSA P-384 with SHA-384. */
export const SIG_ALGO_ECDSA_P384_SHA384 = 1;

export const OFF = {
  version: 0x000,
  guestSvn: 0x004,
  policy: 0x008,
  familyId: 0x010,
  imageId: 0x020,
  vmpl: 0x030,
  signatureAlgo: 0x034,
  currentTcb: 0x038,
  platformInfo: 0x040,
  flags: 0x048,
  reportData: 0x050,
  measurement: 0x090,
  hostData: 0x0c0,
  idKeyDigest: 0x0e0,
  authorKeyDigest: 0x110,
  reportId: 0x140,
  reportIdMa: 0x160,
  reportedTcb: 0x180,
  chipId: 0x1a0,
  committedTcb: 0x1e0,
  currentBuild: 0x1e8,
  committedBuild: 0x1ec,
  launchTcb: 0x1f0,
  signature: 0x2a0,
} as const;
/** Offsets of R and S inside the signature field, and each one's field width. */
export const SIG_R = 0x00;
export const SIG_S = 0x48;
export const SIG_COMPONENT_FIELD = 72;
export const P384_BYTES = 48;

export const REPORT_DATA_SIZE = 64;
export const MEASUREMENT_SIZE = 48;
export const HOST_DATA_SIZE = 32;
export const CHIP_ID_SIZE = 64;

/** TCB_VERSION (8 bytes): security patch levels of the firmware components, as the VCEK certifies them. */
export interface Tcb {
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}

/** Guest policy (the POLICY field): what the guest owner allowed at launch. */
export interface GuestPolicy {
  abiMinor: number;
  abiMajor: number;
  smt: boolean;
  migrateMa: boolean;
  debug: boolean;
  singleSocket: boolean;
}

export interface FirmwareVersion {
  major: number;
  minor: number;
  build: number;
}

export interface ReportBody {
  version: number;
  guestSvn: number;
  policy: GuestPolicy;
  familyId: Buffer;
  imageId: Buffer;
  vmpl: number;
  signatureAlgo: number;
  currentTcb: Tcb;
  /** PLATFORM_INFO bit 0 SMT enabled, bit 1 TSME enabled. */
  platformInfo: { smtEnabled: boolean; tsmeEnabled: boolean };
  /** bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY (0 = VCEK). */
  flags: { authorKeyEn: boolean; maskChipKey: boolean; signingKey: number };
  reportData: Buffer;
  measurement: Buffer;
  hostData: Buffer;
  idKeyDigest: Buffer;
  authorKeyDigest: Buffer;
  reportId: Buffer;
  reportIdMa: Buffer;
  reportedTcb: Tcb;
  chipId: Buffer;
  committedTcb: Tcb;
  current: FirmwareVersion;
  committed: FirmwareVersion;
  launchTcb: Tcb;
}

export interface Report extends ReportBody {
  /** The signature as raw big-endian r || s (48 + 48 bytes), what ECDSA verifiers take (ieee-p1363). */
  signature: Buffer;
  /** The bytes the signature covers. */
  signed: Buffer;
}

export class ReportFormatError extends Error {
  readonly code = 'ERR_SNP_REPORT_FORMAT';
}

// Guest policy bits: ABI_MINOR 7:0, ABI_MAJOR 15:8, SMT 16, bit 17 reserved and must be one,
// MIGRATE_MA 18, DEBUG 19, SINGLE_SOCKET 20.
const POLICY_RESERVED_ONE = 1n << 17n;

export function encodePolicy(p: GuestPolicy): bigint {
  return (
    BigInt(p.abiMinor & 0xff) |
    (BigInt(p.abiMajor & 0xff) << 8n) |
    (p.smt ? 1n << 16n : 0n) |
    POLICY_RESERVED_ONE |
    (p.migrateMa ? 1n << 18n : 0n) |
    (p.debug ? 1n << 19n : 0n) |
    (p.singleSocket ? 1n << 20n : 0n)
  );
}

export function decodePolicy(v: bigint): GuestPolicy {
  const bit = (n: bigint): boolean => ((v >> n) & 1n) === 1n;
  return { abiMinor: Number(v & 0xffn), abiMajor: Number((v >> 8n) & 0xffn), smt: bit(16n), migrateMa: bit(18n), debug: bit(19n), singleSocket: bit(20n) };
}

// TCB_VERSION: byte 0 BOOT_LOADER, 1 TEE, 2-5 reserved, 6 SNP, 7 MICROCODE.
function writeTcb(b: Buffer, off: number, t: Tcb): void {
  b.fill(0, off, off + 8);
  b[off] = t.bootloader;
  b[off + 1] = t.tee;
  b[off + 6] = t.snp;
  b[off + 7] = t.microcode;
}

function readTcb(b: Buffer, off: number): Tcb {
  return { bootloader: b[off]!, tee: b[off + 1]!, snp: b[off + 6]!, microcode: b[off + 7]! };
}

function sized(name: string, v: Buffer, n: number): Buffer {
  if (v.length !== n) throw new ReportFormatError(`${name} must be ${n} bytes, not ${v.length}`);
  return v;
}

/** The 0x2A0 signed bytes of a report body (everything before the signature). */
export function encodeBody(r: ReportBody): Buffer {
  const b = Buffer.alloc(SIGNED_LENGTH);
  b.writeUInt32LE(r.version, OFF.version);
  b.writeUInt32LE(r.guestSvn, OFF.guestSvn);
  b.writeBigUInt64LE(encodePolicy(r.policy), OFF.policy);
  sized('FAMILY_ID', r.familyId, 16).copy(b, OFF.familyId);
  sized('IMAGE_ID', r.imageId, 16).copy(b, OFF.imageId);
  b.writeUInt32LE(r.vmpl, OFF.vmpl);
  b.writeUInt32LE(r.signatureAlgo, OFF.signatureAlgo);
  writeTcb(b, OFF.currentTcb, r.currentTcb);
  b.writeBigUInt64LE((r.platformInfo.smtEnabled ? 1n : 0n) | (r.platformInfo.tsmeEnabled ? 2n : 0n), OFF.platformInfo);
  b.writeUInt32LE((r.flags.authorKeyEn ? 1 : 0) | (r.flags.maskChipKey ? 2 : 0) | ((r.flags.signingKey & 7) << 2), OFF.flags);
  sized('REPORT_DATA', r.reportData, REPORT_DATA_SIZE).copy(b, OFF.reportData);
  sized('MEASUREMENT', r.measurement, MEASUREMENT_SIZE).copy(b, OFF.measurement);
  sized('HOST_DATA', r.hostData, HOST_DATA_SIZE).copy(b, OFF.hostData);
  sized('ID_KEY_DIGEST', r.idKeyDigest, 48).copy(b, OFF.idKeyDigest);
  sized('AUTHOR_KEY_DIGEST', r.authorKeyDigest, 48).copy(b, OFF.authorKeyDigest);
  sized('REPORT_ID', r.reportId, 32).copy(b, OFF.reportId);
  sized('REPORT_ID_MA', r.reportIdMa, 32).copy(b, OFF.reportIdMa);
  writeTcb(b, OFF.reportedTcb, r.reportedTcb);
  sized('CHIP_ID', r.chipId, CHIP_ID_SIZE).copy(b, OFF.chipId);
  writeTcb(b, OFF.committedTcb, r.committedTcb);
  b.writeUInt8(r.current.build, OFF.currentBuild);
  b.writeUInt8(r.current.minor, OFF.currentBuild + 1);
  b.writeUInt8(r.current.major, OFF.currentBuild + 2);
  b.writeUInt8(r.committed.build, OFF.committedBuild);
  b.writeUInt8(r.committed.minor, OFF.committedBuild + 1);
  b.writeUInt8(r.committed.major, OFF.committedBuild + 2);
  writeTcb(b, OFF.launchTcb, r.launchTcb);
  return b;
}

/** The full report: the signed body followed by the signature field (r, s little-endian, zero-padded). */
export function assembleReport(body: Buffer, rawSignature: Buffer): Buffer {
  if (body.length !== SIGNED_LENGTH) throw new ReportFormatError(`report body must be ${SIGNED_LENGTH} bytes`);
  if (rawSignature.length !== 2 * P384_BYTES) throw new ReportFormatError(`an ECDSA P-384 signature is ${2 * P384_BYTES} bytes (r || s)`);
  const out = Buffer.alloc(REPORT_SIZE);
  body.copy(out, 0);
  Buffer.from(rawSignature.subarray(0, P384_BYTES)).reverse().copy(out, OFF.signature + SIG_R);
  Buffer.from(rawSignature.subarray(P384_BYTES)).reverse().copy(out, OFF.signature + SIG_S);
  return out;
}

export function decodeReport(b: Buffer): Report {
  if (b.length !== REPORT_SIZE) throw new ReportFormatError(`an SNP attestation report is ${REPORT_SIZE} bytes, not ${b.length}`);
  const version = b.readUInt32LE(OFF.version);
  if (version < 2) throw new ReportFormatError(`report version ${version} is not supported (2 or later)`);
  const sig = b.subarray(OFF.signature);
  // The field is 72 bytes per component; a P-384 value fits in 48 and the rest must be zero.
  for (const at of [SIG_R, SIG_S]) {
    if (sig.subarray(at + P384_BYTES, at + SIG_COMPONENT_FIELD).some((x) => x !== 0)) throw new ReportFormatError('signature component wider than 48 bytes');
  }
  if (sig.subarray(SIG_S + SIG_COMPONENT_FIELD).some((x) => x !== 0)) throw new ReportFormatError('signature reserved bytes are not zero');
  const r = Buffer.from(sig.subarray(SIG_R, SIG_R + P384_BYTES)).reverse();
  const s = Buffer.from(sig.subarray(SIG_S, SIG_S + P384_BYTES)).reverse();
  const flags = b.readUInt32LE(OFF.flags);
  const platformInfo = b.readBigUInt64LE(OFF.platformInfo);
  const copy = (off: number, n: number): Buffer => Buffer.from(b.subarray(off, off + n));
  const fw = (off: number): FirmwareVersion => ({ build: b[off]!, minor: b[off + 1]!, major: b[off + 2]! });
  return {
    version,
    guestSvn: b.readUInt32LE(OFF.guestSvn),
    policy: decodePolicy(b.readBigUInt64LE(OFF.policy)),
    familyId: copy(OFF.familyId, 16),
    imageId: copy(OFF.imageId, 16),
    vmpl: b.readUInt32LE(OFF.vmpl),
    signatureAlgo: b.readUInt32LE(OFF.signatureAlgo),
    currentTcb: readTcb(b, OFF.currentTcb),
    platformInfo: { smtEnabled: (platformInfo & 1n) === 1n, tsmeEnabled: (platformInfo & 2n) === 2n },
    flags: { authorKeyEn: (flags & 1) === 1, maskChipKey: (flags & 2) === 2, signingKey: (flags >> 2) & 7 },
    reportData: copy(OFF.reportData, REPORT_DATA_SIZE),
    measurement: copy(OFF.measurement, MEASUREMENT_SIZE),
    hostData: copy(OFF.hostData, HOST_DATA_SIZE),
    idKeyDigest: copy(OFF.idKeyDigest, 48),
    authorKeyDigest: copy(OFF.authorKeyDigest, 48),
    reportId: copy(OFF.reportId, 32),
    reportIdMa: copy(OFF.reportIdMa, 32),
    reportedTcb: readTcb(b, OFF.reportedTcb),
    chipId: copy(OFF.chipId, CHIP_ID_SIZE),
    committedTcb: readTcb(b, OFF.committedTcb),
    current: fw(OFF.currentBuild),
    committed: fw(OFF.committedBuild),
    launchTcb: readTcb(b, OFF.launchTcb),
    signature: Buffer.concat([r, s]),
    signed: copy(0, SIGNED_LENGTH),
  };
}

/** `snpguest display report`-like text. */
export function formatReport(r: Report): string {
  const hex = (x: Buffer): string => x.toString('hex');
  const tcb = (t: Tcb): string => `bootloader ${t.bootloader}, tee ${t.tee}, snp ${t.snp}, microcode ${t.microcode}`;
  const p = r.policy;
  return [
    `Version:            ${r.version}`,
    `Guest SVN:          ${r.guestSvn}`,
    `Guest policy:       abi ${p.abiMajor}.${p.abiMinor}, smt ${p.smt}, migrate_ma ${p.migrateMa}, debug ${p.debug}, single_socket ${p.singleSocket}`,
    `Family ID:          ${hex(r.familyId)}`,
    `Image ID:           ${hex(r.imageId)}`,
    `VMPL:               ${r.vmpl}`,
    `Signature algo:     ${r.signatureAlgo}${r.signatureAlgo === SIG_ALGO_ECDSA_P384_SHA384 ? ' (ECDSA P-384 with SHA-384)' : ''}`,
    `Current TCB:        ${tcb(r.currentTcb)}`,
    `Platform info:      smt_enabled ${r.platformInfo.smtEnabled}, tsme_enabled ${r.platformInfo.tsmeEnabled}`,
    `Flags:              author_key_en ${r.flags.authorKeyEn}, mask_chip_key ${r.flags.maskChipKey}, signing_key ${r.flags.signingKey === 0 ? 'VCEK' : r.flags.signingKey}`,
    `Report data:        ${hex(r.reportData)}`,
    `Measurement:        ${hex(r.measurement)}`,
    `Host data:          ${hex(r.hostData)}`,
    `ID key digest:      ${hex(r.idKeyDigest)}`,
    `Author key digest:  ${hex(r.authorKeyDigest)}`,
    `Report ID:          ${hex(r.reportId)}`,
    `Report ID (MA):     ${hex(r.reportIdMa)}`,
    `Reported TCB:       ${tcb(r.reportedTcb)}`,
    `Chip ID:            ${hex(r.chipId)}`,
    `Committed TCB:      ${tcb(r.committedTcb)}`,
    `Current version:    ${r.current.major}.${r.current.minor}.${r.current.build}`,
    `Committed version:  ${r.committed.major}.${r.committed.minor}.${r.committed.build}`,
    `Launch TCB:         ${tcb(r.launchTcb)}`,
    `Signature r:        ${hex(r.signature.subarray(0, P384_BYTES))}`,
    `Signature s:        ${hex(r.signature.subarray(P384_BYTES))}`,
  ].join('\n');
}
