// Helpers around the Go ttrpc reference peer (test/interop/go/src/katats.dev/ttrpcpeer),
// built in GOPATH mode from Debian's containerd/ttrpc 1.1.1 sources.
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { run, type RunResult } from "../../harness/exec.js";

const INTEROP_DIR = dirname(fileURLToPath(import.meta.url));
const GOPATH_ROOT = join(INTEROP_DIR, "go");
const REPO_ROOT = join(INTEROP_DIR, "..", "..");
const MAIN_GO = join(GOPATH_ROOT, "src", "katats.dev", "ttrpcpeer", "main.go");
const SYSTEM_GOPATH = "/usr/share/gocode";

export type GoCallResult =
  | { ok: true; payload: Buffer }
  | { ok: false; code: number; message: string; local?: boolean };

export interface GoCallOptions {
  payload?: Uint8Array;
  timeoutMs?: number;
  metadata?: Record<string, string[]>;
  /** Send `payload` as the whole request message and return the whole response message (no BytesValue wrapping). */
  raw?: boolean;
}

export interface GoBenchResult {
  calls: number;
  seconds: number;
  callsPerSec: number;
}

export interface GoServer {
  close(): Promise<void>;
  pid: number;
}

/** Builds (or reuses) the ttrpcpeer binary; returns its path. */
export async function buildGoPeer(): Promise<string> {
  const hash = createHash("sha256").update(readFileSync(MAIN_GO)).digest("hex");
  const outDir = join(REPO_ROOT, ".cache", "go-peer", hash);
  const bin = join(outDir, "ttrpcpeer");
  if (existsSync(bin)) return bin;
  mkdirSync(outDir, { recursive: true });
  const tmp = join(outDir, `ttrpcpeer.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    GO111MODULE: "off",
    GOPATH: `${GOPATH_ROOT}:${SYSTEM_GOPATH}`,
    GOCACHE: join(REPO_ROOT, ".cache", "go-build"),
    GOFLAGS: "",
  };
  let res: RunResult;
  try {
    res = await run("go", ["build", "-o", tmp, "katats.dev/ttrpcpeer"], { env, cwd: GOPATH_ROOT, timeoutMs: 600_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(e.code === "ENOENT" ? "go toolchain not found in PATH (apt-get install golang-go)" : `cannot run go: ${e.message}`);
  }
  if (res.code !== 0) {
    rmSync(tmp, { force: true });
    throw new Error(`go build of ttrpcpeer failed (exit ${res.code ?? res.signal}):\n${res.stderr}`);
  }
  renameSync(tmp, bin); // atomic; a concurrent builder's identical binary may be replaced, which is harmless
  return bin;
}

/** Starts `ttrpcpeer serve SOCKET`, resolving once it prints `ready`. */
export function startGoServer(bin: string, socket: string): Promise<GoServer> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(bin, ["serve", socket], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let ready = false;
    let exited = false;
    const exitedP = new Promise<void>((res) => child.once("exit", () => ((exited = true), res())));
    const fail = (why: string): void => {
      clearTimeout(timer);
      if (!exited) child.kill("SIGKILL");
      reject(new Error(`ttrpcpeer serve ${socket}: ${why}\n${stderr}`));
    };
    const timer = setTimeout(() => fail("not ready after 10 s"), 10_000);
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      if (ready) return;
      stdout += d;
      if (stdout.split("\n").some((l) => l.trim() === "ready")) {
        ready = true;
        clearTimeout(timer);
        const pid = child.pid;
        if (pid === undefined) return fail("no pid");
        resolve({
          pid,
          async close(): Promise<void> {
            if (exited) return;
            child.kill("SIGTERM");
            const killer = setTimeout(() => child.kill("SIGKILL"), 3_000);
            await exitedP;
            clearTimeout(killer);
          },
        });
      }
    });
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      stderr = (stderr + d).slice(-65_536);
    });
    child.once("error", (err) => fail(err.message));
    child.once("close", (code, signal) => {
      if (!ready) fail(`exited before ready (${code ?? signal})`);
    });
  });
}

async function runPeer(bin: string, args: string[], input?: string): Promise<unknown> {
  const res = await run(bin, args, input === undefined ? {} : { input });
  if (res.code !== 0) {
    throw new Error(`ttrpcpeer ${args.join(" ")} failed (exit ${res.code ?? res.signal}):\n${res.stderr}`);
  }
  const line = res.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as unknown;
  } catch {
    throw new Error(`ttrpcpeer ${args[0] ?? ""}: bad output ${JSON.stringify(res.stdout)}\n${res.stderr}`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null;
}

/** One unary call through the Go ttrpc client. */
export async function goCall(bin: string, socket: string, service: string, method: string, opts: GoCallOptions = {}): Promise<GoCallResult> {
  const input = JSON.stringify({
    payloadHex: Buffer.from(opts.payload ?? new Uint8Array()).toString("hex"),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    ...(opts.metadata !== undefined ? { metadata: opts.metadata } : {}),
    raw: opts.raw ?? false,
  });
  const out = await runPeer(bin, ["call", socket, service, method], input);
  if (isRecord(out) && out.ok === true) {
    return { ok: true, payload: Buffer.from(typeof out.payloadHex === "string" ? out.payloadHex : "", "hex") };
  }
  if (isRecord(out) && out.ok === false && typeof out.code === "number") {
    return { ok: false, code: out.code, message: typeof out.message === "string" ? out.message : "", local: out.local === true };
  }
  throw new Error(`ttrpcpeer call: unexpected output ${JSON.stringify(out)}`);
}

/** Echo throughput from `concurrency` goroutines over one Go ttrpc connection. */
export async function goBench(bin: string, socket: string, size: number, concurrency: number, seconds: number): Promise<GoBenchResult> {
  const out = await runPeer(bin, ["bench", socket, String(size), String(concurrency), String(seconds)]);
  if (isRecord(out) && typeof out.calls === "number" && typeof out.seconds === "number" && typeof out.callsPerSec === "number") {
    return { calls: out.calls, seconds: out.seconds, callsPerSec: out.callsPerSec };
  }
  throw new Error(`ttrpcpeer bench: unexpected output ${JSON.stringify(out)}`);
}
