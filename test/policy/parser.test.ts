// The parser: both syntaxes, every construct's shape, and errors with file, line and column.
import { describe, expect, it } from 'vitest';
import { parseModule, parseQuery } from '../../policy/parser.js';
import { PolicyError } from '../../policy/errors.js';

function parseErr(src: string, v: 'v0' | 'v1' = 'v1'): PolicyError {
  try {
    parseModule(src, 'bad.rego', { regoVersion: v });
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return e as PolicyError;
  }
  throw new Error('parsed');
}

describe('policy parser', () => {
  it('reads a v0 module: package, imports, defaults, complete, set, object and function rules, else', () => {
    const m = parseModule(
      [
        'package a.b',
        'import future.keywords.in',
        'import data.lib.x as y',
        'default allow := false',
        'allow { input.x == 1 }',
        'names[n] { n := input.names[_] }',
        'byname[n] = v { v := input.m[n] }',
        'f(x) = y { y := x + 1 } else = 0 { true }',
        'p = 1 { false } { true }',
      ].join('\n'),
      'm.rego',
      { regoVersion: 'v0' },
    );
    expect(m.package).toEqual(['a', 'b']);
    expect(m.imports.map((i) => i.alias ?? '')).toEqual(['', 'y']);
    const byName = (n: string) => m.rules.filter((r) => r.head.ref[0]!.type === 'var' && r.head.ref[0]!.name === n);
    expect(byName('allow').map((r) => r.isDefault)).toEqual([true, false]);
    expect(byName('names')[0]!.head.member?.type).toBe('var'); // v0 p[x] is a set
    expect(byName('byname')[0]!.head.ref).toHaveLength(2);
    expect(byName('f')[0]!.bodies.map((b) => b.isElse)).toEqual([false, true]);
    expect(byName('p')).toHaveLength(2); // two bodies, two rules
  });

  it('reads v1: if, contains, ref heads, every, some-in, membership, comprehensions', () => {
    const m = parseModule(
      [
        'package t',
        'deny contains msg if {',
        '  some i, c in input.containers',
        '  every p in c.ports { p < 1024 }',
        '  not "x" in c.names',
        '  msg := sprintf("%d", [i])',
        '}',
        'a.b[k].c := v if { some k, v in {"x": 1} }',
        's := {x | x := [1, 2][_]}',
        'o := {k: v | some k, v in {"a": 1}}',
        'arr := [x * 2 | some x in [1, 2]; x > 1]',
        'q if input.x',
      ].join('\n'),
      'v1.rego',
    );
    const deny = m.rules[0]!;
    expect(deny.head.member).toBeDefined();
    expect(deny.bodies[0]!.body.map((l) => l.kind)).toEqual(['somein', 'every', 'expr', 'expr']);
    expect(deny.bodies[0]!.body[2]!.negated).toBe(true);
    const refHead = m.rules[1]!;
    expect(refHead.head.ref.map((t) => t.type)).toEqual(['var', 'scalar', 'var', 'scalar']);
    expect(m.rules[2]!.head.value?.type).toBe('setcompr');
    expect(m.rules[3]!.head.value?.type).toBe('objcompr');
    expect(m.rules[4]!.head.value?.type).toBe('arraycompr');
    expect(m.rules[5]!.bodies[0]!.body).toHaveLength(1);
  });

  it('keeps operator precedence: * over +, + over ==, == over in; unary minus on literals', () => {
    const [lit] = parseQuery('1 + 2 * 3 == 7', 'q');
    const e = (lit as { expr: { type: string; fn: { name: string }; args: { fn?: { name: string } }[] } }).expr;
    expect(e.fn.name).toBe('equal');
    expect(e.args[0]!.fn!.name).toBe('plus');
    const [m] = parseQuery('x == y in z', 'q');
    expect((m as { expr: { fn: { name: string } } }).expr.fn.name).toBe('internal.member_2');
    const [n] = parseQuery('x := -1', 'q');
    expect((n as { expr: { args: { value: unknown }[] } }).expr.args[1]!.value).toBe(-1);
  });

  it('keeps big integers exact in literals', () => {
    const [lit] = parseQuery('x := 28857836529306024611913', 'q');
    expect((lit as { expr: { args: { value: unknown }[] } }).expr.args[1]!.value).toBe(28857836529306024611913n);
  });

  it('separates literals by newlines and semicolons, not inside brackets', () => {
    expect(parseQuery('a := 1; b := 2\nc := [1,\n 2]', 'q')).toHaveLength(3);
    expect(parseQuery('f(1,\n  2)', 'q')).toHaveLength(1);
  });

  it('names file, line and column in parse errors', () => {
    const e = parseErr('package p\n\nallow if {\n  x := \n}\n');
    expect(e.code).toBe('rego_parse_error');
    expect(e.location).toMatchObject({ file: 'bad.rego', row: 5 });
    expect(e.message).toMatch(/^bad\.rego:5:\d+: rego_parse_error/);
    expect(parseErr('package p\nx := "abc\n').location).toMatchObject({ row: 2, col: 6 });
    expect(parseErr('package p\np if {}').message).toMatch(/empty body/);
  });

  it('requires if/contains in v1 and accepts their absence in v0', () => {
    expect(parseErr('package p\nallow { true }').message).toMatch(/`if` keyword is required/);
    expect(() => parseModule('package p\nallow { true }', 'v0.rego', { regoVersion: 'v0' })).not.toThrow();
    // import rego.v1 switches a v0 module to v1 rules
    expect(parseErr('package p\nimport rego.v1\nallow { true }', 'v0').message).toMatch(/`if` keyword is required/);
  });

  it('bounds nesting depth instead of overflowing the stack', () => {
    const deep = 'package p\nx := ' + '['.repeat(100_000) + ']'.repeat(100_000);
    const e = parseErr(deep);
    expect(e.message).toMatch(/nesting deeper than 128/);
    const calls = 'package p\nx := ' + 'f('.repeat(50_000) + '1' + ')'.repeat(50_000);
    expect(parseErr(calls).message).toMatch(/nesting deeper/);
  });

  it('rejects illegal tokens and unterminated strings with their position', () => {
    expect(parseErr('package p\nx := 1 @ 2').message).toMatch(/2:8: rego_parse_error: illegal token/);
    expect(parseErr('package p\nx := `raw').code).toBe('rego_parse_error');
  });
});
