// `katats install` and `katats doctor`, for real: install into a private containerd 1.6's config
// (prefix, drop-in dir and configs in a temp dir, never /usr/local or /etc), restart containerd as
// an operator would, and run a katats container through it. containerd's own `config dump` is
// the judge of what the written configuration means. One VM.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildHostBinaries } from '../../scripts/build.js';
import { DEFAULTS, parseConfig } from '../../shim/config.js';
import { podOverhead } from '../../shim/pod-overhead.js';
import { containerdBinaries, startContainerd, type Containerd } from '../../harness/containerd.js';
import { run, type RunResult } from '../../harness/exec.js';
import { busyboxImage } from '../../harness/images/busybox.js';
import { katatsEnv, type KatatsEnv } from './katats-env.js';
import { endKatatsSuite, logsOf, qemuProcs, until } from './shim-helpers.js';

let env: KatatsEnv;
let c: Containerd;
let image: string;
let binDir: string;
let tmp: string;

function katats(args: string[], pathPrefix?: string): Promise<RunResult> {
  const PATH = pathPrefix ? `${pathPrefix}:${process.env.PATH ?? ''}` : process.env.PATH;
  return run(path.join(binDir, 'katats'), args, { env: { ...process.env, PATH, KATATS_CONF_FILE: '' }, timeoutMs: 60_000 });
}

function installArgs(dir: string, containerdConfig: string, katatsConfig = path.join(dir, 'katats', 'configuration.toml')): string[] {
  return ['install', '--bin-dir', binDir, '--prefix', path.join(dir, 'bin'), '--containerd-config', containerdConfig, '--drop-in-dir', path.join(dir, 'conf.d'), '--katats-config', katatsConfig];
}

