import { spawn, type ChildProcess } from 'node:child_process';

/** Spawns a helper process and resolves once it prints `ready`; stop() ends it. */
export function startReady(cmd: string, args: string[], timeoutMs = 20_000): Promise<{ child: ChildProcess; stop: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: not ready after ${timeoutMs} ms`));
    }, timeoutMs);
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('ready\n')) {
        clearTimeout(timer);
        resolve({
          child,
          stop: () =>
            new Promise<void>((res) => {
              if (child.exitCode !== null || child.signalCode !== null) return res();
              child.once('exit', () => res());
              child.kill('SIGTERM');
              setTimeout(() => child.kill('SIGKILL'), 3000).unref();
            }),
        });
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited before ready (${code ?? sig})`));
    });
  });
}
