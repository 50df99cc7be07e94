// Whether a process still lives, and ending one politely then firmly.
import fs from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { settleWithin } from './timeout.js';

/** Gone, or a zombie (dead, not yet reaped by whoever inherited it). */
export function hasExited(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2) === 'Z';
  } catch {
    return true;
  }
}

export interface TerminateOptions {
  /** How long SIGTERM has before SIGKILL. */
  graceMs: number;
  /** Signal the child's process group (it was spawned detached) instead of the child alone. */
  group?: boolean;
}

function signal(child: ChildProcess, sig: NodeJS.Signals, group: boolean): void {
  try {
    if (group && child.pid) process.kill(-child.pid, sig);
    else child.kill(sig);
  } catch {
    // Already gone.
  }
}

/**
 * SIGTERM, then SIGKILL once `graceMs` passed; resolves when `exited` settles. `exited` must be
 * the caller's promise of the child's exit (made when it was spawned, so no exit is missed).
 */
export async function terminate(child: ChildProcess, exited: Promise<unknown>, o: TerminateOptions): Promise<'exited' | 'killed'> {
  if (child.exitCode !== null || child.signalCode !== null) return 'exited';
  signal(child, 'SIGTERM', o.group ?? false);
  if (await settleWithin(exited, o.graceMs)) return 'exited';
  signal(child, 'SIGKILL', o.group ?? false);
  await exited;
  return 'killed';
}

/**
 * Sends `sig` to `pid` and, when it leads a process group of its own (a VMM spawned detached,
 * such as katats-chv with its QEMU), to the whole group: what it started must not outlive it.
 */
export function signalWithGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const pgrp = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
    if (pgrp === pid) process.kill(-pid, sig);
  } catch {
    // not a group leader, or gone
  }
  try {
    process.kill(pid, sig);
  } catch {
    // gone
  }
}