/** What containerd makes of a config file: `containerd --config FILE config dump`. */
async function dump(containerd: string, config: string): Promise<string> {
  const r = await run(containerd, ['--config', config, 'config', 'dump'], { timeoutMs: 30_000 });
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

beforeAll(async () => {
  ({ binDir } = await buildHostBinaries(() => {}));
  env = await katatsEnv();
  c = await startContainerd({});
  const img = await busyboxImage();
  await c.importImage(img.archive, 'katats.local/busybox:index');
  image = img.name;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kt-inst-'));
}, 600_000);

afterAll(async () => {
  try {
    await endKatatsSuite(c, env);
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
}, 120_000);

describe('katats install', () => {
  it('into a running containerd 1.6: shim linked, drop-in imported, containerd restarted runs a katats container', async () => {
    const dir = path.join(tmp, 'live');
    const original = fs.readFileSync(c.configFile, 'utf8');
    // Without the shim on its PATH containerd cannot run the runtime: the control for what follows.
    const before = await c.ctr(['run', '--rm', '--runtime', 'io.containerd.katats.v2', image, 'inst0', 'true'], { timeoutMs: 60_000 });
    expect(before.code).not.toBe(0);
    expect(before.stderr).toContain('containerd-shim-katats-v2');
    await c.ctr(['container', 'rm', 'inst0']);

    const r = await katats(installArgs(dir, c.configFile, env.configFile));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('kind: RuntimeClass');
    expect(r.stdout).toMatch(/^handler: katats$/m);
    // The overhead is the measured footprint of the pods this configuration makes (no factory here: a cold boot's).
    const overhead = podOverhead(parseConfig(fs.readFileSync(env.configFile, 'utf8')));
    expect(overhead.why).toMatch(/^a cold-booted VM/);
    expect(r.stdout).toContain(`    memory: "${overhead.memoryMi}Mi"\n`);
    for (const name of ['containerd-shim-katats-v2', 'katats']) expect(fs.readlinkSync(path.join(dir, 'bin', name))).toBe(path.join(binDir, name));
    // The operator's file is kept byte for byte under one added line, and backed up.
    const pattern = path.join(dir, 'conf.d', '*.toml');
    expect(fs.readFileSync(c.configFile, 'utf8')).toBe(`imports = ${JSON.stringify([pattern])} # added by katats install\n${original}`);
    expect(fs.readFileSync(`${c.configFile}.katats-backup`, 'utf8')).toBe(original);
    // An existing katats configuration is the operator's: not touched.
    expect(r.stdout).not.toContain(`wrote ${env.configFile}`);

    // A second run changes nothing.
    const installed = fs.readFileSync(c.configFile, 'utf8');
    const again = await katats(installArgs(dir, c.configFile, env.configFile));
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('already imports');
    expect(fs.readFileSync(c.configFile, 'utf8')).toBe(installed);
    expect(fs.readFileSync(`${c.configFile}.katats-backup`, 'utf8')).toBe(original);

    // containerd 1.6 resolves the import, and reads the drop-in as a CRI runtime handler.
    expect(await dump(c.binaries.containerd, c.configFile)).toContain(path.join(dir, 'conf.d', 'katats.toml'));
    const criOnly = path.join(dir, 'cri-dump.toml');
    fs.writeFileSync(criOnly, `version = 2\nimports = ${JSON.stringify([pattern])}\n`);
    const cri = await dump(c.binaries.containerd, criOnly);
    expect(cri).toMatch(/\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\.runtimes\.katats\]\n(\s+\w+ = .*\n)*?\s+runtime_type = "io\.containerd\.katats\.v2"/);
    expect(cri).toContain(`ConfigPath = "${env.configFile}"`);

    // As after `systemctl restart containerd` on a host whose PATH holds the prefix; the shim reads
    // its default configuration from KATATS_CONF_FILE here instead of /etc/katats.
    c.spawnEnv = { ...c.spawnEnv, PATH: `${path.join(dir, 'bin')}:${c.spawnEnv.PATH ?? ''}`, KATATS_CONF_FILE: env.configFile };
    await c.restart();
    // ctr hands --runtime-config-path to the shim as runtimeoptions ConfigPath, the option the drop-in
    // gives CRI pods: this one asks for a smaller VM, and the guest's memory shows it was used.
    const small = path.join(dir, 'small.toml');
    fs.writeFileSync(small, fs.readFileSync(env.configFile, 'utf8').replace('[hypervisor.qemu]\n', '[hypervisor.qemu]\ndefault_memory = 384\n'));
    const res = await c.ctr(['run', '--rm', '--runtime', 'io.containerd.katats.v2', '--runtime-config-path', small, image, 'inst1', 'sh', '-c', 'uname -r; grep MemTotal /proc/meminfo'], { timeoutMs: 300_000 });
    expect(res.code, `${res.stderr}\n${logsOf(env.logDir, 'inst1')}`).toBe(0);
    const [release, mem] = res.stdout.trim().split('\n');
    expect(release).toBe(env.image.manifest.kernel.release);
    const memKiB = Number(/MemTotal:\s+(\d+) kB/.exec(mem ?? '')?.[1]);
    expect(memKiB).toBeGreaterThan(256 * 1024);
    expect(memKiB).toBeLessThanOrEqual(384 * 1024);
    await until(() => qemuProcs(env.stateDir), (p) => p.length === 0, 30_000);
    expect(qemuProcs(env.stateDir)).toEqual([]);
  }, 600_000);

  it('a main config that configures CRI itself gets the runtime appended, its CRI settings intact', async () => {
    const dir = path.join(tmp, 'cri');
    fs.mkdirSync(dir);
    const config = path.join(dir, 'config.toml');
    const original = [
      '# the node\'s own CRI settings',
      'version = 2',
      '[plugins."io.containerd.grpc.v1.cri"]',
      '  sandbox_image = "example.local/pause:9.9"',
      '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
      '    runtime_type = "io.containerd.runc.v2"',
      '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
      '      SystemdCgroup = true',
      '',
    ].join('\n');
    fs.writeFileSync(config, original);
    const r = await katats(installArgs(dir, config));
    expect(r.code, r.stderr).toBe(0);
    // No drop-in: containerd 1.x would let it replace the whole CRI section above.
    expect(fs.existsSync(path.join(dir, 'conf.d', 'katats.toml'))).toBe(false);
    expect(fs.readFileSync(config, 'utf8').startsWith(original)).toBe(true);
    const d = await dump(c.binaries.containerd, config);
    expect(d).toContain('sandbox_image = "example.local/pause:9.9"');
    expect(d).toContain('SystemdCgroup = true');
    expect(d).toContain('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.katats]');
    expect(d).toContain(`ConfigPath = "${path.join(dir, 'katats', 'configuration.toml')}"`);
    // No katats configuration existed: the defaults were written, and they load.
    const written = fs.readFileSync(path.join(dir, 'katats', 'configuration.toml'), 'utf8');
    const { source, ...loaded } = parseConfig(written, 'written');
    expect(source).toBe('written');
    // runtime.hypervisor is resolved at parse time: a file without a [hypervisor.X] table means qemu.
    expect(loaded).toEqual({ ...DEFAULTS, runtime: { ...DEFAULTS.runtime, hypervisor: 'qemu' } });
    // Again: nothing more is appended.
    const once = fs.readFileSync(config, 'utf8');
    const again = await katats(installArgs(dir, config));
    expect(again.code, again.stderr).toBe(0);
    expect(fs.readFileSync(config, 'utf8')).toBe(once);
  }, 60_000);

  it('a version 3 config (containerd 2.x) gets a version 3 drop-in that containerd 2.x merges', async () => {
    const sid = await containerdBinaries('sid');
    const dir = path.join(tmp, 'v3');
    fs.mkdirSync(dir);
    const config = path.join(dir, 'config.toml');
    fs.writeFileSync(config, ['version = 3', "[plugins.'io.containerd.cri.v1.images'.pinned_images]", '  sandbox = "example.local/pause:9.9"', ''].join('\n'));
    const r = await katats(installArgs(dir, config));
    expect(r.code, r.stderr).toBe(0);
    expect(parseToml(fs.readFileSync(path.join(dir, 'conf.d', 'katats.toml'), 'utf8'))).toMatchObject({ version: 3 });
    const d = await dump(sid.containerd, config);
    expect(d).toContain("sandbox = 'example.local/pause:9.9'");
    expect(d).toContain("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.katats]");
    expect(d).toContain(`ConfigPath = '${path.join(dir, 'katats', 'configuration.toml')}'`);
  }, 300_000);

  it('refuses a version 1 config and writes nothing', async () => {
    const dir = path.join(tmp, 'v1');
    fs.mkdirSync(dir);
    const config = path.join(dir, 'config.toml');
    fs.writeFileSync(config, '[plugins.cri]\n  sandbox_image = "x"\n');
    const r = await katats(installArgs(dir, config));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/version 1 config/);
    expect(fs.readdirSync(dir)).toEqual(['config.toml']);
    expect(fs.readFileSync(config, 'utf8')).toBe('[plugins.cri]\n  sandbox_image = "x"\n');
  });
});

