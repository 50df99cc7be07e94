// Debian packages from another suite (sid, trixie) without touching the system: a private apt
// configuration (own sources, lists, cache, an empty dpkg status), `apt-get download`, a check of
// the archive's SHA256, and `dpkg-deb -x` into a cache dir. Nothing is installed.
//
// Cache layout (under .cache/debs/<suite>/): apt/ (sources, lists, cache), pool/*.deb,
// unpacked/<name>_<version>/ (complete once it holds .unpacked). Lists are refreshed when older
// than a day; when the archive cannot be reached, what the cache already holds is used.
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { run, runOk } from './exec.js';
import { CACHE_DIR } from './paths.js';

/** `system` means the host's own apt configuration (bookworm here); the others get private lists. */
export type Suite = 'sid' | 'trixie' | 'system';

export interface DebOptions {
  suite: Suite;
  /** One line per step ("debs: sid: downloading runsc ..."); default: stderr. */
  onProgress?: (line: string) => void;
  /** Default: .cache/debs at the repository root. */
  cacheDir?: string;
  /** Refresh package lists older than this (default 24 h). */
  maxListAgeMs?: number;
}

export interface DebFile {
  name: string;
  version: string;
  suite: Suite;
  /** The .deb in the cache. */
  path: string;
}

export interface UnpackedDeb extends DebFile {
  /** Root of the unpacked tree (e.g. DIR/usr/bin/containerd). */
  dir: string;
}

const DAY = 24 * 3600 * 1000;

function progressOf(opts: DebOptions): (line: string) => void {
  return opts.onProgress ?? ((line) => process.stderr.write(line + '\n'));
}

function suiteDir(opts: DebOptions): string {
  return path.join(opts.cacheDir ?? path.join(CACHE_DIR, 'debs'), opts.suite);
}

let archCache: string | undefined;
async function hostArch(): Promise<string> {
  archCache ??= (await runOk('dpkg', ['--print-architecture'])).stdout.trim();
  return archCache;
}

/** apt options that point every state and configuration path of apt at the private folder. */
async function aptOptions(opts: DebOptions): Promise<string[]> {
  const common = ['-o', 'APT::Sandbox::User=root', '-o', 'Acquire::Languages=none', '-q'];
  if (opts.suite === 'system') return common;
  const base = path.join(suiteDir(opts), 'apt');
  const o = (k: string, v: string) => ['-o', `${k}=${v}`];
  return [
    ...common,
    ...o('Dir::Etc::SourceList', '/dev/null'),
    ...o('Dir::Etc::SourceParts', path.join(base, 'sources')),
    ...o('Dir::Etc::Preferences', '/dev/null'),
    ...o('Dir::Etc::PreferencesParts', path.join(base, 'preferences')),
    ...o('Dir::State::Lists', path.join(base, 'lists')),
    ...o('Dir::State::status', '/dev/null'),
    ...o('Dir::Cache', path.join(base, 'cache')),
    ...o('APT::Architectures', await hostArch()),
    ...o('APT::Architecture', await hostArch()),
  ];
}

/** Serialises work on one suite's cache across processes (vitest forks, a bench): a lock dir holding the owner's pid. */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  fs.mkdirSync(dir, { recursive: true });
  const lock = path.join(dir, '.lock');
  const deadline = Date.now() + 15 * 60_000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let owner = NaN;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
      } catch {
        /* being written or removed */
      }
      let ownerAlive = true;
      if (Number.isInteger(owner)) {
        try {
          process.kill(owner, 0);
        } catch {
          ownerAlive = false;
        }
      }
      if (!ownerAlive) fs.rmSync(lock, { recursive: true, force: true });
      else if (Date.now() > deadline) throw new Error(`debs: ${lock} held by pid ${owner} for 15 minutes`);
      else await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

function listsFresh(listsDir: string, maxAgeMs: number): 'fresh' | 'stale' | 'missing' {
  let newest = 0;
  try {
    for (const f of fs.readdirSync(listsDir)) if (f.includes('_Packages')) newest = Math.max(newest, fs.statSync(path.join(listsDir, f)).mtimeMs);
  } catch {
    return 'missing';
  }
  if (!newest) return 'missing';
  return Date.now() - newest < maxAgeMs ? 'fresh' : 'stale';
}

/** Writes the private sources file and refreshes the lists when they are missing or old. */
async function ensureLists(opts: DebOptions): Promise<void> {
  if (opts.suite === 'system') return; // the host's lists: scripts/setup.sh and the admin keep them
  const progress = progressOf(opts);
  const base = path.join(suiteDir(opts), 'apt');
  for (const d of ['sources', 'preferences', 'lists/partial', 'cache/archives/partial']) fs.mkdirSync(path.join(base, d), { recursive: true });
  fs.writeFileSync(
    path.join(base, 'sources', `${opts.suite}.sources`),
    [
      'Types: deb',
      'URIs: http://deb.debian.org/debian',
      `Suites: ${opts.suite}`,
      'Components: main',
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
      '',
    ].join('\n'),
  );
  const state = listsFresh(path.join(base, 'lists'), opts.maxListAgeMs ?? DAY);
  if (state === 'fresh') return;
  progress(`debs: ${opts.suite}: updating package lists`);
  const r = await run('apt-get', [...(await aptOptions(opts)), 'update'], { timeoutMs: 300_000 });
  if (r.code !== 0) {
    if (state === 'stale') progress(`debs: ${opts.suite}: cannot refresh package lists, using the old ones (${r.stderr.trim().split('\n').pop()})`);
    else throw new Error(`debs: ${opts.suite}: apt-get update failed: ${r.stderr.trim().slice(-1000)}`);
  }
}

