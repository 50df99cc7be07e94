// Runs OPA's YAML conformance suite (open-policy-agent/opa test/cases/testdata/{v0,v1}) against this
// engine and reports pass/fail per folder. The suite is not part of this repository:
//   npx tsx policy/conformance/opa.ts <dir-with-folders-of-yaml> [--v0] [--verbose] [--only FOLDER]
// Each file has `cases:` with note, query, modules, data, input or input_term, and the expectation:
// want_result (bindings per result), want_defined, want_error_code / want_error (with strict_error
// for builtin errors), sort_bindings.
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Policy, PolicyError, canonical, fromJS, type Value } from '../index.js';
import { RObject } from '../values.js';

interface Case {
  note?: string;
  query?: string;
  modules?: string[];
  data?: unknown;
  input?: unknown;
  input_term?: string;
  want_result?: Record<string, unknown>[];
  want_defined?: boolean;
  want_error_code?: string;
  want_error?: string;
  strict_error?: boolean;
  sort_bindings?: boolean;
  skip?: boolean;
}

type Outcome = { ok: true } | { ok: false; why: string } | { skipped: string };

function toValue(x: unknown): Value {
  return fromJS(x);
}

function sortArrays(v: Value): Value {
  if (Array.isArray(v)) return [...v].sort((a, b) => (canonical(a) < canonical(b) ? -1 : canonical(a) > canonical(b) ? 1 : 0));
  return v;
}

export function runCase(c: Case, version: 'v0' | 'v1'): Outcome {
  if (c.skip) return { skipped: 'marked skip' };
  if (c.query === undefined) return { skipped: 'no query' };
  const wantsError = c.want_error_code !== undefined || c.want_error !== undefined;
  const checkError = (e: unknown): Outcome => {
    if (!(e instanceof PolicyError)) return { ok: false, why: `internal error: ${(e as Error).stack ?? String(e)}` };
    if (!wantsError) return { ok: false, why: `unexpected error: ${e.message}` };
    if (c.want_error_code !== undefined && e.code !== c.want_error_code) return { ok: false, why: `error code ${e.code}, want ${c.want_error_code}: ${e.message}` };
    if (c.want_error !== undefined && !e.message.includes(c.want_error)) return { ok: false, why: `error ${JSON.stringify(e.message)} does not contain ${JSON.stringify(c.want_error)}` };
    return { ok: true };
  };
  let policy: Policy;
  try {
    policy = Policy.compile({ modules: (c.modules ?? []).map((text, i) => ({ file: `test-${i}.rego`, text })), data: c.data ?? {} }, { regoVersion: version, strictBuiltinErrors: c.strict_error ?? false });
  } catch (e) {
    return checkError(e);
  }
  let input: Value | undefined;
  try {
    if (c.input_term !== undefined) {
      const r = policy.query(`__input__ := ${c.input_term}`, undefined, { regoVersion: version });
      input = r.results[0]?.bindings.__input__;
    } else if (c.input !== undefined) input = toValue(c.input);
  } catch (e) {
    return checkError(e);
  }
  let results: Record<string, Value>[];
  try {
    const r = policy.query(c.query, input, { regoVersion: version, strictBuiltinErrors: c.strict_error ?? false, prints: false });
    results = r.results.map((x) => x.bindings);
  } catch (e) {
    return checkError(e);
  }
  if (wantsError) return { ok: false, why: `no error, want ${c.want_error_code ?? ''} ${c.want_error ?? ''}` };
  if (c.want_defined !== undefined) {
    return (results.length > 0) === c.want_defined ? { ok: true } : { ok: false, why: `defined=${results.length > 0}, want ${c.want_defined}` };
  }
  if (c.want_result === undefined) return { skipped: 'no expectation' };
  const norm = (b: Record<string, Value>) => {
    const o = new RObject();
    for (const [k, v] of Object.entries(b)) o.set(k, c.sort_bindings ? sortArrays(v) : v);
    return canonical(o);
  };
  const got = results.map(norm).sort();
  const want = c.want_result.map((w) => norm(Object.fromEntries(Object.entries(w ?? {}).map(([k, v]) => [k, toValue(v)])))).sort();
  if (got.length === want.length && got.every((g, i) => g === want[i])) return { ok: true };
  return { ok: false, why: `got ${clip(JSON.stringify(got))}, want ${clip(JSON.stringify(want))}` };
}

function clip(s: string): string {
  return s.length > 400 ? s.slice(0, 400) + '…' : s;
}

function yamlFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
    .sort()
    .map((f) => path.join(dir, f));
}

function main(argv: string[]): number {
  const dir = argv.find((a) => !a.startsWith('--') && argv[argv.indexOf(a) - 1] !== '--only');
  if (!dir) {
    console.error('usage: npx tsx policy/conformance/opa.ts <suite-dir> [--v0] [--verbose] [--only FOLDER]');
    return 2;
  }
  const version = argv.includes('--v0') ? 'v0' : 'v1';
  const verbose = argv.includes('--verbose');
  const only = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined;
  // A directory of folders, or one folder of YAML files.
  const folders = fs.readdirSync(dir).some((f) => f.endsWith('.yaml'))
    ? [dir]
    : fs
        .readdirSync(dir)
        .map((f) => path.join(dir, f))
        .filter((f) => fs.statSync(f).isDirectory())
        .filter((f) => !only || path.basename(f) === only)
        .sort();
  let pass = 0;
  let fail = 0;
  let skip = 0;
  const lines: string[] = [];
  for (const folder of folders) {
    let fp = 0;
    let ff = 0;
    let fs_ = 0;
    const problems: string[] = [];
    for (const file of yamlFiles(folder)) {
      let doc: { cases?: Case[] };
      try {
        doc = parseYaml(fs.readFileSync(file, 'utf8'), { intAsBigInt: true, maxAliasCount: 1000 }) as { cases?: Case[] };
      } catch (e) {
        ff++;
        problems.push(`${path.basename(file)}: unreadable YAML: ${(e as Error).message.split('\n')[0]}`);
        continue;
      }
      for (const c of doc.cases ?? []) {
        let r: Outcome;
        try {
          r = runCase(c, version);
        } catch (e) {
          r = { ok: false, why: `runner crash: ${(e as Error).message}` };
        }
        if ('skipped' in r) fs_++;
        else if (r.ok) fp++;
        else {
          ff++;
          problems.push(`${path.basename(file)} ${c.note ?? ''}: ${r.why}`);
        }
      }
    }
    pass += fp;
    fail += ff;
    skip += fs_;
    const total = fp + ff;
    lines.push(`${ff === 0 ? 'PASS' : 'FAIL'} ${path.basename(folder).padEnd(34)} ${String(fp).padStart(4)}/${String(total).padEnd(4)} ${total ? ((100 * fp) / total).toFixed(0).padStart(3) : '  -'}%${fs_ ? ` (${fs_} skipped)` : ''}`);
    if (verbose || (ff > 0 && folders.length === 1)) for (const p of problems) lines.push(`     ${p}`);
    else if (ff > 0) lines.push(`     ${problems[0]}`);
  }
  for (const l of lines) console.log(l);
  const total = pass + fail;
  console.log(`opa conformance (${version}): ${folders.length} folders, ${pass}/${total} cases passed (${total ? ((100 * pass) / total).toFixed(1) : 0}%), ${skip} skipped`);
  console.log(`${pass} passed, ${fail} failed`);
  return fail === 0 ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]).endsWith(path.join('conformance', 'opa.ts'))) {
  process.exitCode = main(process.argv.slice(2));
}

export { toValue, RObject };
