// Host side of the test fixture agent's line protocol (test/guest/fixtures/agent.js), over the
// unix socket QEMU serves for the agent channel.
import net from 'node:net';

export class FixtureClient {
  private buf = '';
  private waiters: ((line: string) => void)[] = [];
  private lines: string[] = [];

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiters.shift();
        if (w) w(line);
        else this.lines.push(line);
      }
    });
  }

  /** Connects, retrying until the socket accepts or the signal aborts. */
  static async connect(socketPath: string, signal?: AbortSignal): Promise<FixtureClient> {
    for (;;) {
      if (signal?.aborted) throw new Error('aborted');
      try {
        const s = await new Promise<net.Socket>((resolve, reject) => {
          const c = net.connect(socketPath);
          c.once('connect', () => resolve(c));
          c.once('error', reject);
        });
        s.on('error', () => {});
        return new FixtureClient(s);
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  private nextLine(timeoutMs: number): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        reject(new Error(`no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (line: string) => {
        clearTimeout(t);
        resolve(line);
      };
      this.waiters.push(done);
    });
  }

  async request<T = Record<string, unknown>>(cmd: string, timeoutMs = 30_000): Promise<T & { ok: boolean }> {
    this.sock.write(cmd + '\n');
    return JSON.parse(await this.nextLine(timeoutMs)) as T & { ok: boolean };
  }

  close(): void {
    this.sock.destroy();
  }
}

/** A waitReady probe: connect and get a pong. Returns the connected client through `out`. */
export function pingProbe(socketPath: string, out: { client?: FixtureClient }) {
  return async (signal: AbortSignal): Promise<void> => {
    const c = await FixtureClient.connect(socketPath, signal);
    out.client = c;
    // The guest may open its port long after we connected; the ping waits in the socket.
    const r = await c.request<{ pong?: boolean }>('ping', 600_000);
    if (!r.pong) throw new Error(`unexpected ping reply ${JSON.stringify(r)}`);
  };
}
