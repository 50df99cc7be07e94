// The evaluator, construct by construct: each case is a small policy written here and the value
// OPA defines for it.
import { describe, expect, it } from 'vitest';
import { Policy, PolicyError, canonical, type Value } from '../../policy/index.js';

function policy(text: string | string[], data?: unknown, v: 'v0' | 'v1' = 'v1'): Policy {
  const texts = Array.isArray(text) ? text : [text];
  return Policy.compile({ modules: texts.map((t, i) => ({ file: `m${i}.rego`, text: t })), data }, { regoVersion: v });
}

/** The JSON of data.t.<rule>, or 'undefined'. */
function ev(text: string | string[], rule = 'p', input?: unknown, data?: unknown, v: 'v0' | 'v1' = 'v1'): string {
  const d = policy(text, data, v).evaluate(`data.t.${rule}`, input);
  return d.value === undefined ? 'undefined' : canonical(d.value);
}

function evErr(text: string | string[], rule = 'p', input?: unknown): PolicyError {
  try {
    policy(text).evaluate(`data.t.${rule}`, input);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return e as PolicyError;
  }
  throw new Error('no error');
}

describe('policy evaluation: rules', () => {
  it('complete rules, defaults and undefined', () => {
    expect(ev('package t\np := 7')).toBe('7');
    expect(ev('package t\np if input.x == 1', 'p', { x: 1 })).toBe('true');
    expect(ev('package t\np if input.x == 1', 'p', { x: 2 })).toBe('undefined');
    expect(ev('package t\ndefault p := false\np if input.x == 1', 'p', {})).toBe('false');
    expect(ev('package t\np := input.missing')).toBe('undefined');
  });

  it('else chains take the first body that holds', () => {
    const src = 'package t\np := "a" if input.x == 1\nelse := "b" if input.x == 2\nelse := "c"';
    expect(ev(src, 'p', { x: 1 })).toBe('"a"');
    expect(ev(src, 'p', { x: 2 })).toBe('"b"');
    expect(ev(src, 'p', { x: 3 })).toBe('"c"');
  });

  it('two values for a complete rule are a conflict', () => {
    const e = evErr('package t\np := 1 if true\np := 2 if true');
    expect(e.code).toBe('eval_conflict_error');
    expect(e.message).toMatch(/complete rules must not produce multiple outputs/);
    // the same value twice is fine
    expect(ev('package t\np := 1 if true\np := 1 if true')).toBe('1');
  });

  it('partial sets and objects, v0 and v1 forms', () => {
    expect(ev('package t\np contains x if some x in [3, 1, 3]')).toBe('[1,3]');
    expect(ev('package t\np[x] { x := [2, 1][_] }', 'p', undefined, undefined, 'v0')).toBe('[1,2]');
    expect(ev('package t\np[k] := v if some k, v in {"a": 1, "b": 2}')).toBe('{"a":1,"b":2}');
    expect(ev('package t\np[k] = v { v := {"a": 1}[k] }', 'p', undefined, undefined, 'v0')).toBe('{"a":1}');
    expect(ev('package t\np contains 1 if false')).toBe('[]');
    expect(evErr('package t\np[k] := v if { some k, v in [1, 2]; k == 0 }\np[0] := 9 if true').code).toBe('eval_conflict_error');
  });

  it('ref heads build nested objects', () => {
    const src = 'package t\na.b[k].c := v if some k, v in {"x": 1, "y": 2}\na.d := true';
    expect(ev(src, 'a')).toBe('{"b":{"x":{"c":1},"y":{"c":2}},"d":true}');
    expect(ev(src, 'a.b.x')).toBe('{"c":1}');
  });

  it('functions: several bodies are alternatives, conflicting outputs are an error', () => {
    const src = 'package t\nf(x) := "neg" if x < 0\nf(x) := "pos" if x > 0\nf(0) := "zero"\np := [f(-1), f(0), f(3)]';
    expect(ev(src)).toBe('["neg","zero","pos"]');
    expect(evErr('package t\nf(x) := 1 if x > 0\nf(x) := 2 if x > 1\np := f(5)').message).toMatch(/functions must not produce multiple outputs/);
    // a function whose bodies all fail is undefined, and so is what uses it
    expect(ev('package t\nf(x) if x > 10\np := 1 if f(1)')).toBe('undefined');
    // default functions
    expect(ev('package t\ndefault f(_) := "d"\nf(x) := "one" if x == 1\np := [f(1), f(2)]')).toBe('["one","d"]');
    // destructuring parameters
    expect(ev('package t\nf([a, b]) := a + b\np := f([1, 2])')).toBe('3');
  });

  it('references with variables iterate over data (data.x[k].y)', () => {
    const data = { users: { alice: { role: 'admin' }, bob: { role: 'dev' } } };
    expect(ev('package t\np contains k if data.users[k].role == "admin"', 'p', undefined, data)).toBe('["alice"]');
    expect(ev('package t\np := {r | r := data.users[_].role}', 'p', undefined, data)).toBe('["admin","dev"]');
    // rules and base data meet at package level
    expect(ev(['package t\np := data.t.q', 'package t\nq := 2'], 'p')).toBe('2');
  });

  it('undefined propagates through refs, calls and comparisons', () => {
    expect(ev('package t\np if count(input.nope) >= 0', 'p', {})).toBe('undefined');
    expect(ev('package t\np if not input.nope', 'p', {})).toBe('true');
    expect(ev('package t\np := [input.a.b.c]', 'p', { a: 1 })).toBe('undefined');
  });
});

