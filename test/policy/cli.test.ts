// `katats policy eval` and `katats policy test`: output shaped like opa eval --format json and
// opa test, data files placed by directory, errors as JSON with code and location.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { policyCommand } from '../../policy/cli.js';

let dir: string;

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await policyCommand(args, { out: (s) => out.push(s), err: (s) => err.push(s) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'katats-policy-cli-'));
  fs.mkdirSync(path.join(dir, 'bundle', 'roles'), { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'bundle', 'authz.rego'),
    ['package authz', 'import rego.v1', 'allow if data.roles.admins[_] == input.user', 'test_admin if allow with input as {"user": "root"}', 'test_other if not allow with input as {"user": "bob"}', 'test_wrong if allow with input as {"user": "bob"}', 'who := input.user if print("who:", input.user)'].join('\n'),
  );
  fs.writeFileSync(path.join(dir, 'bundle', 'roles', 'data.json'), '{"admins": ["root"]}');
  fs.writeFileSync(path.join(dir, 'input.json'), '{"user": "root"}');
  fs.writeFileSync(path.join(dir, 'bad.rego'), 'package bad\np if {\n');
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('katats policy eval', () => {
  it('prints results with expressions, text, location and bindings', async () => {
    const r = await run(['eval', '-d', path.join(dir, 'bundle'), '-i', path.join(dir, 'input.json'), '--format', 'json', 'data.authz.allow = x']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({
      result: [{ expressions: [{ value: true, text: 'data.authz.allow = x', location: { row: 1, col: 1 } }], bindings: { x: true } }],
    });
    expect(r.out.indexOf('"value"')).toBeLessThan(r.out.indexOf('"text"')); // OPA's key order
  });

  it('prints {} when the query is undefined, and print() output on stderr', async () => {
    const r = await run(['eval', '-d', path.join(dir, 'bundle'), 'data.authz.allow']);
    expect(r.out).toBe('{}');
    const w = await run(['eval', '-d', path.join(dir, 'bundle'), '-i', path.join(dir, 'input.json'), 'data.authz.who']);
    expect(JSON.parse(w.out).result[0].expressions[0].value).toBe('root');
    expect(w.err).toMatch(/authz\.rego:7: who: root/);
  });

  it('reports a parse error as JSON with code and location, exit 1', async () => {
    const r = await run(['eval', '-d', path.join(dir, 'bad.rego'), 'data.bad.p']);
    expect(r.code).toBe(1);
    const e = JSON.parse(r.out).errors[0];
    expect(e.code).toBe('rego_parse_error');
    expect(e.location).toEqual({ file: path.join(dir, 'bad.rego'), row: 3, col: 1 });
  });

  it('is dispatched by the katats command', () => {
    const bin = path.join(import.meta.dirname, '..', '..', 'shim', 'cli', 'katats.ts');
    const out = execFileSync('npx', ['tsx', bin, 'policy', 'eval', '-i', path.join(dir, 'input.json'), 'input.user'], { encoding: 'utf8', timeout: 60_000 });
    expect(JSON.parse(out).result[0].expressions[0].value).toBe('root');
  });
});

describe('katats policy test', () => {
  it('runs test_ rules, reports PASS/FAIL per rule and fails the exit code', async () => {
    const r = await run(['test', '-v', path.join(dir, 'bundle')]);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/^data\.authz\.test_admin: PASS/m);
    expect(r.out).toMatch(/^data\.authz\.test_other: PASS/m);
    expect(r.out).toMatch(/^data\.authz\.test_wrong: FAIL/m);
    expect(r.out).toMatch(/because data\.authz\.allow: data\.roles\.admins\[_\] == input\.user/);
    expect(r.out).toMatch(/^PASS: 2\/3$/m);
    expect(r.out).toMatch(/^FAIL: 1\/3$/m);
  });
});
