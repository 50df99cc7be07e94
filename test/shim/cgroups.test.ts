// Host cgroup primitives: parsing (fixtures of the three host layouts) and, on this host's real
// hierarchies, making a cgroup everywhere, moving a process into it, and removing it again.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { CgroupError, cgroupsOf, createCgroup, hostHierarchies, joinCgroup, moveThreads, parseCgroupMounts, removeCgroupDirs, resolveCgroupsPath } from '../../shim/cgroups.js';
import { planSandboxCgroups, SandboxCgroups } from '../../shim/sandbox-cgroups.js';

const HYBRID = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 41 0:38 / /mnt/again rw,relatime - cgroup2 cgroup2 rw,nsdelegate
91 35 0:32 /sub /mnt/memsub rw,relatime - cgroup cgroup rw,memory
92 23 0:50 / /mnt/with\\040space rw - cgroup cgroup rw,pids`;

describe('parsing', () => {
  it('finds each hierarchy once, with its v1 controllers, skipping subtree binds', () => {
    expect(parseCgroupMounts(HYBRID)).toEqual([
      { mount: '/sys/fs/cgroup/cpu,cpuacct', version: 1, controllers: ['cpu', 'cpuacct'] },
      { mount: '/sys/fs/cgroup/memory', version: 1, controllers: ['memory'] },
      { mount: '/sys/fs/cgroup/systemd', version: 1, controllers: ['name=systemd'] },
      { mount: '/sys/fs/cgroup/unified', version: 2, controllers: [] },
      { mount: '/mnt/with space', version: 1, controllers: ['pids'] },
    ]);
    expect(parseCgroupMounts('25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot')).toEqual([{ mount: '/sys/fs/cgroup', version: 2, controllers: [] }]);
  });

  it('resolves cgroupfs and systemd cgroupsPaths, and refuses ones that climb out or name the root', () => {
    expect(resolveCgroupsPath('/kubepods/besteffort/pod1/abc')).toBe('kubepods/besteffort/pod1/abc');
    expect(resolveCgroupsPath('/k8s.io/abc')).toBe('k8s.io/abc');
    expect(resolveCgroupsPath('kubepods-besteffort-pod1.slice:cri-containerd:abc')).toBe('kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope');
    expect(resolveCgroupsPath(':docker:abc')).toBe('system.slice/docker-abc.scope');
    expect(resolveCgroupsPath('-.slice::abc')).toBe('abc');
    for (const bad of ['/../etc', 'a/./b', '/', '', 'bad-slice:p:n', 'a--b.slice:p:n']) expect(() => resolveCgroupsPath(bad)).toThrow(CgroupError);
  });

  it("plans Kata's two placements from the sandbox container's cgroupsPath", () => {
    expect(planSandboxCgroups('/kubepods/pod1/sb1', 'sb1', false)).toEqual({ sandbox: 'kubepods/pod1/sb1', overhead: 'katats_overhead/sb1' });
    expect(planSandboxCgroups('/kubepods/pod1/sb1', 'sb1', true)).toEqual({ sandbox: 'kubepods/pod1/katats_sb1' });
    expect(planSandboxCgroups('/sb1', 'sb1', true)).toEqual({ sandbox: 'katats_sb1' });
    expect(planSandboxCgroups(undefined, 'sb1', true)).toBeUndefined();
    expect(planSandboxCgroups('', 'sb1', false)).toBeUndefined();
    expect(() => planSandboxCgroups('/x/y', '../sb', true)).toThrow(CgroupError);
  });
});

describe('on this host', () => {
  const hier = hostHierarchies();
  const root = `katats-test-${process.pid}`;
  const children: ChildProcess[] = [];
  const sleeper = () => {
    const c = spawn('sleep', ['120'], { stdio: 'ignore' });
    children.push(c);
    return c;
  };
  const kill = async (c: ChildProcess) => {
    c.kill('SIGKILL');
    if (c.exitCode === null && c.signalCode === null) await new Promise((r) => c.once('exit', r));
  };

  afterAll(async () => {
    for (const c of children) await kill(c);
    await removeCgroupDirs(hier.flatMap((h) => [path.join(h.mount, root, 'a', 'b'), path.join(h.mount, root, 'a'), path.join(h.mount, root)]));
    for (const h of hier) expect(fs.existsSync(path.join(h.mount, root))).toBe(false);
  });

  it('makes a cgroup in every hierarchy, moves a process in, and removes only what it made once empty', async () => {
    expect(hier.length).toBeGreaterThan(0);
    fs.mkdirSync(path.join(hier[0]!.mount, root)); // someone else's parent in one hierarchy
    const made = createCgroup(hier, `${root}/a/b`);
    expect(made).not.toContain(path.join(hier[0]!.mount, root));
    expect(made).toHaveLength(hier.length * 3 - 1);
    // Idempotent: nothing new the second time.
    expect(createCgroup(hier, `${root}/a/b`)).toEqual([]);

    const c = sleeper();
    joinCgroup(hier, `${root}/a/b`, c.pid!);
    for (const [, rel] of cgroupsOf(c.pid!, hier)) expect(rel).toBe(`${root}/a/b`);

    // Busy while the process lives: left in place and reported, the parents too.
    expect(await removeCgroupDirs(made, 100)).toContain(path.join(hier[0]!.mount, root, 'a', 'b'));
    await kill(c);
    expect(await removeCgroupDirs(made)).toEqual([]);
    for (const h of hier) expect(fs.existsSync(path.join(h.mount, root, 'a'))).toBe(false);
    // The parent it did not make is still there.
    expect(fs.existsSync(path.join(hier[0]!.mount, root))).toBe(true);
    fs.rmdirSync(path.join(hier[0]!.mount, root));
  });

  it('moves single threads on cgroup v1 and says which v2 hierarchies it left alone', async () => {
    const made = createCgroup(hier, `${root}/t`);
    const c = sleeper();
    const skipped = moveThreads(hier, `${root}/t`, [c.pid!]);
    expect(skipped.every((h) => h.version === 2)).toBe(true);
    for (const [h, rel] of cgroupsOf(c.pid!, hier)) expect(rel).toBe(h.version === 1 ? `${root}/t` : cgroupsOf('self', [h]).get(h));
    await kill(c);
    expect(await removeCgroupDirs(made)).toEqual([]);
  });

  it('a sandbox enters its cgroups and leaves them, the shim back where it was and nothing left', async () => {
    const before = cgroupsOf('self', hier);
    const plan = planSandboxCgroups(`/${root}/pod/sb`, 'sb', false)!;
    const cg = await SandboxCgroups.enter({ ...plan, overhead: `${root}/overhead/sb` }, pino({ level: 'silent' }), hier);
    for (const [, rel] of cgroupsOf('self', hier)) expect(rel).toBe(`${root}/overhead/sb`);
    // A child started now is born in the overhead cgroup.
    const c = sleeper();
    for (const [, rel] of cgroupsOf(c.pid!, hier)) expect(rel).toBe(`${root}/overhead/sb`);
    await kill(c);
    await cg.leave();
    expect(cgroupsOf('self', hier)).toEqual(before);
    for (const d of cg.made) expect(fs.existsSync(d)).toBe(false);
  });

  it('refuses to join a cgroup that does not exist, with the path in the error', () => {
    expect(() => joinCgroup(hier, `${root}/missing`, process.pid)).toThrow(/cannot move process .*katats-test-\d+\/missing/);
  });
});
