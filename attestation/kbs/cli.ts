// katats kbs serve|admin-token
//   katats kbs serve --trusted-ark FILE --admin-key FILE --resources DIR [--listen HOST:PORT]
//                    [--policy FILE] [--session-timeout SECONDS] [--log FILE]
//       the KBS (PEM: the ARK(s) it trusts, the admin's Ed25519 public key)
//   katats kbs admin-token --key FILE [--ttl SECONDS]
//       a short-lived admin token (EdDSA JWT) from the admin's Ed25519 private key (PEM)
import { createPrivateKey, createPublicKey } from 'node:crypto';
import fs from 'node:fs';
import { SignJWT } from 'jose';
import pino from 'pino';
import { parseCert } from '../chain.js';
import { buildKbs } from './server.js';

function flag(args: string[], name: string, def = ''): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

function pemBlocks(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
}

export async function adminToken(keyPem: string, ttlSeconds = 300): Promise<string> {
  return new SignJWT({}).setProtectedHeader({ alg: 'EdDSA' }).setIssuedAt().setExpirationTime(`${ttlSeconds}s`).sign(createPrivateKey(keyPem));
}

export async function kbsCommand(args: string[], usage: string): Promise<number> {
  const [sub] = args;
  if (sub === 'admin-token') {
    const key = flag(args, '--key');
    if (!key) {
      console.error(usage);
      return 2;
    }
    console.log(await adminToken(fs.readFileSync(key, 'utf8'), Number(flag(args, '--ttl', '300'))));
    return 0;
  }
  if (sub !== 'serve') {
    console.error(usage);
    return 2;
  }
  const arkFile = flag(args, '--trusted-ark');
  const adminKey = flag(args, '--admin-key');
  const resources = flag(args, '--resources');
  if (!arkFile || !adminKey || !resources) {
    console.error('katats kbs serve needs --trusted-ark FILE, --admin-key FILE and --resources DIR');
    return 2;
  }
  const logFile = flag(args, '--log');
  const logger = pino({ level: flag(args, '--log-level', 'info'), base: { role: 'kbs', pid: process.pid } }, logFile ? pino.destination({ dest: logFile, mkdir: true, sync: true }) : pino.destination(2));
  const policyFile = flag(args, '--policy');
  const kbs = await buildKbs({
    trustedArks: pemBlocks(fs.readFileSync(arkFile, 'utf8')).map((p) => Buffer.from(parseCert(p).rawData)),
    adminPublicKey: createPublicKey(fs.readFileSync(adminKey, 'utf8')),
    resourcesDir: resources,
    logger,
    sessionTimeoutMs: Number(flag(args, '--session-timeout', '300')) * 1000,
    ...(policyFile ? { policy: fs.readFileSync(policyFile, 'utf8') } : {}),
  });
  const [host, port] = flag(args, '--listen', '127.0.0.1:8080').split(/:(?=\d+$)/);
  const addr = await kbs.app.listen({ host: host!, port: Number(port) });
  logger.info({ address: addr }, 'KBS serving');
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      kbs.app.close().then(resolve, (e: unknown) => {
        logger.error({ err: String(e) }, 'close failed');
        resolve();
      });
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return 0;
}
