// Warming a template before it is saved: one throwaway sandbox and container lifecycle, so that
// every clone starts with the agent's pod path compiled by V8 and crun, the runner and their
// libraries in the guest's page cache (all of which a clone shares with the template). The
// container's rootfs is the host's static busybox when there is one; without it only the sandbox
// half runs. Everything is torn down again (the 9p share must be unmounted: QEMU cannot migrate a
// mounted 9p device).
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Client } from '../proto/ttrpc/index.js';
import type { grpc } from '../proto/gen/types.js';
import { serviceClient } from '../proto/rpc.js';
import { withTimeout } from '../sys/timeout.js';
import { KATA_GUEST_DIRS } from './guest.js';
import { sharedStorage } from './rootfs-share.js';

export const TEMPLATE_WARM_TIMEOUT = 'KATATS_TEMPLATE_WARM_TIMEOUT';
const WARM_TIMEOUT_MS = 120_000;
const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];
const WARM_SANDBOX = 'katats-template-warm';
const WARM_CONTAINER = 'warm';

/** Whether `file` is an ELF executable without a program interpreter (PT_INTERP): runnable in any rootfs. */
export function isStaticElf(file: string): boolean {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch {
    return false;
  }
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) return false; // ELF64 little-endian
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  if (phoff + phentsize * phnum > b.length) return false;
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

