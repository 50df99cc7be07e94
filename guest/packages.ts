// Debian packages for the guest: version resolution against the machine's apt lists, download
// with `apt-get download` into a cache (checked against the archive's SHA256), unpacking with
// `dpkg-deb -x`. Nothing comes from anywhere but Debian's archive.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { run, runText } from './exec.js';

export interface ResolvedPackage {
  name: string;
  version: string;
  /** Architecture-qualified file name as apt-get download writes it. */
  filename: string;
  sha256: string;
  size: number;
}

export interface AptOptions {
  /**
   * A private directory for apt's binary package cache. This machine's apt config disables the
   * shared one (every apt-cache call then re-parses all lists, ~1 s); apt revalidates its own
   * cache against the lists, so keeping one here is safe.
   */
  cacheDir?: string;
}

function aptArgs(apt: AptOptions): string[] {
  if (!apt.cacheDir) return [];
  return [
    '-o', `Dir::Cache::pkgcache=${path.join(apt.cacheDir, 'pkgcache.bin')}`,
    '-o', `Dir::Cache::srcpkgcache=${path.join(apt.cacheDir, 'srcpkgcache.bin')}`,
  ];
}

/** Versions the archive offers for each package, newest first (apt's own order). */
async function madison(apt: AptOptions, names: string[]): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (names.length === 0) return out;
  const text = await runText('apt-cache', [...aptArgs(apt), 'madison', ...names]);
  for (const line of text.split('\n')) {
    const cols = line.split('|').map((s) => s.trim());
    if (cols.length < 3 || !cols[0] || !cols[1]) continue;
    // madison also lists source entries ("Sources") on machines with deb-src; keep binaries.
    if (!/ Packages$/.test(cols[2] ?? '')) continue;
    const list = out.get(cols[0]) ?? [];
    if (!list.includes(cols[1])) list.push(cols[1]);
    out.set(cols[0], list);
  }
  return out;
}

interface Stanza {
  [field: string]: string;
}

function parseStanzas(text: string): Stanza[] {
  const res: Stanza[] = [];
  let cur: Stanza = {};
  let last = '';
  for (const line of text.split('\n')) {
    if (line === '') {
      if (Object.keys(cur).length) res.push(cur);
      cur = {};
      continue;
    }
    if (line.startsWith(' ') && last) {
      cur[last] += '\n' + line;
      continue;
    }
    const i = line.indexOf(':');
    if (i < 0) continue;
    last = line.slice(0, i);
    cur[last] = line.slice(i + 1).trim();
  }
  if (Object.keys(cur).length) res.push(cur);
  return res;
}

async function showExact(apt: AptOptions, pkgs: { name: string; version: string }[]): Promise<Map<string, Stanza>> {
  const text = await runText('apt-cache', [...aptArgs(apt), 'show', ...pkgs.map((p) => `${p.name}=${p.version}`)]);
  const map = new Map<string, Stanza>();
  for (const s of parseStanzas(text)) {
    const key = `${s.Package}=${s.Version}`;
    if (!map.has(key)) map.set(key, s);
  }
  return map;
}

