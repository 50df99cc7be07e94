// `katats doctor`, like `kata-runtime check`: can this host run katats sandboxes, and if not,
// what is missing and how to get it.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { KatatsConfig } from '../config.js';
import { resolveGuestFiles } from '../vm.js';
import { probeKvm } from '../../vmm/accel.js';
import { chooseClhVmm, probeRealClh } from '../../vmm/clh/vmm-binary.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

function canConnect(sock: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => (c.destroy(), resolve(true)));
    c.once('error', () => resolve(false));
  });
}

export async function doctor(cfg: KatatsConfig, opts: { containerdSocket: string }): Promise<Check[]> {
  const checks: Check[] = [];
  const q = cfg.hypervisor.qemu;
  const qemu = spawnSync(q.path, ['--version'], { encoding: 'utf8' });
  checks.push(
    qemu.status === 0
      ? { name: 'qemu', ok: true, detail: `${q.path}: ${qemu.stdout.split('\n')[0]}` }
      : { name: 'qemu', ok: false, detail: `${q.path} does not run`, fix: 'apt-get install qemu-system-x86' },
  );
  let kernel: string | undefined;
  try {
    const files = resolveGuestFiles(q);
    kernel = files.kernel;
    checks.push({ name: 'guest image', ok: true, detail: `kernel ${files.kernel}, initrd ${files.initrd}, rootfs ${files.rootfs}${files.measurement ? `, measurement ${files.measurement.slice(0, 16)}…` : ''}` });
  } catch (e) {
    checks.push({ name: 'guest image', ok: false, detail: (e as Error).message, fix: 'npx tsx guest/cli.ts build --agent agent/dist/agent.js, then set hypervisor.qemu.guest_manifest' });
  }
  if (q.accel === 'tcg') {
    checks.push({ name: 'accelerator', ok: true, detail: 'TCG (forced by hypervisor.qemu.accel = "tcg")' });
  } else if (qemu.status === 0) {
    const probe = await probeKvm({ cacheDir: path.join(cfg.runtime.state_dir, 'vmm'), qemuBinary: q.path, kernel });
    const ok = probe.usable || q.accel === 'auto';
    // accel = "kvm" with a failing probe runs nothing: the shim refuses to fall back.
    const which = probe.usable ? 'KVM' : ok ? 'TCG' : 'none (accel = "kvm" needs KVM)';
    checks.push({
      name: 'accelerator',
      ok,
      detail: `${which}: KVM probe ${probe.usable ? `passed (${probe.reason})` : `failed (${probe.reason})`}${probe.cached ? ' [cached]' : ''}`,
      ...(ok ? {} : { fix: 'set hypervisor.qemu.accel = "tcg" or "auto"' }),
    });
  }
  // cloud-hypervisor: the real binary where it is installed and a hypervisor device works, else
  // katats-chv (its API on QEMU) backs hypervisor = "clh".
  const c = cfg.hypervisor.clh;
  const real = await probeRealClh(c.path);
  checks.push({ name: 'cloud-hypervisor', ok: true, detail: real.usable ? `${c.path}: ${real.version ?? '?'}, usable` : `not usable: ${real.why ?? 'unknown'}` });
  try {
    const vmm = await chooseClhVmm(c.vmm, c.path);
    const under = vmm.flavour === 'katats-chv' ? `katats-chv (cloud-hypervisor's API, QEMU ${q.path} under it${qemu.status === 0 ? '' : ', which does not run'})` : `cloud-hypervisor ${c.path}`;
    checks.push({ name: 'hypervisor = "clh"', ok: vmm.flavour === 'cloud-hypervisor' ? real.usable : qemu.status === 0, detail: `runs on ${under}: ${vmm.why}` });
  } catch (e) {
    checks.push({ name: 'hypervisor = "clh"', ok: cfg.runtime.hypervisor !== 'clh', detail: (e as Error).message, fix: 'set hypervisor.clh.vmm = "auto" or "katats-chv"' });
  }
  checks.push({ name: 'selected hypervisor', ok: true, detail: `runtime.hypervisor = ${cfg.runtime.hypervisor || 'qemu'} (from ${cfg.source})` });
  // The guest brings its own crun; on the host it only serves the agent's local-mode tests, so
  // its absence is reported but does not fail the host.
  const crun = spawnSync('crun', ['--version'], { encoding: 'utf8' });
  checks.push({ name: 'crun (host, for local agent tests only)', ok: true, detail: crun.status === 0 ? crun.stdout.split('\n')[0]! : 'not found (apt-get install crun to run the agent tests)' });
  const reach = await canConnect(opts.containerdSocket);
  checks.push(
    reach
      ? { name: 'containerd', ok: true, detail: `answering on ${opts.containerdSocket}` }
      : { name: 'containerd', ok: false, detail: `nothing listening on ${opts.containerdSocket}`, fix: 'apt-get install containerd; systemctl start containerd (or pass --address)' },
  );
  const shimOnPath = (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, 'containerd-shim-katats-v2')));
  checks.push({ name: 'shim on PATH', ok: shimOnPath, detail: shimOnPath ? 'containerd-shim-katats-v2 found' : 'containerd-shim-katats-v2 not on PATH', fix: 'katats install' });
  return checks;
}
