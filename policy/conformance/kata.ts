// Runs regorus's Kata corpus (tests/kata/data/<case>/{policy.rego, inputs.txt, outputs.json,
// prints.json}): each logged agent request is evaluated as data.agent_policy.<Request> and both the
// decision and the print() lines must equal what regorus recorded. The corpus is not part of this
// repository; point the runner at a checkout:
//   npx tsx policy/conformance/kata.ts <regorus>/tests/kata/data [--case NAME] [--no-prints] [--verbose]
import fs from 'node:fs';
import path from 'node:path';
import { Policy, canonical, parseJSON } from '../index.js';

interface CaseResult {
  name: string;
  queries: number;
  valueFailures: number;
  printFailures: number;
  errors: number;
  compileMs: number;
  evalMs: number;
  firstProblem?: string;
}

function normalize(lines: string[]): string[] {
  return lines.map((p) => p.replace(/\\/g, '/').replace(/\/\//g, '/').replace(/\r\n/g, '\n'));
}

export function runKataCase(dir: string, label: string, prints = true): CaseResult {
  const name = path.basename(dir);
  const res: CaseResult = { name, queries: 0, valueFailures: 0, printFailures: 0, errors: 0, compileMs: 0, evalMs: 0 };
  const text = fs.readFileSync(path.join(dir, 'policy.rego'), 'utf8');
  const t0 = performance.now();
  let policy: Policy;
  try {
    policy = Policy.compile({ modules: [{ file: label, text }] }, { regoVersion: 'v0' });
  } catch (e) {
    res.errors++;
    res.firstProblem = `compile: ${(e as Error).message}`;
    return res;
  }
  res.compileMs = performance.now() - t0;
  const outputs = JSON.parse(fs.readFileSync(path.join(dir, 'outputs.json'), 'utf8')) as unknown[];
  const expectedPrints = JSON.parse(fs.readFileSync(path.join(dir, 'prints.json'), 'utf8')) as string[][];
  const lines = fs.readFileSync(path.join(dir, 'inputs.txt'), 'utf8').split('\n');
  let i = 0;
  for (const [lineno, raw] of lines.entries()) {
    let line = raw.trim();
    if (line === '') continue;
    line = line.replace(/"ep":/g, '');
    line = line.slice(0, -1);
    const req = parseJSON(line, `inputs.txt:${lineno + 1}`) as unknown as [string, unknown];
    const rule = `data.agent_policy.${(req as unknown as string[])[0]}`;
    const input = (req as unknown as unknown[])[1];
    res.queries++;
    const want = outputs[i];
    const wantPrints = expectedPrints[i] ?? [];
    i++;
    try {
      const t1 = performance.now();
      const d = policy.evaluate(rule, input, { prints });
      res.evalMs += performance.now() - t1;
      const got = d.value === undefined ? 'undefined' : canonical(d.value);
      const exp = want === undefined ? 'undefined' : JSON.stringify(want);
      if (got !== exp) {
        res.valueFailures++;
        res.firstProblem ??= `line ${lineno + 1} ${rule}: got ${got.slice(0, 200)}, want ${exp.slice(0, 200)}`;
      }
      const gp = normalize(d.prints);
      const wp = normalize(wantPrints);
      if (prints && gp.length !== wp.length || gp.some((p, j) => p !== wp[j])) {
        res.printFailures++;
        if (!res.firstProblem) {
          const j = gp.findIndex((p, k) => p !== wp[k]);
          const at = j < 0 ? Math.min(gp.length, wp.length) : j;
          res.firstProblem = `line ${lineno + 1} ${rule}: print ${at} of ${wp.length} (got ${gp.length}):\n  got  ${gp[at]?.slice(0, 300)}\n  want ${wp[at]?.slice(0, 300)}`;
        }
      }
    } catch (e) {
      res.errors++;
      res.firstProblem ??= `line ${lineno + 1} ${rule}: ${(e as Error).message}`;
    }
  }
  return res;
}

function main(argv: string[]): number {
  const dataDir = argv.find((a) => !a.startsWith('--'));
  if (!dataDir) {
    console.error('usage: npx tsx policy/conformance/kata.ts <regorus>/tests/kata/data [--case NAME] [--verbose]');
    return 2;
  }
  const only = argv.includes('--case') ? argv[argv.indexOf('--case') + 1] : undefined;
  const verbose = argv.includes('--verbose');
  // --no-prints: decisions only, evaluated as the agent does without gathering print output
  const prints = !argv.includes('--no-prints');
  // print() lines carry the policy's path as regorus was given it: tests/kata/data/<case>/policy.rego
  const root = path.resolve(dataDir, '..', '..', '..');
  const cases = fs
    .readdirSync(dataDir)
    .filter((d) => fs.existsSync(path.join(dataDir, d, 'policy.rego')))
    .filter((d) => !only || d === only)
    .sort();
  let total = 0;
  let passed = 0;
  let casesPassed = 0;
  for (const c of cases) {
    const dir = path.join(dataDir, c);
    const r = runKataCase(dir, path.relative(root, path.join(dir, 'policy.rego')), prints);
    const ok = r.queries - Math.max(r.valueFailures, r.printFailures) - r.errors;
    const bad = r.valueFailures + r.printFailures + r.errors;
    total += r.queries;
    passed += r.queries - countFailedQueries(r);
    if (bad === 0) casesPassed++;
    console.log(
      `${bad === 0 ? 'PASS' : 'FAIL'} ${c.padEnd(24)} ${r.queries} queries, ${r.valueFailures} wrong values, ${r.printFailures} wrong prints, ${r.errors} errors; compile ${r.compileMs.toFixed(1)} ms, eval ${(r.evalMs / Math.max(1, r.queries)).toFixed(3)} ms/query`,
    );
    void ok;
    if (r.firstProblem && (verbose || bad > 0)) console.log(`     ${r.firstProblem}`);
  }
  console.log(`kata corpus: ${casesPassed}/${cases.length} cases, ${passed}/${total} queries passed (value and prints)`);
  console.log(`${passed} passed, ${total - passed} failed`);
  return passed === total ? 0 : 1;
}

function countFailedQueries(r: CaseResult): number {
  return Math.min(r.queries, Math.max(r.valueFailures, r.printFailures) + r.errors);
}

if (process.argv[1] && path.resolve(process.argv[1]).endsWith(path.join('conformance', 'kata.ts'))) {
  process.exitCode = main(process.argv.slice(2));
}