describe('policy evaluation: expressions', () => {
  it('some, some-in, every, not', () => {
    expect(ev('package t\np if { some x in [1, 2, 3]; x > 2 }')).toBe('true');
    expect(ev('package t\np := [k | some k, v in ["a", "b"]; v == "b"]')).toBe('[1]');
    expect(ev('package t\np if { some x; x = 1; x == 1 }')).toBe('true');
    expect(ev('package t\np if every x in [1, 2] { x > 0 }')).toBe('true');
    expect(ev('package t\np if every x in [1, -2] { x > 0 }')).toBe('undefined');
    expect(ev('package t\np if every x in [] { x > 0 }')).toBe('true');
    expect(ev('package t\np if every k, v in {"a": 1} { k == "a"; v == 1 }')).toBe('true');
    expect(ev('package t\np if not 1 in [2, 3]')).toBe('true');
    expect(ev('package t\np := 2 in {1, 2}')).toBe('true');
    expect(ev('package t\np := [x | x := [1, 2, 3][_]; not x == 2]')).toBe('[1,3]');
  });

  it('unification binds either side, destructures arrays and objects', () => {
    expect(ev('package t\np := [a, b] if [a, 2] = [1, b]')).toBe('[1,2]');
    expect(ev('package t\np := x if { {"k": x} = {"k": [1]} }')).toBe('[1]');
    expect(ev('package t\np := y if { [_, y] := ["a", "b"] }')).toBe('"b"');
    expect(ev('package t\np if { x := 1; x == 1.0 }')).toBe('true');
    expect(ev('package t\np if [1, 2] = [1, 3]')).toBe('undefined');
    expect(ev('package t\np := n if count([1, 2], n)')).toBe('2'); // output argument
  });

  it('a variable declared with := is in scope from its literal on (a comprehension before it has its own)', () => {
    expect(ev('package t\nxs := {"a", "b", "c"}\np := x if {\n  y := {x | xs[x]}\n  x := count(y)\n}')).toBe('3');
  });

  it('comprehensions: array, set, object; object keys must be unique', () => {
    expect(ev('package t\np := [x * 2 | some x in [1, 2]]')).toBe('[2,4]');
    expect(ev('package t\np := {x % 2 | some x in [1, 2, 3]}')).toBe('[0,1]');
    expect(ev('package t\np := {k: count(k) | some k in ["a", "bb"]}')).toBe('{"a":1,"bb":2}');
    expect(evErr('package t\np := {"k": x | some x in [1, 2]}').code).toBe('eval_conflict_error');
  });

  it('arithmetic with exact big integers and set operators', () => {
    expect(ev('package t\np := 9007199254740993 + 1')).toBe('9007199254740994');
    expect(ev('package t\np := 28857836529306024611913 * 2')).toBe('57715673058612049223826');
    expect(ev('package t\np := 7 / 2')).toBe('3.5');
    expect(ev('package t\np := 6 / 2')).toBe('3');
    expect(ev('package t\np := {1, 2, 3} - {2}')).toBe('[1,3]');
    expect(ev('package t\np := {1, 2} | {3}')).toBe('[1,2,3]');
    expect(ev('package t\np := {1, 2} & {2, 3}')).toBe('[2]');
    expect(ev('package t\np := 1 / 0')).toBe('undefined'); // builtin error → undefined (non-strict)
  });

  it('with replaces input, data, builtins and functions for one literal', () => {
    expect(ev('package t\nq := input.x\np := y if { y := q with input as {"x": 5} }')).toBe('5');
    expect(ev('package t\nq := input.a.b\np := y if { y := q with input.a.b as 6 }')).toBe('6');
    expect(ev('package t\nq := data.d.x\np := y if { y := q with data.d.x as 7 }', 'p', undefined, { d: { x: 1 } })).toBe('7');
    expect(ev('package t\nr := 1\nq := r\np := y if { y := q with r as 8 }')).toBe('8');
    expect(ev('package t\np := y if { y := count([1]) with count as 42 }')).toBe('42');
    expect(ev('package t\nf(x) := x\ng(x) := x * 10\np := y if { y := f(2) with f as g }')).toBe('20');
    expect(ev('package t\np := y if { y := upper("a") with upper as lower }')).toBe('"a"');
    // the override ends with the literal
    expect(ev('package t\nq := input.x\np := [a, b] if { a := q with input.x as 1; b := q }', 'p', { x: 2 })).toBe('[1,2]');
  });

  it('imports and packages', () => {
    const lib = 'package lib.util\ndouble(x) := x * 2\nlimit := 10';
    expect(ev([lib, 'package t\nimport data.lib.util\np := util.double(util.limit)'])).toBe('20');
    expect(ev([lib, 'package t\nimport data.lib.util as u\np := u.double(1)'])).toBe('2');
    expect(ev('package t\nimport input.user\np := user.name', 'p', { user: { name: 'n' } })).toBe('"n"');
  });

  it('v0 syntax with future keywords', () => {
    const src = 'package t\nimport future.keywords.in\nimport future.keywords.every\np { every x in input.xs { x in [1, 2] } }';
    expect(ev(src, 'p', { xs: [1, 2] }, undefined, 'v0')).toBe('true');
    expect(ev(src, 'p', { xs: [3] }, undefined, 'v0')).toBe('undefined');
  });

  it('gathers print output per evaluation with file:line, as regorus does', () => {
    const p = policy('package t\np if {\n  print("x =", input.x, [1, "a"], {"k": {1}})\n  print(input.nope)\n}');
    const d = p.evaluate('data.t.p', { x: 'v' });
    expect(d.value).toBe(true);
    expect(d.prints).toEqual(['m0.rego:3: x = v [1, "a"] {"k": {1}}', 'm0.rego:4: <undefined>']);
    expect(p.evaluate('data.t.p', { x: 1 }).prints[0]).toBe('m0.rego:3: x = 1 [1, "a"] {"k": {1}}');
    expect(p.evaluate('data.t.p', { x: 1 }, { prints: false }).prints).toEqual([]);
  });

  it('stops a constant rule at its first solution but enumerates everything else', () => {
    const p = policy('package t\np if { some x in [1, 2, 3]; print(x) }\nq := x if { some x in [1]; print(x) }\nc contains x if { some x in [1, 2]; print(x) }');
    expect(p.evaluate('data.t.p').prints).toEqual(['m0.rego:2: 1']);
    expect(p.evaluate('data.t.c').prints).toEqual(['m0.rego:4: 1', 'm0.rego:4: 2']);
  });
});

