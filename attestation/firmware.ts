// The emulated SEV-SNP firmware: what the AMD secure processor does for attestation, done by a host
// process. It holds the chip's identity (a random 64-byte CHIP_ID and its ARK -> ASK -> VCEK chain,
// made once and kept under the state dir), records each VM's MEASUREMENT and HOST_DATA when the shim
// launches it, and signs ATTESTATION_REPORTs for a VM with the VCEK.
//
// Trust: in this emulation the host is trusted. Whoever is root on the node can read the VCEK key
// and sign any report; what the emulation proves is everything above the hardware (format,
// signatures, chain, protocol, verification, key release). On an SEV-SNP host the report comes from
// the real firmware through the guest kernel (/dev/sev-guest or configfs-tsm, see device.ts), and
// the chain from AMD's KDS; the verifier does not change.
import { createPrivateKey, randomBytes, sign, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { isValidId } from '../sys/ids.js';
import { issueChain, parseCert, type CertChain } from './chain.js';
import {
  assembleReport, encodeBody, CHIP_ID_SIZE, HOST_DATA_SIZE, MEASUREMENT_SIZE, REPORT_DATA_SIZE, REPORT_VERSION,
  SIG_ALGO_ECDSA_P384_SHA384, type GuestPolicy, type Tcb,
} from './report.js';

/** The TCB this firmware reports and its VCEK certifies (a Milan part's levels). */
export const DEFAULT_TCB: Tcb = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };
/** ABI 0.31, SMT allowed, no debug, no migration agent: what a production CoCo guest launches with. */
export const DEFAULT_GUEST_POLICY: GuestPolicy = { abiMajor: 0, abiMinor: 31, smt: true, migrateMa: false, debug: false, singleSocket: false };

/** What the host tells the firmware about a VM at launch (SNP_LAUNCH_START / LAUNCH_FINISH's inputs and digest). */
export interface LaunchRecord {
  measurement: Buffer;
  hostData: Buffer;
  policy?: GuestPolicy;
  guestSvn?: number;
  familyId?: Buffer;
  imageId?: Buffer;
}

export class FirmwareError extends Error {
  constructor(
    readonly code: 'ERR_SNP_NO_VM' | 'ERR_SNP_BAD_INPUT' | 'ERR_SNP_STATE',
    message: string,
  ) {
    super(message);
  }
}

const FILES = { chipId: 'chip-id', ark: 'ark.pem', ask: 'ask.pem', vcek: 'vcek.pem', arkKey: 'ark.key', askKey: 'ask.key', vcekKey: 'vcek.key' } as const;

export interface FirmwareOptions {
  tcb?: Tcb;
  /** ARK/ASK modulus; AMD's is 4096. */
  rsaBits?: number;
}

export class SnpFirmware {
  private readonly vms = new Map<string, Required<LaunchRecord>>();

  private constructor(
    readonly dir: string,
    readonly chipId: Buffer,
    readonly chain: CertChain,
    private readonly vcekKey: KeyObject,
    readonly tcb: Tcb,
  ) {}

