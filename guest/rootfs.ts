// The read-only rootfs disk: node + its libraries, crun + its libraries, busybox and the agent
// bundle, as an erofs (default) or ext4 image with fixed timestamps, UUID and ownership.
import { copyFile, lstat, mkdir, readdir, rm, stat, symlink, writeFile, lutimes, chmod } from 'node:fs/promises';
import path from 'node:path';
import { run, runText } from './exec.js';
import { unpackDeb } from './packages.js';
import { installNodeSnapshot, type SnapshotResult } from './node-snapshot.js';
import { DEFAULT_POLICY_PATH } from '../policy/allow-all.js';

export type RootfsType = 'erofs' | 'ext4';

export interface ExtraFile {
  /** absolute path in the guest, e.g. /usr/bin/katats-runner */
  guestPath: string;
  hostPath: string;
  /** default 0755 */
  mode?: number;
}

export interface RootfsInput {
  /** .deb files whose contents make up the filesystem */
  debs: string[];
  agentBundle: string;
  /** where the agent lands in the guest, e.g. /agent/agent.js */
  agentPath: string;
  extraFiles?: ExtraFile[];
  /** the agent's default policy, at Kata's path (the agent does not serve without it) */
  defaultPolicy: string;
  type: RootfsType;
  /** a fixed UUID for the filesystem */
  uuid: string;
  mtime: number;
  staging: string;
  out: string;
  /** build (or reuse) the node startup snapshot; see node-snapshot.ts */
  nodeSnapshot?: { launcherSource: string; cacheDir: string; inputs: string[] };
}

/** Package content the guest never reads. */
const EXCLUDE = [
  'usr/share/doc',
  'usr/share/man',
  'usr/share/info',
  'usr/share/lintian',
  'usr/share/locale',
  'usr/share/bash-completion',
  'usr/share/initramfs-tools',
  'usr/share/nodejs/@types',
  'usr/share/gcc',
  'usr/share/gdb',
  'usr/lib/x86_64-linux-gnu/gconv',
  'usr/include',
];

const ETC: Record<string, string> = {
  'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  'etc/group': 'root:x:0:\nnogroup:x:65534:\n',
  'etc/hostname': 'katats\n',
  'etc/hosts': '127.0.0.1\tlocalhost\n::1\tlocalhost\n',
  'etc/nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files dns\n',
  'etc/os-release': 'NAME="katats guest"\nID=katats\nID_LIKE=debian\nVERSION_ID=12\n',
};

async function walk(dir: string, fn: (p: string) => Promise<void>): Promise<void> {
  for (const name of (await readdir(dir)).sort()) {
    const p = path.join(dir, name);
    const st = await lstat(p);
    if (st.isDirectory()) await walk(p, fn);
    await fn(p);
  }
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

export async function stageRootfs(inp: RootfsInput): Promise<{ snapshot?: SnapshotResult }> {
  const root = inp.staging;
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });
  for (const deb of inp.debs) await unpackDeb(deb, root);
  for (const ex of EXCLUDE) await rm(path.join(root, ex), { recursive: true, force: true });
  // Static archives and headers are build-time only.
  await walk(root, async (p) => {
    if (p.endsWith('.a') && (await lstat(p)).isFile()) await rm(p);
  });

  // busybox applets as symlinks where no package put a real program.
  const bb = path.join(root, 'bin/busybox');
  const applets = (await runText(bb, ['--list-full'])).split('\n').filter(Boolean);
  for (const rel of applets) {
    const dest = path.join(root, rel);
    if (await exists(dest)) continue;
    await mkdir(path.dirname(dest), { recursive: true });
    await symlink(path.relative(path.dirname(dest), bb), dest);
  }

  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'mnt', 'root', 'var', 'etc', 'agent', 'sbin', 'usr/sbin']) {
    await mkdir(path.join(root, d), { recursive: true });
  }
  await chmod(path.join(root, 'tmp'), 0o1777);
  await chmod(path.join(root, 'root'), 0o700);
  for (const [l, t] of [
    ['var/run', '../run'],
    ['var/tmp', '../tmp'],
  ] as const) {
    if (!(await exists(path.join(root, l)))) await symlink(t, path.join(root, l));
  }
  for (const [rel, text] of Object.entries(ETC)) {
    await mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await writeFile(path.join(root, rel), text, { mode: 0o644 });
  }
  const policyDest = path.join(root, DEFAULT_POLICY_PATH);
  await mkdir(path.dirname(policyDest), { recursive: true });
  await writeFile(policyDest, inp.defaultPolicy, { mode: 0o644 });
  const agentDest = path.join(root, inp.agentPath);
  await mkdir(path.dirname(agentDest), { recursive: true });
  await copyFile(inp.agentBundle, agentDest);
  await chmod(agentDest, 0o644);
  for (const f of inp.extraFiles ?? []) {
    if (!path.isAbsolute(f.guestPath) || f.guestPath.split('/').includes('..')) throw new Error(`extra file ${f.guestPath}: not an absolute guest path`);
    const dest = path.join(root, f.guestPath);
    await mkdir(path.dirname(dest), { recursive: true });
    await rm(dest, { force: true });
    await copyFile(f.hostPath, dest);
    await chmod(dest, f.mode ?? 0o755);
  }

  const snapshot = inp.nodeSnapshot ? await installNodeSnapshot({ staging: root, ...inp.nodeSnapshot }) : undefined;

  // Fixed modes for the directories we made and fixed times for everything.
  await walk(root, async (p) => {
    const st = await lstat(p);
    if (st.isDirectory()) {
      const m = st.mode & 0o7777;
      if (m !== 0o1777 && m !== 0o700) await chmod(p, 0o755);
    }
    await lutimes(p, inp.mtime, inp.mtime);
  });
  await lutimes(root, inp.mtime, inp.mtime);
  return snapshot ? { snapshot } : {};
}

async function duBytes(dir: string): Promise<number> {
  let total = 0;
  await walk(dir, async (p) => {
    const st = await lstat(p);
    total += Math.ceil(st.size / 4096) * 4096 + 256;
  });
  return total;
}

export async function makeRootfsImage(inp: RootfsInput): Promise<{ size: number }> {
  await rm(inp.out, { force: true });
  const env = { ...process.env, SOURCE_DATE_EPOCH: String(inp.mtime), E2FSPROGS_FAKE_TIME: String(inp.mtime) };
  if (inp.type === 'erofs') {
    await run(
      'mkfs.erofs',
      ['--quiet', '-x-1', `-T${inp.mtime}`, `-U${inp.uuid}`, '--all-root', '-Eforce-inode-compact', inp.out, inp.staging],
      { env },
    );
  } else {
    const bytes = Math.ceil(((await duBytes(inp.staging)) * 1.15 + 16 * 1024 * 1024) / (1024 * 1024)) * 1024 * 1024;
    await run(
      'mke2fs',
      [
        '-q', '-F', '-t', 'ext4', '-b', '4096', '-L', 'katats-root', '-U', inp.uuid,
        '-E', `hash_seed=${inp.uuid},root_owner=0:0,lazy_itable_init=0,nodiscard`,
        '-O', '^has_journal,^metadata_csum,^resize_inode', '-m', '0', '-I', '256',
        '-d', inp.staging, inp.out, `${bytes / 1024}k`,
      ],
      { env },
    );
  }
  return { size: (await stat(inp.out)).size };
}