interface Candidate {
  version: string;
  filename: string;
  sha256: string;
  size: number;
}

async function candidate(name: string, opts: DebOptions): Promise<Candidate> {
  const r = await run('apt-cache', [...(await aptOptions(opts)), 'show', '--no-all-versions', name], { timeoutMs: 60_000 });
  const field = (k: string) => new RegExp(`^${k}: (.*)$`, 'm').exec(r.stdout)?.[1]?.trim();
  const version = field('Version');
  const filename = field('Filename');
  const sha256 = field('SHA256');
  if (r.code !== 0 || !version || !filename || !sha256) {
    throw new Error(`debs: ${opts.suite}: no package ${name} in the lists${r.stderr ? ': ' + r.stderr.trim() : ''}`);
  }
  return { version, filename, sha256, size: Number(field('Size') ?? 0) };
}

function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function safe(version: string): string {
  return version.replace(/[^A-Za-z0-9.+~_-]/g, '_');
}

/** The newest cached unpacked tree of `name`, for when the archive cannot be reached. */
function cachedUnpacked(name: string, opts: DebOptions): UnpackedDeb | undefined {
  const dir = path.join(suiteDir(opts), 'unpacked');
  let best: UnpackedDeb | undefined;
  let bestTime = 0;
  for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    if (!entry.startsWith(name + '_')) continue;
    const marker = path.join(dir, entry, '.unpacked');
    if (!fs.existsSync(marker)) continue;
    const meta = JSON.parse(fs.readFileSync(marker, 'utf8')) as DebFile;
    const t = fs.statSync(marker).mtimeMs;
    if (meta.name === name && t > bestTime) {
      best = { ...meta, dir: path.join(dir, entry) };
      bestTime = t;
    }
  }
  return best;
}

async function fetchLocked(name: string, opts: DebOptions): Promise<DebFile> {
  const progress = progressOf(opts);
  await ensureLists(opts);
  const c = await candidate(name, opts);
  const pool = path.join(suiteDir(opts), 'pool');
  fs.mkdirSync(pool, { recursive: true });
  const dest = path.join(pool, path.basename(c.filename));
  if (fs.existsSync(dest) && sha256File(dest) === c.sha256) return { name, version: c.version, suite: opts.suite, path: dest };
  progress(`debs: ${opts.suite}: downloading ${name} ${c.version} (${(c.size / 1e6).toFixed(1)} MB)`);
  const tmp = fs.mkdtempSync(path.join(pool, '.download-'));
  try {
    await runOk('apt-get', [...(await aptOptions(opts)), 'download', `${name}=${c.version}`], { cwd: tmp, timeoutMs: 600_000 });
    const got = fs.readdirSync(tmp).filter((f) => f.endsWith('.deb'));
    if (got.length !== 1) throw new Error(`debs: apt-get download ${name} left ${got.join(', ') || 'nothing'}`);
    const file = path.join(tmp, got[0]!);
    const sum = sha256File(file);
    if (sum !== c.sha256) throw new Error(`debs: ${name} ${c.version}: sha256 ${sum}, the archive says ${c.sha256}`);
    fs.renameSync(file, dest);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { name, version: c.version, suite: opts.suite, path: dest };
}

/** Downloads (or finds in the cache) the candidate version of package `name` from the suite. */
export async function fetchDeb(name: string, opts: DebOptions): Promise<DebFile> {
  return withLock(suiteDir(opts), () => fetchLocked(name, opts));
}

/**
 * The package unpacked with `dpkg-deb -x` under the cache (not installed). When the archive cannot be
 * reached, the newest tree already unpacked is used (with a progress line saying so).
 */
export async function unpackDeb(name: string, opts: DebOptions): Promise<UnpackedDeb> {
  const progress = progressOf(opts);
  return withLock(suiteDir(opts), async () => {
    let deb: DebFile;
    try {
      deb = await fetchLocked(name, opts);
    } catch (err) {
      const cached = cachedUnpacked(name, opts);
      if (!cached) throw err;
      progress(`debs: ${opts.suite}: ${(err as Error).message.split('\n')[0]}; using cached ${name} ${cached.version}`);
      return cached;
    }
    const dir = path.join(suiteDir(opts), 'unpacked', `${name}_${safe(deb.version)}`);
    const marker = path.join(dir, '.unpacked');
    if (fs.existsSync(marker)) return { ...deb, dir };
    progress(`debs: ${opts.suite}: unpacking ${path.basename(deb.path)}`);
    fs.rmSync(dir, { recursive: true, force: true });
    const tmp = `${dir}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    try {
      await runOk('dpkg-deb', ['-x', deb.path, tmp], { timeoutMs: 300_000 });
      fs.writeFileSync(path.join(tmp, '.unpacked'), JSON.stringify(deb));
      fs.renameSync(tmp, dir);
    } catch (err) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    return { ...deb, dir };
  });
}
