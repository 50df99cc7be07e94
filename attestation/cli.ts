// katats snp serve|report and katats attest verify.
//   katats snp serve [--state-dir DIR] [--run-dir DIR] [--socket SOCK] [--log FILE]
//       the node's emulated SNP firmware (chip identity under --state-dir, per-VM sockets under --run-dir)
//   katats snp report --port SOCK [--data HEX] [--out FILE] [--chain-out DIR]
//       a report from a VM's port, as the guest asks for one (64 bytes of REPORT_DATA, zero-padded)
//   katats attest verify REPORT [--chain DIR] [--trusted-ark FILE]
//       decode a report, check it against the chain (ark.pem, ask.pem, vcek.pem), print its fields
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { parseCert } from './chain.js';
import { SnpDaemon } from './daemon.js';
import { EmulatedSnpDevice } from './device.js';
import { readChainDir, SnpFirmware } from './firmware.js';
import { decodeReport, formatReport, REPORT_DATA_SIZE } from './report.js';
import { verifyReport } from './verify.js';

export const SNP_STATE_DIR = '/var/lib/katats/snp';
export const SNP_RUN_DIR = '/run/katats/snp';

export interface CliIo {
  out: (s: string) => void;
  err: (s: string) => void;
}
const stdio: CliIo = { out: (s) => console.log(s), err: (s) => console.error(s) };

function flag(args: string[], name: string, def = ''): string {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
}

export async function snpCommand(args: string[], usage: string, io: CliIo = stdio): Promise<number> {
  const [sub] = args;
  if (sub === 'serve') {
    const runDir = flag(args, '--run-dir', SNP_RUN_DIR);
    const logFile = flag(args, '--log');
    const log = pino({ level: flag(args, '--log-level', 'info'), base: { role: 'snp', pid: process.pid } }, logFile ? pino.destination({ dest: logFile, mkdir: true, sync: true }) : pino.destination(2));
    const fw = await SnpFirmware.open(flag(args, '--state-dir', SNP_STATE_DIR));
    const d = new SnpDaemon(fw, path.join(runDir, 'vms'), log);
    const sock = flag(args, '--socket', path.join(runDir, 'snp.sock'));
    await d.listen(sock);
    log.info({ socket: sock, chip_id: fw.chipId.toString('hex') }, 'emulated SNP firmware serving');
    await new Promise<void>((resolve) => {
      const stop = (): void => {
        d.close().then(resolve, (e: unknown) => {
          log.error({ err: String(e) }, 'close failed');
          resolve();
        });
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    return 0;
  }
  if (sub === 'report') {
    const port = flag(args, '--port');
    if (!port) {
      io.err(usage);
      return 2;
    }
    const hex = flag(args, '--data');
    if (!/^([0-9a-fA-F]{2}){0,64}$/.test(hex)) {
      io.err('--data is at most 64 bytes of hex');
      return 2;
    }
    const data = Buffer.alloc(REPORT_DATA_SIZE);
    Buffer.from(hex, 'hex').copy(data);
    const r = await new EmulatedSnpDevice(port).getReport(data);
    const out = flag(args, '--out');
    if (out) fs.writeFileSync(out, r.report);
    else io.out(r.report.toString('hex'));
    const chainOut = flag(args, '--chain-out');
    if (chainOut) {
      fs.mkdirSync(chainOut, { recursive: true });
      for (const k of ['ark', 'ask', 'vcek'] as const) if (r.certs[k]) fs.writeFileSync(path.join(chainOut, `${k}.pem`), parseCert(r.certs[k]).toString('pem'));
    }
    return 0;
  }
  io.err(usage);
  return 2;
}

export async function attestCommand(args: string[], usage: string, io: CliIo = stdio): Promise<number> {
  const [sub, file] = args;
  if (sub !== 'verify' || !file || file.startsWith('--')) {
    io.err(usage);
    return 2;
  }
  const bytes = fs.readFileSync(file);
  const chainDir = flag(args, '--chain');
  if (!chainDir) {
    io.out(formatReport(decodeReport(bytes)));
    io.out('Signature:          NOT CHECKED (no --chain DIR)');
    return 0;
  }
  const arkFile = flag(args, '--trusted-ark');
  const trustedArks = arkFile ? [Buffer.from(parseCert(fs.readFileSync(arkFile, 'utf8')).rawData)] : undefined;
  try {
    const r = await verifyReport(bytes, readChainDir(chainDir), trustedArks ? { trustedArks } : {});
    io.out(formatReport(r));
    io.out(`Signature:          VERIFIED (VCEK of chip ${r.chipId.toString('hex').slice(0, 16)}..., chain ARK -> ASK -> VCEK${trustedArks ? ', ARK trusted' : ', ARK not pinned (--trusted-ark)'})`);
    return 0;
  } catch (e) {
    io.err(`katats attest verify: ${(e as Error).message}`);
    return 1;
  }
}
