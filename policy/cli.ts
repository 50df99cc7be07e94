// `katats policy ...`: the engine on the command line, shaped like OPA's.
//   katats policy eval [-d FILE|DIR]... [-i INPUT] [--v0-compatible] [--strict-builtin-errors] [--explain] QUERY
//       prints {"result":[{"expressions":[{"value","text","location"}],"bindings"}]} or {} when undefined
//   katats policy test [--v0-compatible] [-v] FILE|DIR...
//       runs every test_* rule: PASS/FAIL per rule; exit 0 when all pass, 2 when one fails
//   katats policy gen ...   (gen/cli.ts) a policy from a Kubernetes manifest and its images
//   katats policy explain ... (explain-cli.ts) an agent's logged denials replayed against a policy
// Data files (data.json, data.yaml) in a directory are placed at the directory's path under data,
// as OPA places them; .rego files are modules; print() output goes to stderr.
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { RegoVersion } from './ast.js';
import { genCommand, GEN_USAGE } from './gen/cli.js';
import { explainCommand, EXPLAIN_USAGE } from './explain-cli.js';
import { Policy, PolicyError, describeFailure, toJSON, type ModuleSource } from './index.js';
import { parseJSON } from './json.js';
import { RObject, RSet, fromJS, type Value } from './values.js';

export interface CliIO {
  out: (s: string) => void;
  err: (s: string) => void;
}

const USAGE = `usage: katats policy eval [-d FILE|DIR]... [-i INPUT] [--v0-compatible] [--strict-builtin-errors] [--explain] QUERY
       katats policy test [--v0-compatible] [-v] FILE|DIR...
${GEN_USAGE.replace(/^usage: /, '       ')}
${EXPLAIN_USAGE.replace(/^usage: /, '       ')}`;

interface Loaded {
  modules: ModuleSource[];
  data: RObject;
}

function readDoc(file: string): Value {
  const text = fs.readFileSync(file, 'utf8');
  if (/\.ya?ml$/.test(file)) return fromJS(parseYaml(text, { intAsBigInt: true, maxAliasCount: 100 }));
  return parseJSON(text, file);
}

function mergeInto(target: RObject, at: string[], v: Value, file: string): void {
  let cur = target;
  for (const k of at) {
    let next = cur.get(k);
    if (!(next instanceof RObject)) {
      next = new RObject();
      cur.set(k, next);
    }
    cur = next;
  }
  if (!(v instanceof RObject)) {
    if (at.length === 0) throw new PolicyError('input_error', `${file}: data at the root must be an object`);
    const parent = at.slice(0, -1).reduce<RObject>((o, k) => o.get(k) as RObject, target);
    parent.set(at[at.length - 1]!, v);
    return;
  }
  for (const [k, x] of v.entries()) {
    const prev = cur.get(k);
    if (prev instanceof RObject && x instanceof RObject) mergeInto(cur, [k as string], x, file);
    else cur.set(k, x);
  }
}

export function loadPaths(paths: string[]): Loaded {
  const out: Loaded = { modules: [], data: new RObject() };
  const visit = (p: string, root: string | null) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      for (const e of fs.readdirSync(p).sort()) visit(path.join(p, e), root ?? p);
      return;
    }
    if (p.endsWith('.rego')) {
      out.modules.push({ file: p, text: fs.readFileSync(p, 'utf8') });
      return;
    }
    const base = path.basename(p);
    const isData = root ? /^data\.(json|ya?ml)$/.test(base) : /\.(json|ya?ml)$/.test(base);
    if (!isData) return;
    const at = root ? path.relative(root, path.dirname(p)).split(path.sep).filter((x) => x !== '') : [];
    mergeInto(out.data, at, readDoc(p), p);
  };
  for (const p of paths) visit(p, null);
  return out;
}

/** JSON with two-space indents: plain objects keep their key order, Rego values are canonical. */
export function pretty(x: unknown, indent = ''): string {
  const inner = indent + '  ';
  if (x instanceof RObject || x instanceof RSet || typeof x === 'bigint') {
    return toJSON(x as Value, 2).replace(/\n/g, '\n' + indent);
  }
  if (Array.isArray(x)) {
    if (x.length === 0) return '[]';
    return '[\n' + x.map((v) => inner + pretty(v, inner)).join(',\n') + '\n' + indent + ']';
  }
  if (x !== null && typeof x === 'object') {
    const es = Object.entries(x);
    if (es.length === 0) return '{}';
    return '{\n' + es.map(([k, v]) => inner + JSON.stringify(k) + ': ' + pretty(v, inner)).join(',\n') + '\n' + indent + '}';
  }
  return JSON.stringify(x);
}

function errorJSON(e: unknown): string {
  if (e instanceof PolicyError) {
    const err: Record<string, unknown> = { message: e.detail, code: e.code };
    if (e.location) err.location = e.location;
    return JSON.stringify({ errors: [err] }, null, 2);
  }
  return JSON.stringify({ errors: [{ message: (e as Error).message }] }, null, 2);
}

