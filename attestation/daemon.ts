// `katats snp serve`: the node's emulated SNP firmware as a daemon. The shim talks to it on a control
// socket (one JSON object a line): `launch` records a VM's MEASUREMENT and HOST_DATA and answers
// with a socket made for that VM alone; `release` forgets the VM and removes its socket. The shim
// wires the VM's socket to a dedicated virtio-serial port, so whatever arrives on it comes from that
// VM: a guest names no VM in its request and can only ever get a report of its own values.
// On the VM's socket each request is a framed MSG_REPORT_REQ; the answer is a framed MSG_REPORT_RSP
// and a framed certificate table (SNP_GET_EXT_REPORT's shape).
// Each launch is also written down (<vm>.launch.json beside its socket) until its release: a
// restarted daemon serves the VMs it had again, on the same socket paths, where their QEMUs
// reconnect (the chardev's reconnect option), so a daemon upgrade does not strand running pods.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { checkId } from '../sys/ids.js';
import { FirmwareError, type SnpFirmware } from './firmware.js';
import { decodeReportReq, encodeCertTable, encodeReportRsp, frame, FrameReader, MSG_REPORT_REQ_SIZE, STATUS_INVALID_PARAM, STATUS_SUCCESS } from './guest-msg.js';
import { decodePolicy, encodePolicy, HOST_DATA_SIZE, MEASUREMENT_SIZE } from './report.js';

const RECORD_SUFFIX = '.launch.json';
/** A record is three hex strings; anything larger was not written by a daemon. */
const MAX_RECORD_BYTES = 4096;

interface LaunchFileRecord {
  measurement: string;
  host_data: string;
  policy?: string;
}

/** A control line longer than this is refused and its connection closed. */
const MAX_CONTROL_LINE = 16 * 1024;

export interface ControlRequest {
  op: 'launch' | 'release';
  vm: string;
  /** hex, 48 bytes */
  measurement?: string;
  /** hex, 32 bytes */
  host_data?: string;
  /** the guest policy as the 64-bit value, decimal or 0x-hex */
  policy?: string;
}

export interface ControlResponse {
  ok: boolean;
  socket?: string;
  error?: string;
}

export class SnpDaemon {
  private control?: { server: net.Server; path: string };
  private readonly vmServers = new Map<string, { server: net.Server; path: string; conns: Set<net.Socket> }>();
  private readonly controlConns = new Set<net.Socket>();

  constructor(
    private readonly fw: SnpFirmware,
    /** Where the per-VM sockets are made (0700). */
    private readonly runDir: string,
    private readonly log: Logger,
  ) {}

