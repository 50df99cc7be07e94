// The emulated chip's certificate chain, shaped like AMD's: ARK (root, self-signed) -> ASK
// (intermediate) -> VCEK (the chip's versioned endorsement key, ECDSA P-384, which signs reports).
// ARK and ASK are RSA-4096 with RSASSA-PSS/SHA-384, as AMD's are; the VCEK carries AMD's extensions
// (hwID = the chip id, the TCB's security patch levels) so a verifier can tie a report to it.
// Certificates are made and parsed with @peculiar/x509 (WebCrypto keys), reports signed and checked
// with node:crypto.
import { webcrypto, createPublicKey, type KeyObject } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
import { x509 } from './x509.js';
import type { Tcb } from './report.js';


export const RSA_PSS_SHA384 = { name: 'RSA-PSS', hash: 'SHA-384', saltLength: 48 } as const;
export const ECDSA_P384 = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' } as const;

// AMD's VCEK extensions (AMD's "Versioned Chip Endorsement Key" specification).
export const OID = {
  structVersion: '1.3.6.1.4.1.3704.1.1',
  productName: '1.3.6.1.4.1.3704.1.2',
  blSpl: '1.3.6.1.4.1.3704.1.3.1',
  teeSpl: '1.3.6.1.4.1.3704.1.3.2',
  snpSpl: '1.3.6.1.4.1.3704.1.3.3',
  ucodeSpl: '1.3.6.1.4.1.3704.1.3.8',
  hwId: '1.3.6.1.4.1.3704.1.4',
} as const;

export const PRODUCT = 'Milan';
const ORG = 'O=katats emulated SEV-SNP, OU=Engineering, L=Santa Clara, ST=CA, C=US';

export interface CertChain {
  ark: x509.X509Certificate;
  ask: x509.X509Certificate;
  vcek: x509.X509Certificate;
}

export interface IssuedChain extends CertChain {
  /** PKCS#8 DER of each private key. */
  keys: { ark: Buffer; ask: Buffer; vcek: Buffer };
}

// Tiny DER for the extension values: INTEGER (small, non-negative), IA5String, OCTET STRING.
function derLen(n: number): Buffer {
  return n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
}
function der(tag: number, body: Buffer): ArrayBuffer {
  const b = Buffer.concat([Buffer.from([tag]), derLen(body.length), body]);
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.length) as ArrayBuffer;
}
const derInt = (v: number): ArrayBuffer => der(0x02, v >= 0x80 ? Buffer.from([0, v]) : Buffer.from([v]));

/** The value of a DER TLV (tag checked), as AMD's extensions hold them. */
function derValue(raw: ArrayBuffer, tag: number): Buffer {
  const b = Buffer.from(raw);
  if (b[0] !== tag || b.length < 2) throw new Error(`extension value is not DER tag ${tag}`);
  let len = b[1]!;
  let at = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n > 2 || b.length < 2 + n) throw new Error('extension value length is malformed');
    len = b.readUIntBE(2, n);
    at = 2 + n;
  }
  if (at + len !== b.length) throw new Error('extension value length does not match');
  return b.subarray(at);
}

export interface VcekIdentity {
  hwId: Buffer;
  tcb: Tcb;
  product: string;
}

/** hwID and TCB from a VCEK's extensions. */
export function vcekIdentity(vcek: x509.X509Certificate): VcekIdentity {
  const ext = (oid: string): ArrayBuffer => {
    const e = vcek.getExtension(oid);
    if (!e) throw new Error(`VCEK has no extension ${oid}`);
    return e.value;
  };
  const int = (oid: string): number => {
    const v = derValue(ext(oid), 0x02);
    return v.length ? v.readUIntBE(0, Math.min(v.length, 6)) : 0;
  };
  return {
    hwId: Buffer.from(derValue(ext(OID.hwId), 0x04)),
    tcb: { bootloader: int(OID.blSpl), tee: int(OID.teeSpl), snp: int(OID.snpSpl), microcode: int(OID.ucodeSpl) },
    product: derValue(ext(OID.productName), 0x16).toString('ascii'),
  };
}

async function pkcs8(k: CryptoKey): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.exportKey('pkcs8', k));
}

async function rsaKeys(bits: number): Promise<CryptoKeyPair> {
  const alg = { ...RSA_PSS_SHA384, modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]) };
  return (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
}

const YEAR_MS = 365 * 24 * 3600 * 1000;