describe('policy compile errors', () => {
  const compileErr = (src: string): PolicyError => {
    try {
      policy(src);
    } catch (e) {
      return e as PolicyError;
    }
    throw new Error('compiled');
  };
  it('refuses unsafe variables, recursion, unknown functions and conflicting rule kinds', () => {
    expect(compileErr('package t\np if x > 1').code).toBe('rego_unsafe_var_error');
    expect(compileErr('package t\np if x > 1').message).toMatch(/m0\.rego:2:\d+: rego_unsafe_var_error: var x is unsafe/);
    expect(compileErr('package t\np if q\nq if p').code).toBe('rego_recursion_error');
    expect(compileErr('package t\np := nosuch(1)').code).toBe('rego_type_error');
    expect(compileErr('package t\np := count(1, 2, 3)').code).toBe('rego_type_error');
    expect(compileErr('package t\np := 1\np contains 2').code).toBe('rego_type_error');
    expect(compileErr('package t\nx := 1\np if { x := 2; x := 3 }').message).toMatch(/assigned above/);
    // v0-only builtins are refused in v1 modules, accepted in v0 ones
    expect(compileErr('package t\np := any([true])').message).toMatch(/deprecated built-in function calls in expression: any/);
    expect(ev('package t\np := any([true])', 'p', undefined, undefined, 'v0')).toBe('true');
  });
});

