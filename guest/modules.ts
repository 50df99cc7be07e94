// Kernel module resolution: load order from the kernel package's own dependency data.
// Debian's linux-image package ships no modules.dep (its postinst runs depmod), so the builder
// runs `depmod -b` on the unpacked tree and reads modules.dep, modules.softdep, modules.alias and
// modules.builtin from there.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './exec.js';

export interface ModuleIndex {
  kernelVersion: string;
  moduleDir: string;
  /** canonical name -> path relative to moduleDir */
  paths: Map<string, string>;
  /** canonical name -> direct + indirect deps as listed in modules.dep */
  deps: Map<string, string[]>;
  /** canonical name -> softdep "pre:" names (aliases or module names) */
  softPre: Map<string, string[]>;
  /** alias -> canonical module names */
  aliases: Map<string, string[]>;
  builtin: Set<string>;
}

/** Module name as the kernel sees it: file name without .ko(.xz|.zst|.gz), '-' folded to '_'. */
export function canonical(nameOrPath: string): string {
  return path
    .basename(nameOrPath)
    .replace(/\.ko(\.(xz|zst|gz))?$/, '')
    .replace(/-/g, '_');
}

export async function depmod(rootDir: string, kernelVersion: string): Promise<void> {
  await run('depmod', ['-b', rootDir, kernelVersion]);
}

export async function loadModuleIndex(rootDir: string, kernelVersion: string): Promise<ModuleIndex> {
  const moduleDir = path.join(rootDir, 'lib/modules', kernelVersion);
  const read = (f: string) => readFile(path.join(moduleDir, f), 'utf8').catch(() => '');
  const [dep, softdep, alias, builtin] = await Promise.all([
    read('modules.dep'),
    read('modules.softdep'),
    read('modules.alias'),
    read('modules.builtin'),
  ]);
  if (!dep) throw new Error(`no modules.dep in ${moduleDir} (depmod not run?)`);
  const idx: ModuleIndex = {
    kernelVersion,
    moduleDir,
    paths: new Map(),
    deps: new Map(),
    softPre: new Map(),
    aliases: new Map(),
    builtin: new Set(),
  };
  for (const line of dep.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const file = line.slice(0, i);
    const name = canonical(file);
    idx.paths.set(name, file);
    idx.deps.set(name, line.slice(i + 1).trim().split(/\s+/).filter(Boolean).map(canonical));
  }
  for (const line of softdep.split('\n')) {
    const m = /^softdep\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    // "pre: a b post: c" -> the words after pre: up to the next keyword
    const words = m[2]!.split(/\s+/);
    let mode = '';
    const pre: string[] = [];
    for (const w of words) {
      if (w === 'pre:' || w === 'post:') mode = w;
      else if (mode === 'pre:') pre.push(w);
    }
    if (pre.length) idx.softPre.set(canonical(m[1]!), pre);
  }
  for (const line of alias.split('\n')) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line);
    if (!m) continue;
    const list = idx.aliases.get(m[1]!) ?? [];
    list.push(canonical(m[2]!));
    idx.aliases.set(m[1]!, list);
  }
  for (const line of builtin.split('\n')) if (line.trim()) idx.builtin.add(canonical(line.trim()));
  return idx;
}

/**
 * Resolves a softdep name (an alias such as "crc32c" or a module name) to one module: a real
 * module of that name, else the alias's generic implementation (plain C, works on any CPU model),
 * else its first provider. Returns undefined when built in or unknown.
 */
function resolveSoft(idx: ModuleIndex, name: string): string | undefined {
  const c = canonical(name);
  if (idx.builtin.has(c)) return undefined;
  if (idx.paths.has(c)) return c;
  const providers = [...(idx.aliases.get(name) ?? []), ...(idx.aliases.get(`crypto-${name}`) ?? [])];
  const uniq = [...new Set(providers)].filter((p) => idx.paths.has(p) || idx.builtin.has(p));
  if (uniq.some((p) => idx.builtin.has(p))) return undefined;
  return uniq.find((p) => p.endsWith('_generic')) ?? uniq[0];
}

export interface ModulePlan {
  /** module file paths relative to the module dir, in load order */
  order: string[];
  /** requested names that are built into the kernel (nothing to load) */
  builtin: string[];
  /** requested names that this kernel does not have at all (optional ones only) */
  absent: string[];
}

/**
 * Load order for the wanted modules and everything they need: dependencies (and softdep "pre"
 * modules) before the module itself. Names ending in '?' are optional: absent is not an error.
 */
export function planModules(idx: ModuleIndex, wanted: string[]): ModulePlan {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const builtin: string[] = [];
  const absent: string[] = [];
  const visit = (name: string, chain: string[]) => {
    if (done.has(name)) return;
    if (visiting.has(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    visiting.add(name);
    for (const s of idx.softPre.get(name) ?? []) {
      const r = resolveSoft(idx, s);
      if (r) visit(r, [...chain, name]);
    }
    for (const d of idx.deps.get(name) ?? []) visit(d, [...chain, name]);
    visiting.delete(name);
    done.add(name);
    order.push(idx.paths.get(name)!);
  };
  for (const raw of wanted) {
    const optional = raw.endsWith('?');
    const name = canonical(optional ? raw.slice(0, -1) : raw);
    if (idx.builtin.has(name)) builtin.push(name);
    else if (idx.paths.has(name)) visit(name, []);
    else if (optional) absent.push(name);
    else throw new Error(`kernel ${idx.kernelVersion} has no module ${name}`);
  }
  return { order, builtin, absent };
}