function warmRootfs(sharedHostDir: string): string | undefined {
  const busybox = BUSYBOX_CANDIDATES.find(isStaticElf);
  if (!busybox) return undefined;
  const root = path.join(sharedHostDir, WARM_CONTAINER, 'rootfs');
  for (const d of ['bin', 'proc', 'dev', 'sys', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.copyFileSync(busybox, path.join(root, 'bin', 'busybox'));
  fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(root, 'bin', 'sh'));
  return `${KATA_GUEST_DIRS.shared}/${WARM_CONTAINER}/rootfs`;
}

const DEFAULT_CAPS = ['CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE'];

/**
 * The warm container's spec has every part a spec from containerd (ctr's defaults, CRI's
 * resources and seccomp) has: the agent's codecs for a message are generated, and its code
 * compiled, the first time a message carries that part, and a part first seen in a clone costs
 * every clone that (code V8 compiles there, and QEMU translates, per clone). Its values are
 * harmless: `echo warm` under limits it never reaches.
 */
export function warmSpec(rootfs: string): grpc.Spec {
  return {
    Version: '1.0.2',
    Process: {
      Terminal: false,
      User: { UID: 0, GID: 0, AdditionalGids: [10], Username: '' },
      Args: ['sh', '-c', 'echo warm'],
      Env: ['PATH=/bin', 'HOSTNAME=warm'],
      Cwd: '/',
      Capabilities: { Bounding: DEFAULT_CAPS, Effective: DEFAULT_CAPS, Inheritable: [], Permitted: DEFAULT_CAPS, Ambient: [] },
      Rlimits: [{ Type: 'RLIMIT_NOFILE', Hard: 1024, Soft: 1024 }],
      NoNewPrivileges: true,
      ApparmorProfile: '',
      OOMScoreAdj: 100,
      SelinuxLabel: '',
    },
    Root: { Path: rootfs, Readonly: true },
    Hostname: 'warm',
    Mounts: [
      { destination: '/proc', source: 'proc', type: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', source: 'devpts', type: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', source: 'shm', type: 'tmpfs', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', source: 'mqueue', type: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', source: 'sysfs', type: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', source: 'cgroup', type: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      { destination: '/tmp', source: 'tmpfs', type: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
    ],
    Annotations: {},
    Linux: {
      UIDMappings: [],
      GIDMappings: [],
      // An IPC sysctl: the warm container has no network namespace of its own for a net.* one.
      Sysctl: { 'kernel.msgmax': '8192' },
      Resources: {
        Devices: [
          { Allow: false, Type: '', Major: -1, Minor: -1, Access: 'rwm' },
          { Allow: true, Type: 'c', Major: 1, Minor: 3, Access: 'rwm' },
          { Allow: true, Type: 'c', Major: 5, Minor: 0, Access: 'rwm' },
        ],
        Memory: { Limit: 256 << 20, Reservation: 0, Swap: 0, Kernel: 0, KernelTCP: 0, Swappiness: 0, DisableOOMKiller: false },
        CPU: { Shares: 2, Quota: 50_000, Period: 100_000, RealtimeRuntime: 0, RealtimePeriod: 0, Cpus: '', Mems: '' },
        Pids: { Limit: 64 },
        HugepageLimits: [],
      },
      CgroupsPath: '',
      Namespaces: [
        { Type: 'ipc', Path: '' },
        { Type: 'uts', Path: '' },
        { Type: 'mount', Path: '' },
        { Type: 'pid', Path: '' },
      ],
      Devices: [],
      Seccomp: {
        DefaultAction: 'SCMP_ACT_ALLOW',
        Architectures: ['SCMP_ARCH_X86_64'],
        Flags: [],
        Syscalls: [{ Names: ['keyctl'], Action: 'SCMP_ACT_ERRNO', errnoret: 1, Args: [{ Index: 0, Value: 0, ValueTwo: 0, Op: 'SCMP_CMP_GE' }] }],
      },
      RootfsPropagation: '',
      MaskedPaths: ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/sys/firmware'],
      ReadonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
      MountLabel: '',
    },
  };
}

/** Runs the throwaway lifecycle; returns what it covered. Any failure fails the template build. */
export async function warmTemplate(client: Client, sharedHostDir: string | undefined, log: Logger): Promise<{ container: boolean }> {
  const agent = serviceClient(client, 'grpc.AgentService');
  const work = async (): Promise<{ container: boolean }> => {
    await agent.CreateSandbox({
      hostname: 'warm',
      sandbox_id: WARM_SANDBOX,
      storages: [
        ...(sharedHostDir ? sharedStorage({ sharedFs: 'virtio-9p', guestDirs: KATA_GUEST_DIRS }) : []),
        { driver: 'ephemeral', source: 'shm', fstype: 'tmpfs', options: ['noexec', 'nosuid', 'nodev', 'mode=1777', 'size=1048576'], mount_point: KATA_GUEST_DIRS.sandboxShm },
      ],
    });
    // Without a shared directory (verified layers only) there is no way in for a rootfs: sandbox only.
    const rootfs = sharedHostDir ? warmRootfs(sharedHostDir) : undefined;
    if (rootfs) {
      const ids = { container_id: WARM_CONTAINER, exec_id: WARM_CONTAINER };
      await agent.CreateContainer({
        ...ids,
        storages: [],
        devices: [],
        sandbox_pidns: false,
        OCI: warmSpec(rootfs),
      });
      // A pod's shim waits for OOM events and pumps both streams to their end: so does the warm-up.
      const oomWait = new AbortController();
      const oom = agent.GetOOMEvent({}, { signal: oomWait.signal }).catch(() => undefined);
      await agent.StartContainer({ container_id: WARM_CONTAINER });
      const drain = async (method: 'ReadStdout' | 'ReadStderr'): Promise<string> => {
        let text = '';
        for (;;) {
          // The end of a stream is an empty read or, as Kata's agent says it, an error ("read meet eof").
          const data = await agent[method]({ ...ids, len: 1024 }).then(
            (r) => r.data,
            () => new Uint8Array(),
          );
          if (!data.length) return text;
          text += Buffer.from(data).toString();
        }
      };
      const [out, err] = await Promise.all([drain('ReadStdout'), drain('ReadStderr')]);
      const { status } = await agent.WaitProcess(ids);
      oomWait.abort();
      await oom;
      if (out !== 'warm\n' || err !== '' || status !== 0) throw new Error(`warm container printed ${JSON.stringify(out)} (stderr ${JSON.stringify(err)}), exit ${status}`);
      // The agent's own bound on the removal; the whole warm-up has WARM_TIMEOUT_MS (a loaded host has seen > 10 s).
      await agent.RemoveContainer({ container_id: WARM_CONTAINER, timeout: 60 });
    } else {
      log.warn({ looked: BUSYBOX_CANDIDATES }, 'factory: no static busybox on this host: the template is warmed without a container');
    }
    await agent.DestroySandbox({});
    return { container: !!rootfs };
  };
  return withTimeout(work(), WARM_TIMEOUT_MS, { code: TEMPLATE_WARM_TIMEOUT, what: 'warming the template (a throwaway sandbox and container)' });
}