  async listen(controlSocket: string): Promise<void> {
    fs.mkdirSync(this.runDir, { recursive: true, mode: 0o700 });
    fs.chmodSync(this.runDir, 0o700);
    await this.restoreLaunches();
    fs.rmSync(controlSocket, { force: true });
    const server = net.createServer((c) => this.serveControl(c));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(controlSocket, () => resolve());
    });
    fs.chmodSync(controlSocket, 0o600);
    this.control = { server, path: controlSocket };
  }

  private serveControl(c: net.Socket): void {
    this.controlConns.add(c);
    c.on('close', () => this.controlConns.delete(c));
    c.on('error', (e) => this.log.debug({ err: e.message }, 'control connection error'));
    let buf = '';
    let chain = Promise.resolve();
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      buf += d;
      if (buf.length > MAX_CONTROL_LINE && !buf.includes('\n')) {
        c.end(`${JSON.stringify({ ok: false, error: `control line longer than ${MAX_CONTROL_LINE} bytes` })}\n`);
        buf = '';
        return;
      }
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        chain = chain
          .then(async () => this.control_(line))
          .then((r) => {
            if (!c.destroyed) c.write(`${JSON.stringify(r)}\n`);
          })
          .catch((e: unknown) => this.log.error({ err: String(e) }, 'control request failed'));
      }
    });
  }

  private async control_(line: string): Promise<ControlResponse> {
    let req: ControlRequest;
    try {
      req = JSON.parse(line) as ControlRequest;
      if (typeof req !== 'object' || req === null || typeof req.vm !== 'string') throw new Error('not a request object with a vm');
      checkId(req.vm, 'VM id');
    } catch (e) {
      return { ok: false, error: `bad control request: ${(e as Error).message}` };
    }
    try {
      if (req.op === 'release') {
        await this.release(req.vm);
        return { ok: true };
      }
      if (req.op !== 'launch') return { ok: false, error: `unknown op ${JSON.stringify(req.op)}` };
      const hex = (name: string, v: unknown, n: number): Buffer => {
        if (typeof v !== 'string' || !/^[0-9a-fA-F]*$/.test(v) || v.length !== 2 * n) throw new FirmwareError('ERR_SNP_BAD_INPUT', `${name} must be ${n} bytes of hex`);
        return Buffer.from(v, 'hex');
      };
      const measurement = hex('measurement', req.measurement, MEASUREMENT_SIZE);
      const hostData = hex('host_data', req.host_data, HOST_DATA_SIZE);
      const policy = req.policy === undefined ? undefined : decodePolicy(BigInt(req.policy));
      return { ok: true, socket: await this.launch(req.vm, measurement, hostData, policy) };
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
  }

  /** Records the VM and opens its own socket; returns the socket's path. */
  async launch(vm: string, measurement: Buffer, hostData: Buffer, policy?: ReturnType<typeof decodePolicy>): Promise<string> {
    checkId(vm, 'VM id');
    await this.release(vm);
    const p = path.join(this.runDir, `${vm}.sock`);
    // sockaddr_un holds 107 bytes of path: a longer one would fail inside listen() with a vaguer error.
    if (Buffer.byteLength(p) > 107) throw new FirmwareError('ERR_SNP_BAD_INPUT', `VM socket path ${p} is longer than a unix socket path may be (107 bytes)`);
    this.fw.launch(vm, { measurement, hostData, ...(policy ? { policy } : {}) });
    fs.rmSync(p, { force: true });
    const conns = new Set<net.Socket>();
    const server = net.createServer((c) => this.serveVm(vm, c, conns));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(p, () => resolve());
      });
    } catch (e) {
      this.fw.release(vm);
      throw e;
    }
    fs.chmodSync(p, 0o600);
    this.vmServers.set(vm, { server, path: p, conns });
    this.writeRecord(vm, { measurement: measurement.toString('hex'), host_data: hostData.toString('hex'), ...(policy ? { policy: `0x${encodePolicy(policy).toString(16)}` } : {}) });
    this.log.info({ sandbox: vm, measurement: measurement.toString('hex'), host_data: hostData.toString('hex'), policy: policy ? encodePolicy(policy).toString(16) : undefined }, 'VM launched');
    return p;
  }

  async release(vm: string): Promise<void> {
    fs.rmSync(this.recordPath(vm), { force: true });
    if (await this.stopServing(vm)) this.log.info({ sandbox: vm }, 'VM released');
  }

  /** Closes the VM's socket and forgets it in memory; its record (if any) stays. */
  private async stopServing(vm: string): Promise<boolean> {
    const s = this.vmServers.get(vm);
    this.fw.release(vm);
    if (!s) return false;
    this.vmServers.delete(vm);
    for (const c of s.conns) c.destroy();
    await new Promise<void>((resolve) => s.server.close(() => resolve()));
    fs.rmSync(s.path, { force: true });
    return true;
  }

  private recordPath(vm: string): string {
    return path.join(this.runDir, `${vm}${RECORD_SUFFIX}`);
  }

  private writeRecord(vm: string, r: LaunchFileRecord): void {
    const tmp = `${this.recordPath(vm)}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(r), { mode: 0o600 });
    fs.renameSync(tmp, this.recordPath(vm));
  }

  /** Serves again the VMs a previous daemon launched and did not release. */
  private async restoreLaunches(): Promise<void> {
    for (const name of fs.readdirSync(this.runDir)) {
      if (!name.endsWith(RECORD_SUFFIX)) continue;
      const vm = name.slice(0, -RECORD_SUFFIX.length);
      const file = path.join(this.runDir, name);
      try {
        const text = fs.readFileSync(file);
        if (text.length > MAX_RECORD_BYTES) throw new Error(`larger than ${MAX_RECORD_BYTES} bytes`);
        const r = JSON.parse(text.toString('utf8')) as LaunchFileRecord;
        const resp = await this.control_(JSON.stringify({ op: 'launch', vm, measurement: r.measurement, host_data: r.host_data, ...(r.policy ? { policy: r.policy } : {}) }));
        if (!resp.ok) throw new Error(resp.error);
        this.log.info({ sandbox: vm }, 'VM launch restored from its record');
      } catch (e) {
        // Kept for the operator: a VM whose record cannot be read gets no reports until relaunched.
        this.log.error({ sandbox: vm, file, err: (e as Error).message }, 'launch record not restored');
      }
    }
  }

  private serveVm(vm: string, c: net.Socket, conns: Set<net.Socket>): void {
    conns.add(c);
    c.on('close', () => conns.delete(c));
    c.on('error', (e) => this.log.debug({ sandbox: vm, err: e.message }, 'guest connection error'));
    // A request is exactly one MSG_REPORT_REQ; anything larger is not one and ends the connection.
    const reader = new FrameReader(MSG_REPORT_REQ_SIZE);
    c.on('data', (d: Buffer) => {
      let msgs: Buffer[];
      try {
        msgs = reader.push(d);
      } catch (e) {
        this.log.warn({ sandbox: vm, err: (e as Error).message }, 'guest sent an oversized frame; closing');
        c.destroy();
        return;
      }
      for (const m of msgs) {
        let rsp: Buffer[];
        try {
          const { reportData, vmpl } = decodeReportReq(m);
          const report = this.fw.report(vm, reportData, vmpl);
          const chain = this.fw.chain;
          const certs = { ark: Buffer.from(chain.ark.rawData), ask: Buffer.from(chain.ask.rawData), vcek: Buffer.from(chain.vcek.rawData) };
          rsp = [encodeReportRsp(STATUS_SUCCESS, report), encodeCertTable(certs)];
        } catch (e) {
          this.log.warn({ sandbox: vm, err: (e as Error).message }, 'report request refused');
          rsp = [encodeReportRsp(STATUS_INVALID_PARAM), Buffer.alloc(0)];
        }
        c.write(Buffer.concat(rsp.map(frame)));
      }
    });
  }

  /** Stops serving; the VMs' records stay, so the next daemon on this run dir serves them again. */
  async close(): Promise<void> {
    for (const vm of [...this.vmServers.keys()]) await this.stopServing(vm);
    for (const c of this.controlConns) c.destroy();
    const s = this.control;
    this.control = undefined;
    if (s) {
      await new Promise<void>((resolve) => s.server.close(() => resolve()));
      fs.rmSync(s.path, { force: true });
    }
  }
}