  /** Opens the firmware state in `dir`, making the chip identity and its chain the first time. */
  static async open(dir: string, o: FirmwareOptions = {}): Promise<SnpFirmware> {
    const tcb = o.tcb ?? DEFAULT_TCB;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    const at = (f: string): string => path.join(dir, f);
    if (!fs.existsSync(at(FILES.vcekKey))) {
      const chipId = randomBytes(CHIP_ID_SIZE);
      const c = await issueChain(chipId, tcb, o.rsaBits);
      // Written under temporary names and renamed last, so a crash never leaves half an identity.
      const put = (f: string, data: string | Buffer, mode: number): void => {
        fs.writeFileSync(at(`${f}.tmp`), data, { mode });
        fs.renameSync(at(`${f}.tmp`), at(f));
      };
      const pem = (k: Buffer): string => `-----BEGIN PRIVATE KEY-----\n${k.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
      put(FILES.chipId, `${chipId.toString('hex')}\n`, 0o600);
      put(FILES.ark, c.ark.toString('pem'), 0o644);
      put(FILES.ask, c.ask.toString('pem'), 0o644);
      put(FILES.vcek, c.vcek.toString('pem'), 0o644);
      put(FILES.arkKey, pem(c.keys.ark), 0o600);
      put(FILES.askKey, pem(c.keys.ask), 0o600);
      put(FILES.vcekKey, pem(c.keys.vcek), 0o600);
    }
    const chipId = Buffer.from(fs.readFileSync(at(FILES.chipId), 'utf8').trim(), 'hex');
    if (chipId.length !== CHIP_ID_SIZE) throw new FirmwareError('ERR_SNP_STATE', `${at(FILES.chipId)}: not a ${CHIP_ID_SIZE}-byte chip id`);
    const chain = { ark: parseCert(fs.readFileSync(at(FILES.ark), 'utf8')), ask: parseCert(fs.readFileSync(at(FILES.ask), 'utf8')), vcek: parseCert(fs.readFileSync(at(FILES.vcek), 'utf8')) };
    const vcekKey = createPrivateKey(fs.readFileSync(at(FILES.vcekKey), 'utf8'));
    return new SnpFirmware(dir, chipId, chain, vcekKey, tcb);
  }

  /** Records a VM's launch values; a VM id launched again replaces the old record (a restarted VM). */
  launch(vmId: string, r: LaunchRecord): void {
    if (!isValidId(vmId)) throw new FirmwareError('ERR_SNP_BAD_INPUT', `invalid VM id ${JSON.stringify(vmId.slice(0, 80))}`);
    if (r.measurement.length !== MEASUREMENT_SIZE) throw new FirmwareError('ERR_SNP_BAD_INPUT', `MEASUREMENT must be ${MEASUREMENT_SIZE} bytes`);
    if (r.hostData.length !== HOST_DATA_SIZE) throw new FirmwareError('ERR_SNP_BAD_INPUT', `HOST_DATA must be ${HOST_DATA_SIZE} bytes`);
    this.vms.set(vmId, {
      measurement: Buffer.from(r.measurement),
      hostData: Buffer.from(r.hostData),
      policy: r.policy ?? DEFAULT_GUEST_POLICY,
      guestSvn: r.guestSvn ?? 0,
      familyId: r.familyId ?? Buffer.alloc(16),
      imageId: r.imageId ?? Buffer.alloc(16),
    });
  }

  release(vmId: string): boolean {
    return this.vms.delete(vmId);
  }

  has(vmId: string): boolean {
    return this.vms.has(vmId);
  }

  /** SNP_GUEST_REQUEST(MSG_REPORT_REQ) for `vmId`: a signed 1184-byte report carrying `reportData`. */
  report(vmId: string, reportData: Buffer, vmpl = 0): Buffer {
    const vm = this.vms.get(vmId);
    if (!vm) throw new FirmwareError('ERR_SNP_NO_VM', `no launched VM ${JSON.stringify(vmId)}`);
    if (reportData.length !== REPORT_DATA_SIZE) throw new FirmwareError('ERR_SNP_BAD_INPUT', `REPORT_DATA must be ${REPORT_DATA_SIZE} bytes, not ${reportData.length}`);
    if (!Number.isInteger(vmpl) || vmpl < 0 || vmpl > 3) throw new FirmwareError('ERR_SNP_BAD_INPUT', 'VMPL must be 0-3');
    const fw = { major: 1, minor: 55, build: 21 };
    const body = encodeBody({
      version: REPORT_VERSION,
      guestSvn: vm.guestSvn,
      policy: vm.policy,
      familyId: vm.familyId,
      imageId: vm.imageId,
      vmpl,
      signatureAlgo: SIG_ALGO_ECDSA_P384_SHA384,
      currentTcb: this.tcb,
      platformInfo: { smtEnabled: true, tsmeEnabled: false },
      flags: { authorKeyEn: false, maskChipKey: false, signingKey: 0 },
      reportData,
      measurement: vm.measurement,
      hostData: vm.hostData,
      idKeyDigest: Buffer.alloc(48),
      authorKeyDigest: Buffer.alloc(48),
      reportId: Buffer.alloc(32),
      reportIdMa: Buffer.alloc(32, 0xff),
      reportedTcb: this.tcb,
      chipId: this.chipId,
      committedTcb: this.tcb,
      current: fw,
      committed: fw,
      launchTcb: this.tcb,
    });
    return assembleReport(body, sign('sha384', body, { key: this.vcekKey, dsaEncoding: 'ieee-p1363' }));
  }

  /** The chain as PEM files (what `katats attest verify --chain DIR` reads). */
  writeChain(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, FILES.ark), this.chain.ark.toString('pem'));
    fs.writeFileSync(path.join(dir, FILES.ask), this.chain.ask.toString('pem'));
    fs.writeFileSync(path.join(dir, FILES.vcek), this.chain.vcek.toString('pem'));
  }
}

/** Reads ark.pem, ask.pem and vcek.pem from a directory (the layout SnpFirmware and snpguest's fetch use). */
export function readChainDir(dir: string): CertChain {
  const read = (f: string): ReturnType<typeof parseCert> => parseCert(fs.readFileSync(path.join(dir, f), 'utf8'));
  return { ark: read(FILES.ark), ask: read(FILES.ask), vcek: read(FILES.vcek) };
}