/** A fresh chain for a chip: new ARK, ASK and VCEK. `rsaBits` is AMD's 4096 unless a caller asks otherwise. */
export async function issueChain(chipId: Buffer, tcb: Tcb, rsaBits = 4096): Promise<IssuedChain> {
  const notBefore = new Date(Date.now() - 60_000);
  const ca = (pathLen: number): x509.Extension[] => [
    new x509.BasicConstraintsExtension(true, pathLen, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ];
  const arkKeys = await rsaKeys(rsaBits);
  const ark = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01', name: `CN=ARK-${PRODUCT}, ${ORG}`, notBefore, notAfter: new Date(notBefore.getTime() + 25 * YEAR_MS),
    signingAlgorithm: RSA_PSS_SHA384, keys: arkKeys, extensions: ca(1),
  });
  const askKeys = await rsaKeys(rsaBits);
  const ask = await x509.X509CertificateGenerator.create({
    serialNumber: '02', subject: `CN=SEV-${PRODUCT}, ${ORG}`, issuer: ark.subject, notBefore, notAfter: new Date(notBefore.getTime() + 25 * YEAR_MS),
    signingAlgorithm: RSA_PSS_SHA384, publicKey: askKeys.publicKey, signingKey: arkKeys.privateKey, extensions: ca(0),
  });
  const vcekKeys = (await webcrypto.subtle.generateKey(ECDSA_P384, true, ['sign', 'verify'])) as CryptoKeyPair;
  const vcek = await x509.X509CertificateGenerator.create({
    serialNumber: '03', subject: `CN=SEV-VCEK, ${ORG}`, issuer: ask.subject, notBefore, notAfter: new Date(notBefore.getTime() + 7 * YEAR_MS),
    signingAlgorithm: RSA_PSS_SHA384, publicKey: vcekKeys.publicKey, signingKey: askKeys.privateKey,
    extensions: [
      new x509.Extension(OID.structVersion, false, derInt(1)),
      new x509.Extension(OID.productName, false, der(0x16, Buffer.from(`${PRODUCT}-B0`))),
      new x509.Extension(OID.blSpl, false, derInt(tcb.bootloader)),
      new x509.Extension(OID.teeSpl, false, derInt(tcb.tee)),
      new x509.Extension(OID.snpSpl, false, derInt(tcb.snp)),
      new x509.Extension(OID.ucodeSpl, false, derInt(tcb.microcode)),
      new x509.Extension(OID.hwId, false, der(0x04, chipId)),
    ],
  });
  return { ark, ask, vcek, keys: { ark: await pkcs8(arkKeys.privateKey), ask: await pkcs8(askKeys.privateKey), vcek: await pkcs8(vcekKeys.privateKey) } };
}

export class ChainError extends Error {
  readonly code = 'ERR_SNP_CHAIN';
}

/**
 * ARK self-signed, ASK signed by the ARK, VCEK signed by the ASK, all valid at `at`, and the ARK one of
 * `trustedArks` (DER) when given. Returns the VCEK's public key for checking reports.
 */
export async function verifyChain(c: CertChain, trustedArks?: Buffer[], at = new Date()): Promise<KeyObject> {
  if (trustedArks && !trustedArks.some((t) => Buffer.from(c.ark.rawData).equals(t))) throw new ChainError('the ARK is not a trusted root');
  const check = async (what: string, cert: x509.X509Certificate, issuer: x509.X509Certificate): Promise<void> => {
    if (cert.issuer !== issuer.subject) throw new ChainError(`${what}: issuer "${cert.issuer}" is not "${issuer.subject}"`);
    if (!(await cert.verify({ publicKey: issuer.publicKey, signatureOnly: true }))) throw new ChainError(`${what}: signature does not verify`);
    if (at < cert.notBefore || at > cert.notAfter) throw new ChainError(`${what}: not valid at ${at.toISOString()}`);
  };
  await check('ARK', c.ark, c.ark);
  await check('ASK', c.ask, c.ark);
  await check('VCEK', c.vcek, c.ask);
  const key = createPublicKey({ key: Buffer.from(c.vcek.publicKey.rawData), format: 'der', type: 'spki' });
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'secp384r1') throw new ChainError('the VCEK is not an ECDSA P-384 key');
  return key;
}

export function parseCert(der: Buffer | string): x509.X509Certificate {
  return new x509.X509Certificate(der);
}
