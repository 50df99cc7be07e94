// Guest-wide requests: GetGuestDetails, OnlineCPUMem, SetGuestDateTime. sysfs is a parameter
// so that a development host's own CPUs and memory are never touched in local mode.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { Init } from '../proto/registry.js';
import { internal, invalid, precondition } from './errors.js';
import { STORAGE_DRIVERS } from './storage.js';
import { DEVICE_DRIVERS } from './devices.js';
import { runTool } from '../sys/exec.js';
import { type Keeper, MAX_SEED_BYTES } from './keeper.js';

export const AGENT_VERSION = '0.1.0';
export const API_VERSION = '0.0.1';

export function guestDetails(req: grpc.GuestDetailsRequest, sysfs: string): Init<grpc.GuestDetailsResponse> {
  const mem = path.join(sysfs, 'devices/system/memory');
  let blockSize = 0;
  if (req.mem_block_size) {
    try {
      const t = fs.readFileSync(path.join(mem, 'block_size_bytes'), 'utf8').trim();
      blockSize = parseInt(t, 16);
      if (!Number.isFinite(blockSize)) throw internal(`invalid memory block size ${JSON.stringify(t)}`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return {
    mem_block_size_bytes: blockSize,
    support_mem_hotplug_probe: req.mem_hotplug_probe ? fs.existsSync(path.join(mem, 'probe')) : false,
    agent_details: {
      version: AGENT_VERSION,
      init_daemon: process.pid === 1,
      device_handlers: [...DEVICE_DRIVERS],
      storage_handlers: [...STORAGE_DRIVERS],
      supports_seccomp: true,
      extra_features: [],
    },
  };
}

function onlineFiles(dir: string, prefix: RegExp): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => prefix.test(n))
    .sort((a, b) => Number(a.replace(/\D/g, '')) - Number(b.replace(/\D/g, '')))
    .map((n) => path.join(dir, n, 'online'))
    .filter((f) => fs.existsSync(f));
}

/** Brings `nb_cpus` offline CPUs (and, unless cpu_only, all offline memory blocks) online. */
export async function onlineCpuMem(req: grpc.OnlineCPUMemRequest, sysfs: string): Promise<{ cpus: number; memory: number }> {
  let memory = 0;
  if (!req.cpu_only) {
    for (const f of onlineFiles(path.join(sysfs, 'devices/system/memory'), /^memory\d+$/)) {
      if (fs.readFileSync(f, 'utf8').trim() === '0') {
        fs.writeFileSync(f, '1');
        memory++;
      }
    }
  }
  let cpus = 0;
  if (req.nb_cpus > 0) {
    // Hot-added CPUs can take a moment to show up in sysfs: retry a few times.
    for (let attempt = 0; attempt < 50 && cpus < req.nb_cpus; attempt++) {
      for (const f of onlineFiles(path.join(sysfs, 'devices/system/cpu'), /^cpu\d+$/)) {
        if (cpus >= req.nb_cpus) break;
        if (fs.readFileSync(f, 'utf8').trim() === '0') {
          fs.writeFileSync(f, '1');
          cpus++;
        }
      }
      if (cpus < req.nb_cpus) await new Promise((r) => setTimeout(r, 20));
    }
    if (cpus < req.nb_cpus) throw precondition(`OnlineCPUMem: onlined ${cpus} of ${req.nb_cpus} requested CPUs: no more offline CPUs`);
  }
  return { cpus, memory };
}

/**
 * settimeofday through the keeper (no process spawned), else through a one-shot runner; `apply`
 * false only checks and reports (local mode).
 */
export function setGuestDateTime(req: grpc.SetGuestDateTimeRequest, runner: string, apply: boolean, keeper?: Keeper): Promise<boolean> {
  if (req.Sec < 0 || req.Usec < 0 || req.Usec >= 1_000_000) throw invalid(`SetGuestDateTime: invalid time ${req.Sec}s ${req.Usec}us`);
  if (!apply) return Promise.resolve(false);
  if (keeper?.alive) {
    return keeper.setTime(Number(req.Sec), Number(req.Usec)).then(
      () => true,
      (e: Error) => {
        throw internal(`SetGuestDateTime: ${e.message}`);
      },
    );
  }
  return runTool(runner, ['settime', String(req.Sec), String(req.Usec)], { timeoutMs: 10_000, timeoutCode: 'KATATS_SETTIME_TIMEOUT' }).then(
    (r) => {
      if (r.code !== 0) throw internal(`SetGuestDateTime: ${r.stderr.trim() || `exit ${r.code ?? r.signal}`}`);
      return true;
    },
    (e: Error) => {
      throw internal(`SetGuestDateTime: ${e.message}`);
    },
  );
}

/**
 * ReseedRandomDev: the host's bytes credited to the kernel's pool and its CRNG reseeded at once
 * (a template's clones would otherwise share its CRNG state until the next scheduled reseed).
 * `apply` false (local mode) only checks.
 */
export async function reseedRandomDev(req: grpc.ReseedRandomDevRequest, apply: boolean, keeper?: Keeper): Promise<boolean> {
  const data = req.data ?? new Uint8Array();
  if (!data.length || data.length > MAX_SEED_BYTES) throw invalid(`ReseedRandomDev: want 1..${MAX_SEED_BYTES} bytes, got ${data.length}`);
  if (!apply) return false;
  if (!keeper?.alive) throw internal('ReseedRandomDev: the keeper is not running');
  try {
    await keeper.seed(data);
  } catch (e) {
    throw internal(`ReseedRandomDev: ${(e as Error).message}`);
  }
  return true;
}