async function evalCommand(args: string[], io: CliIO): Promise<number> {
  const dataPaths: string[] = [];
  let inputPath: string | undefined;
  let version: RegoVersion = 'v1';
  let strict = false;
  let explain = false;
  let query: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-d' || a === '--data') dataPaths.push(args[++i] ?? '');
    else if (a === '-i' || a === '--input') inputPath = args[++i];
    else if (a === '--v0-compatible') version = 'v0';
    else if (a === '--v1-compatible') version = 'v1';
    else if (a === '--strict-builtin-errors') strict = true;
    else if (a === '--explain') explain = true;
    else if (a === '--format' || a === '-f') {
      const f = args[++i];
      if (f !== 'json') {
        io.err(`katats policy eval: only --format json is supported`);
        return 2;
      }
    } else if (a.startsWith('-') && a !== '-') {
      io.err(`katats policy eval: unknown flag ${a}\n${USAGE}`);
      return 2;
    } else if (query === undefined) query = a;
    else {
      io.err(`katats policy eval: one query only\n${USAGE}`);
      return 2;
    }
  }
  if (query === undefined) {
    io.err(USAGE);
    return 2;
  }
  try {
    const loaded = loadPaths(dataPaths);
    const policy = Policy.compile({ modules: loaded.modules, data: loaded.data }, { regoVersion: version, strictBuiltinErrors: strict });
    const input = inputPath === undefined ? undefined : readDoc(inputPath);
    const { results, decision } = policy.query(query, input, { regoVersion: version, explain });
    for (const p of decision.prints) io.err(p);
    if (results.length === 0) {
      if (explain && decision.explanation) for (const f of decision.explanation) io.err(`explain: ${describeFailure(f)}`);
      io.out('{}');
      return 0;
    }
    // keys in OPA's order (expressions, then bindings; value, text, location)
    const result = {
      result: results.map((r) => ({
        expressions: r.expressions.map((e) => ({ value: e.value, text: e.text, location: { row: e.location.row, col: e.location.col } })),
        ...(Object.keys(r.bindings).length > 0 ? { bindings: RObject.of(Object.entries(r.bindings)) } : {}),
      })),
    };
    io.out(pretty(result));
    return 0;
  } catch (e) {
    io.out(errorJSON(e));
    return 1;
  }
}

async function testCommand(args: string[], io: CliIO): Promise<number> {
  let version: RegoVersion = 'v1';
  let verbose = false;
  const paths: string[] = [];
  for (const a of args) {
    if (a === '--v0-compatible') version = 'v0';
    else if (a === '-v' || a === '--verbose') verbose = true;
    else if (a.startsWith('-')) {
      io.err(`katats policy test: unknown flag ${a}\n${USAGE}`);
      return 2;
    } else paths.push(a);
  }
  if (paths.length === 0) {
    io.err(USAGE);
    return 2;
  }
  let policy: Policy;
  try {
    const loaded = loadPaths(paths);
    policy = Policy.compile({ modules: loaded.modules, data: loaded.data }, { regoVersion: version });
  } catch (e) {
    io.err(e instanceof Error ? e.message : String(e));
    return 1;
  }
  const tests: { path: string; file: string }[] = [];
  const seen = new Set<string>();
  for (const m of policy.modules) {
    for (const r of m.rules) {
      const head = r.head.ref[0];
      if (r.head.args || r.head.ref.length !== 1 || head?.type !== 'var' || !head.name.startsWith('test_')) continue;
      const p = ['data', ...m.package, head.name].join('.');
      if (seen.has(p)) continue;
      seen.add(p);
      tests.push({ path: p, file: m.file });
    }
  }
  let passed = 0;
  let failed = 0;
  let errors = 0;
  for (const t of tests) {
    const t0 = performance.now();
    try {
      const d = policy.evaluate(t.path, undefined, { explain: true });
      const ms = (performance.now() - t0).toFixed(1);
      if (d.value !== undefined && d.value !== false) {
        passed++;
        if (verbose) io.out(`${t.path}: PASS (${ms}ms)`);
      } else {
        failed++;
        io.out(`${t.path}: FAIL (${ms}ms)`);
        for (const p of d.prints) io.out(`  ${p}`);
        for (const f of d.explanation ?? []) io.out(`  because ${describeFailure(f)}`);
      }
    } catch (e) {
      errors++;
      io.out(`${t.path}: ERROR\n  ${(e as Error).message}`);
    }
  }
  const total = tests.length;
  io.out('-'.repeat(80));
  if (passed > 0) io.out(`PASS: ${passed}/${total}`);
  if (failed > 0) io.out(`FAIL: ${failed}/${total}`);
  if (errors > 0) io.out(`ERROR: ${errors}/${total}`);
  if (total === 0) io.out('no tests found');
  return failed + errors > 0 ? 2 : 0;
}

export async function policyCommand(argv: string[], io: CliIO = { out: (s) => console.log(s), err: (s) => console.error(s) }): Promise<number> {
  const [sub, ...args] = argv;
  switch (sub) {
    case 'eval':
      return evalCommand(args, io);
    case 'test':
      return testCommand(args, io);
    case 'gen':
      return genCommand(args, io);
    case 'explain':
      return explainCommand(args, io);
    default:
      io.err(USAGE);
      return 2;
  }
}
