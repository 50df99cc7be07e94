// Where templates live: one directory per key below the template path (tmpfs: the RAM file is
// guest memory), holding the RAM file, the device state stream and template.json (the key's
// inputs). Built under a temporary name and renamed into place when complete, then made
// read-only: a half-built template is never found, and nothing writes to a finished one (clones
// map its RAM privately, copy-on-write).
import fs from 'node:fs';
import path from 'node:path';
import { keyDifference, templateKey, type TemplateKeyInput } from './key.js';

export const MEMORY_FILE = 'memory';
export const STATE_FILE = 'state';
export const META_FILE = 'template.json';

export interface TemplateMeta {
  key: string;
  input: TemplateKeyInput;
  createdAt: string;
  /** ms from spawn to agent ready, and what saving took */
  buildMs: { ready: number; warm: number; save: number };
  memoryMiB: number;
}

export interface Template {
  dir: string;
  memoryFile: string;
  stateFile: string;
  meta: TemplateMeta;
}

export type Lookup = { template: Template } | { reason: string };

const KEY_RE = /^[0-9a-f]{64}$/;
/** Paths go into QEMU's `exec:` migration URI, which a shell runs: nothing a shell would interpret. */
const SAFE_PATH_RE = /^[A-Za-z0-9/._-]+$/;

export function checkTemplatePath(root: string): void {
  if (!path.isAbsolute(root)) throw new Error(`template path ${JSON.stringify(root)} is not absolute`);
  if (!SAFE_PATH_RE.test(root)) throw new Error(`template path ${JSON.stringify(root)} may hold only letters, digits, '/', '.', '_' and '-'`);
}

function readMeta(dir: string): TemplateMeta | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(path.join(dir, META_FILE), 'utf8')) as TemplateMeta;
    return KEY_RE.test(m.key) && m.input ? m : undefined;
  } catch {
    return undefined;
  }
}

export class TemplateStore {
  constructor(readonly root: string) {
    checkTemplatePath(root);
  }

  /** Every complete template below the root. */
  list(): Template[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.root);
    } catch {
      return [];
    }
    const out: Template[] = [];
    for (const n of names) {
      if (!KEY_RE.test(n)) continue;
      const dir = path.join(this.root, n);
      const meta = readMeta(dir);
      if (meta?.key !== n) continue;
      out.push({ dir, memoryFile: path.join(dir, MEMORY_FILE), stateFile: path.join(dir, STATE_FILE), meta });
    }
    return out;
  }

  /** The template for exactly this key, or why there is none (naming the nearest other key's difference). */
  lookup(input: TemplateKeyInput): Lookup {
    const key = templateKey(input);
    const all = this.list();
    const t = all.find((x) => x.meta.key === key);
    if (t) {
      // The key names the directory; its recorded inputs must say the same, or it is not trusted.
      if (templateKey(t.meta.input) !== key) return { reason: `template ${key.slice(0, 12)} records other inputs than its name` };
      for (const f of [t.memoryFile, t.stateFile]) {
        let size = 0;
        try {
          size = fs.statSync(f).size;
        } catch {
          return { reason: `template ${key.slice(0, 12)} lacks ${path.basename(f)}` };
        }
        if (f === t.memoryFile && size !== t.meta.memoryMiB * 1024 * 1024) return { reason: `template ${key.slice(0, 12)} RAM file is ${size} bytes, not ${t.meta.memoryMiB} MiB` };
      }
      return { template: t };
    }
    if (!all.length) return { reason: `no template at ${this.root} (run: katats factory init)` };
    return { reason: `key mismatch: no template for key ${key.slice(0, 12)}; ${all.map((x) => `${x.meta.key.slice(0, 12)}: ${keyDifference(input, x.meta.input)}`).join('; ')}` };
  }

  /** A fresh directory to build in; `commit` moves it into place. */
  buildDir(key: string): string {
    if (!KEY_RE.test(key)) throw new Error(`template key ${JSON.stringify(key)} is not a sha256 digest`);
    fs.mkdirSync(this.root, { recursive: true, mode: 0o700 });
    return fs.mkdtempSync(path.join(this.root, `.build-${key.slice(0, 12)}-`));
  }

  commit(buildDir: string, meta: TemplateMeta): Template {
    fs.writeFileSync(path.join(buildDir, META_FILE), JSON.stringify(meta, null, 2) + '\n', { mode: 0o444 });
    for (const f of [MEMORY_FILE, STATE_FILE]) fs.chmodSync(path.join(buildDir, f), 0o444);
    fs.chmodSync(buildDir, 0o555);
    const dir = path.join(this.root, meta.key);
    // A template for this key already there (a concurrent init) wins; ours goes.
    try {
      fs.renameSync(buildDir, dir);
    } catch (e) {
      removeDir(buildDir);
      if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return { dir, memoryFile: path.join(dir, MEMORY_FILE), stateFile: path.join(dir, STATE_FILE), meta };
  }

  /**
   * Removes every template and leftover build directory. Running clones keep their RAM: they
   * map the file, and an unlinked file lives on until its last mapping goes.
   */
  destroy(): string[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.root);
    } catch {
      return [];
    }
    const removed: string[] = [];
    for (const n of names) {
      if (!KEY_RE.test(n) && !n.startsWith('.build-')) continue;
      removeDir(path.join(this.root, n));
      removed.push(n);
    }
    return removed;
  }
}

export function removeDir(dir: string): void {
  try {
    fs.chmodSync(dir, 0o700);
  } catch {
    /* gone */
  }
  fs.rmSync(dir, { recursive: true, force: true });
}
