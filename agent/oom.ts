// OOM notifications for one container's memory cgroup.
//  v1: memory.oom_control registered with an eventfd through cgroup.event_control; the
//      eventfd lives in `katats-runner oom-v1`, which prints one "oom" line per event.
//  v2: memory.events, watched with inotify (fs.watch) and polled as a fallback; an increase of
//      its oom_kill counter is an OOM kill (the counter containerd's own v2 watcher uses).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Logger } from './log.js';
import { readKeyed } from './cgroups.js';

export interface OomWatcher {
  /** Resolves once the watch is in place. */
  ready: Promise<void>;
  stop(): void;
}

export function watchOomV1(runner: string, memcgDir: string, onOom: () => void, log: Logger): OomWatcher {
  const child: ChildProcess = spawn(runner, ['oom-v1', memcgDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stopped = false;
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    // readline emits its input's errors again on itself: unheard, one ends the agent.
    lines.on('error', (e) => log.debug({ err: e }, 'cgroup v1 OOM watcher pipe error'));
    lines.on('line', (l) => {
      if (l === 'armed') resolve();
      else if (l === 'oom') onOom();
    });
    child.on('exit', (code) => {
      if (!stopped && code !== 0) log.warn({ code, stderr: err.trim() }, 'cgroup v1 OOM watcher ended');
      reject(new Error(`oom-v1 watcher for ${memcgDir} ended: ${err.trim() || `status ${code}`}`));
    });
    child.on('error', reject);
  });
  ready.catch(() => undefined);
  return {
    ready,
    stop() {
      stopped = true;
      child.kill('SIGKILL');
    },
  };
}

export function watchOomV2(memcgDir: string, onOom: () => void, log: Logger, pollMs = 1000): OomWatcher {
  const file = path.join(memcgDir, 'memory.events');
  let last = readKeyed(file).get('oom_kill') ?? 0;
  const check = () => {
    const now = readKeyed(file).get('oom_kill');
    if (now === undefined) return;
    if (now > last) {
      for (let i = last; i < now; i++) onOom();
      last = now;
    }
  };
  let watcher: fs.FSWatcher | undefined;
  try {
    watcher = fs.watch(file, { persistent: false }, () => check());
    watcher.on('error', () => undefined);
  } catch (e) {
    log.debug({ err: e, file }, 'cannot watch memory.events, polling only');
  }
  const timer = setInterval(check, pollMs);
  timer.unref();
  return {
    ready: Promise.resolve(),
    stop() {
      watcher?.close();
      clearInterval(timer);
    },
  };
}