/** Parses a Depends field into groups of alternatives (names only; arch qualifiers dropped). */
export function parseDepends(field: string | undefined): string[][] {
  if (!field) return [];
  return field
    .split(',')
    .map((group) =>
      group
        .split('|')
        .map((alt) => alt.trim().split(/[\s(]/)[0]!.replace(/:.*$/, ''))
        .filter(Boolean),
    )
    .filter((g) => g.length > 0);
}

/** The newest generic amd64 kernel image package of the 6.1 series (linux-image-6.1.0-N-amd64). */
export async function newestKernelPackage(apt: AptOptions = {}): Promise<string> {
  if (apt.cacheDir) await mkdir(apt.cacheDir, { recursive: true });
  const text = await runText('apt-cache', [...aptArgs(apt), 'search', '--names-only', '^linux-image-6\\.1\\.0-[0-9]+-amd64$']);
  let best: { abi: number; name: string } | undefined;
  for (const line of text.split('\n')) {
    const m = /^(linux-image-6\.1\.0-(\d+)-amd64) /.exec(line);
    if (m && (!best || Number(m[2]) > best.abi)) best = { abi: Number(m[2]), name: m[1]! };
  }
  if (!best) throw new Error('no linux-image-6.1.0-*-amd64 package in the apt lists (run apt-get update)');
  return best.name;
}

/** Refreshes the apt lists (a fresh machine has none); root only. */
export async function aptUpdate(): Promise<void> {
  await run('apt-get', ['-o', 'DPkg::Lock::Timeout=600', '-qq', 'update']);
}

/**
 * Resolves root packages and (unless listed in noDeps) their Depends/Pre-Depends closure to exact
 * versions: the newest version the archive offers, first alternative that exists.
 * `pins` fixes a package's version (e.g. from an earlier manifest).
 */
export async function resolvePackages(
  roots: string[],
  opts: { noDeps?: string[]; pins?: Record<string, string> } & AptOptions = {},
): Promise<ResolvedPackage[]> {
  if (opts.cacheDir) await mkdir(opts.cacheDir, { recursive: true });
  const resolved = new Map<string, ResolvedPackage>();
  const known = new Map<string, string[]>();
  let frontier = [...new Set(roots)];
  while (frontier.length) {
    const unknown = frontier.filter((n) => !known.has(n));
    for (const [n, v] of await madison(opts, unknown)) known.set(n, v);
    for (const n of unknown) if (!known.has(n)) known.set(n, []);
    const batch: { name: string; version: string }[] = [];
    for (const name of frontier) {
      if (resolved.has(name)) continue;
      const versions = known.get(name) ?? [];
      const version = opts.pins?.[name] ?? versions[0];
      if (!version) throw new Error(`package ${name}: no version in the apt lists`);
      batch.push({ name, version });
    }
    const stanzas = await showExact(opts, batch);
    const next: string[] = [];
    const groups: string[][] = [];
    for (const p of batch) {
      const s = stanzas.get(`${p.name}=${p.version}`);
      if (!s || !s.Filename || !s.SHA256) throw new Error(`package ${p.name}=${p.version}: not downloadable`);
      resolved.set(p.name, {
        name: p.name,
        version: p.version,
        filename: path.basename(s.Filename),
        sha256: s.SHA256,
        size: Number(s.Size ?? 0),
      });
      if (opts.noDeps?.includes(p.name)) continue;
      groups.push(...parseDepends(s['Pre-Depends']), ...parseDepends(s.Depends));
    }
    // Alternatives: the first one the archive has; skip groups already satisfied.
    const altNames = [...new Set(groups.flat())].filter((n) => !known.has(n));
    for (const [n, v] of await madison(opts, altNames)) known.set(n, v);
    for (const n of altNames) if (!known.has(n)) known.set(n, []);
    for (const g of groups) {
      if (g.some((n) => resolved.has(n) || next.includes(n))) continue;
      const pick = g.find((n) => (known.get(n) ?? []).length > 0);
      if (!pick) throw new Error(`cannot satisfy dependency ${g.join(' | ')}`);
      next.push(pick);
    }
    frontier = next;
  }
  return [...resolved.values()].sort((a, b) => a.name.localeCompare(b.name));
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/**
 * Makes sure every package's .deb is in debDir with the archive's SHA256; downloads the missing
 * ones with one `apt-get download` call. Returns name -> .deb path.
 */
export async function fetchPackages(
  pkgs: ResolvedPackage[],
  debDir: string,
  onProgress: (msg: string) => void = () => {},
): Promise<Map<string, string>> {
  await mkdir(debDir, { recursive: true });
  const paths = new Map<string, string>();
  const missing: ResolvedPackage[] = [];
  for (const p of pkgs) {
    const file = path.join(debDir, p.filename);
    paths.set(p.name, file);
    if (!(await exists(file)) || (await sha256File(file)) !== p.sha256) missing.push(p);
  }
  if (missing.length) {
    const total = missing.reduce((s, p) => s + p.size, 0);
    onProgress(`downloading ${missing.length} packages (${(total / 1e6).toFixed(1)} MB) with apt-get download`);
    const tmp = path.join(debDir, `.partial-${process.pid}`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    try {
      await run(
        'apt-get',
        ['download', '-q', '-o', 'APT::Sandbox::User=root', ...missing.map((p) => `${p.name}=${p.version}`)],
        { cwd: tmp },
      );
      const got = await readdir(tmp);
      for (const p of missing) {
        // apt-get download names files NAME_VERSION_ARCH.deb with the epoch's ':' as %3a; the cache
        // keeps the archive's own (epoch-less) pool file name.
        const found = got.find((f) => f.startsWith(`${p.name}_`));
        if (!found) throw new Error(`apt-get download did not produce ${p.filename} (got ${got.join(', ')})`);
        const sum = await sha256File(path.join(tmp, found));
        if (sum !== p.sha256) throw new Error(`${p.filename}: sha256 ${sum} differs from the archive's ${p.sha256}`);
        await rename(path.join(tmp, found), path.join(debDir, p.filename));
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  return paths;
}

/** Unpacks a .deb's data into dest (created if needed). */
export async function unpackDeb(deb: string, dest: string): Promise<void> {
  await mkdir(dest, { recursive: true });
  await run('dpkg-deb', ['-x', deb, dest]);
}