describe('katats doctor', () => {
  it('says KVM or TCG and why, and exits 0 only when everything it checks works', async () => {
    const prefix = path.join(tmp, 'live', 'bin');
    const ok = await katats(['doctor', '--config', env.configFile, '--address', c.address], prefix);
    expect(ok.code, ok.stdout).toBe(0);
    const accel = /^ok +accelerator: (KVM|TCG): KVM probe (passed|failed) \((.+)\)/m.exec(ok.stdout);
    expect(accel, ok.stdout).not.toBeNull();
    expect(accel![1]).toBe(env.accel.toUpperCase());
    expect(accel![2]).toBe(env.accel === 'kvm' ? 'passed' : 'failed');
    expect(ok.stdout).toMatch(/^ok +shim on PATH/m);
    expect(ok.stdout).toMatch(/^ok +containerd: answering/m);
    // Which hypervisors work here: no cloud-hypervisor binary on this host, katats-chv backs "clh".
    const realClh = fs.existsSync(DEFAULTS.hypervisor.clh.path);
    expect(ok.stdout).toMatch(realClh ? /^ok +cloud-hypervisor: / : /^ok +cloud-hypervisor: not usable: .*is not installed/m);
    if (!realClh) expect(ok.stdout).toMatch(/^ok +hypervisor = "clh": runs on katats-chv \(cloud-hypervisor's API, QEMU /m);
    expect(ok.stdout).toMatch(/^ok +selected hypervisor: runtime\.hypervisor = qemu/m);

    // Forced TCG (no probe), no guest image, no containerd, no shim on PATH.
    const bad = path.join(tmp, 'bad.toml');
    fs.writeFileSync(bad, `[hypervisor.qemu]\naccel = "tcg"\nguest_manifest = "/nonexistent/manifest.json"\n[runtime]\nstate_dir = "${env.stateDir}"\nlog_dir = "${env.logDir}"\n`);
    const fail = await katats(['doctor', '--config', bad, '--address', path.join(tmp, 'none.sock')]);
    expect(fail.code, fail.stdout).toBe(1);
    expect(fail.stdout).toMatch(/^ok +accelerator: TCG \(forced by hypervisor\.qemu\.accel = "tcg"\)/m);
    expect(fail.stdout).toMatch(/^FAIL guest image: .*\/nonexistent\/manifest\.json/m);
    expect(fail.stdout).toMatch(/^FAIL containerd: nothing listening/m);
    expect(fail.stdout).toMatch(/^FAIL shim on PATH/m);
  }, 120_000);
});