describe('policy evaluation limits', () => {
  it('stops a runaway evaluation at the step budget with a clear error', () => {
    const p = Policy.compile({ modules: [{ file: 'l.rego', text: 'package t\np := count([1 | numbers.range(1, 1000)[_]; numbers.range(1, 1000)[_]])' }] }, { limits: { maxSteps: 100_000 } });
    expect(() => p.evaluate('data.t.p')).toThrow(/limit_error: evaluation exceeded 100000 steps/);
  });

  it('bounds sizes: huge ranges and strings fail as limits, not as undefined', () => {
    const p = policy('package t\np := numbers.range(1, 100000000)\nq := concat("", [x | some x in numbers.range(1, 20)])');
    expect(() => p.evaluate('data.t.p')).toThrow(/limit_error: numbers.range: result of 100000000 elements/);
    const small = Policy.compile({ modules: [{ file: 's.rego', text: 'package t\np := concat("", ["aaaa", "bbbb"])\nq if not p' }] }, { limits: { maxStringLength: 5 } });
    expect(() => small.evaluate('data.t.q')).toThrow(/limit_error/);
  });

  it('matches pathological patterns in linear time (RE2, not backtracking)', () => {
    // a backtracking engine does not return from this (the test would time out)
    const p = policy('package t\np := regex.match("^(a+)+$", input)');
    expect(p.evaluate('data.t.p', 'a'.repeat(50_000) + 'b').value).toBe(false);
  });

  it('refuses documents nested too deeply for the stack as a limit, not as undefined', () => {
    const p = policy('package t\np if not yaml.unmarshal(input)');
    expect(() => p.evaluate('data.t.p', '['.repeat(20_000) + ']'.repeat(20_000))).toThrow(/limit_error: yaml.unmarshal: document nested too deeply/);
  });

  it('bounds deeply nested input and deep recursion through data', () => {
    const p = policy('package t\np := input');
    expect(() => p.evaluate('data.t.p', JSON.parse('['.repeat(400) + ']'.repeat(400)) as unknown)).not.toThrow();
    const deep = Policy.compile({ modules: [{ file: 'd.rego', text: 'package t\nf(x) := g(x)\ng(x) := h(x)\nh(x) := x\np := f(1)' }] }, { limits: { maxDepth: 3 } });
    expect(() => deep.evaluate('data.t.p')).toThrow(/nested deeper than 3/);
  });
});

describe('explanations', () => {
  it('names the failed check and its operand values', () => {
    const p = policy(
      [
        'package t',
        'default allow := false',
        'allow if {',
        '  some c in data.containers',
        '  check(c, input)',
        '}',
        'check(c, i) if {',
        '  c.cwd == i.cwd',
        '  c.user == i.user',
        '}',
      ].join('\n'),
      { containers: [{ cwd: '/', user: 0 }] },
    );
    const d = p.evaluate('data.t.allow', { cwd: '/', user: 1000 }, { explain: true });
    expect(d.value).toBe(false);
    const top = d.explanation![0]!;
    expect(top.rule).toBe('data.t.check');
    expect(top.expression).toBe('c.user == i.user');
    expect(top.operands.map((o) => [o.text, o.value as Value])).toEqual([
      ['c.user', 0],
      ['i.user', 1000],
    ]);
    expect(p.evaluate('data.t.allow', { cwd: '/', user: 0 }, { explain: true }).explanation).toBeUndefined();
  });

  it("a denial by an object default (Kata's {\"allowed\": false}) is explained by the bodies that failed; an inner rule's default is not", () => {
    const p = policy(
      [
        'package t',
        'default r := {"allowed": false}',
        'r := {"allowed": true} if {',
        '  input.args == ["sleep"]',
        '  quiet',
        '}',
        'default quiet := {"on": false}',
        'quiet := {"on": true} if input.never',
      ].join('\n'),
    );
    const d = p.evaluate('data.t.r', { args: ['sh'] }, { explain: true });
    expect(d.explanation!.map((f) => f.expression)).toEqual(['input.args == ["sleep"]']);
    // The inner rule's default gave it a value: its failed body explains nothing.
    const ok = p.evaluate('data.t.r', { args: ['sleep'] }, { explain: true });
    expect(ok.explanation).toEqual([]);
  });
});

describe('rules fixed whatever the input', () => {
  it('a constant rule or a lone constant default is known without evaluating; any other rule is not', () => {
    const p = policy(['package t', 'default a := true', 'b := {"allowed": true}', 'default c := false', 'c if input.x', 'd if input.x'].join('\n'));
    expect(p.fixedValue(['t', 'a'])).toBe(true);
    expect(canonical(p.fixedValue(['t', 'b'])!)).toBe('{"allowed":true}');
    for (const r of ['c', 'd', 'missing']) expect(p.fixedValue(['t', r])).toBeUndefined();
  });
});

describe('packages', () => {
  it('a package without rules is an empty object in its parent document', () => {
    const p = policy(['package t\np := 1', 'package t.empty']);
    expect(canonical(p.evaluate('data.t').value!)).toBe('{"empty":{},"p":1}');
  });
});
