// Builtins, family by family: each row is an expression and the value OPA gives for it
// ('undefined' where OPA's non-strict mode turns the builtin's error into undefined).
import { describe, expect, it } from 'vitest';
import { Policy, canonical } from '../../policy/index.js';

const engine = Policy.compile({ modules: [] });

function val(expr: string): string {
  const { results } = engine.query(`x := ${expr}`);
  if (results.length === 0) return 'undefined';
  return canonical(results[0]!.bindings.x!);
}

function strictError(expr: string): string {
  try {
    engine.query(`x := ${expr}`, undefined, { strictBuiltinErrors: true });
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
}

function table(rows: [string, string][]): void {
  for (const [expr, want] of rows) expect(val(expr), expr).toBe(want);
}

describe('policy builtins', () => {
  it('kata genpolicy builtins', () => {
    table([
      ['count("héllo")', '5'],
      ['count({"a": 1})', '1'],
      ['count({1, 2})', '2'],
      ['concat(",", ["a", "b"])', '"a,b"'],
      ['concat("-", {"b", "a"})', '"a-b"'],
      ['contains("abc", "b")', 'true'],
      ['startswith("abc", "ab")', 'true'],
      ['endswith("abc", "bc")', 'true'],
      ['trim_prefix("$(hash0)", "$(hash")', '"0)"'],
      ['trim_left("$(hash0)", "$(hash")', '"0)"'],
      ['trim_right("0)))", ")")', '"0"'],
      ['replace("a$$b", "$$", "$")', '"a$b"'],
      ['split("a=b=c", "=")', '["a","b","c"]'],
      ['split("ab", "")', '["a","b"]'],
      ['substring("héllo", 1, 3)', '"éll"'],
      ['substring("abc", 1, -1)', '"bc"'],
      ['lower("ABC")', '"abc"'],
      ['to_number("42")', '42'],
      ['to_number("1.5")', '1.5'],
      ['to_number("12345678901234567890")', '12345678901234567890'],
      ['to_number("x")', 'undefined'],
      ['is_null(null)', 'true'],
      ['is_null(1)', 'false'],
      ['regex.match("^[a-z0-9]{64}$", "abc")', 'false'],
      ['regex.match("^/run/[a-z]+$", "/run/kata")', 'true'],
      ['regex.find_all_string_submatch_n("a(x*)b", "axxb ab", -1)', '[["axxb","xx"],["ab",""]]'],
      ['regex.find_all_string_submatch_n("(a)|(b)", "b", 1)', '[["b","","b"]]'],
      ['bits.or(1, 4)', '5'],
      ['bits.and(6, 3)', '2'],
      ['bits.negate(0)', '-1'],
      ['bits.or(4294967296, 1)', '4294967297'],
      ['base64.decode("aGVsbG8=")', '"hello"'],
      ['base64.decode("aGVsbG8")', 'undefined'],
      ['base64.is_valid("proc")', 'true'],
      ['base64.is_valid("tmpfs")', 'false'],
      ['base64url.encode("/dev/sd?")', '"L2Rldi9zZD8="'],
      ['array.concat([1], [2, 3])', '[1,2,3]'],
      ['object.keys({"b": 1, "a": 2})', '["a","b"]'],
      ['object.get({"a": {"b": 1}}, ["a", "b"], 0)', '1'],
      ['object.get({"a": 1}, "z", "default")', '"default"'],
      ['json.marshal({"b": [1, {2}], "a": null})', '"{\\"a\\":null,\\"b\\":[1,[2]]}"'],
      ['json.unmarshal("{\\"a\\": [1, 2.5, 18446744073709551616]}")', '{"a":[1,2.5,18446744073709551616]}'],
      ['json.unmarshal("{")', 'undefined'],
    ]);
  });

  it('strings and formatting', () => {
    table([
      ['sprintf("%s=%d %v %.2f %x %q %t %%", ["a", 3, [1, "b"], 1.5, 255, "q", true])', '"a=3 [1, \\"b\\"] 1.50 ff \\"q\\" true %"'],
      ['sprintf("%v %v", [{"a": {1}}, 1234567.5])', '"{\\"a\\": {1}} 1.2345675e+06"'],
      ['sprintf("%05d|%-4s|", [42, "ab"])', '"00042|ab  |"'],
      ['format_int(255, 16)', '"ff"'],
      ['format_int(-5.9, 10)', '"-5"'],
      ['indexof("héllo", "l")', '2'],
      ['indexof_n("abab", "b")', '[1,3]'],
      ['upper("abc")', '"ABC"'],
      ['trim("  xx  ", " ")', '"xx"'],
      ['trim_suffix("file.txt", ".txt")', '"file"'],
      ['trim_space("\\t x \\n")', '"x"'],
      ['strings.reverse("abc")', '"cba"'],
      ['strings.count("cheese", "e")', '3'],
      ['strings.replace_n({"a": "1", "b": "2"}, "abc")', '"12c"'],
      ['strings.any_prefix_match("foobar", ["x", "foo"])', 'true'],
      ['strings.any_suffix_match(["foobar"], "bar")', 'true'],
      ['replace("abc", "", "-")', '"-a-b-c-"'],
    ]);
  });

  it('regex and glob', () => {
    table([
      ['regex.is_valid("(")', 'false'],
      ['regex.is_valid("\\\\d+")', 'true'],
      ['regex.split("[,;]", "a,b;c")', '["a","b","c"]'],
      ['regex.find_n("[0-9]+", "a1b22c333", 2)', '["1","22"]'],
      ['regex.replace("a1b22", "[0-9]+", "<$0>")', '"a<1>b<22>"'],
      ['regex.replace("key=val", "(?P<k>\\\\w+)=(\\\\w+)", "${2}=$k")', '"val=key"'],
      ['regex.template_match("urn:foo:{.*}", "urn:foo:bar:baz", "{", "}")', 'true'],
      ['regex.match("(", "x")', 'undefined'],
      ['glob.match("*.github.com", ["."], "api.github.com")', 'true'],
      ['glob.match("*.github.com", ["."], "api.x.github.com")', 'false'],
      ['glob.match("**.github.com", ["."], "api.x.github.com")', 'true'],
      ['glob.match("{cat,bat}", [], "bat")', 'true'],
      ['glob.match("[!a]at", null, "cat")', 'true'],
    ]);
  });

  it('numbers and aggregates', () => {
    table([
      ['abs(-2)', '2'],
      ['round(2.5)', '3'],
      ['round(-2.5)', '-3'],
      ['ceil(1.2)', '2'],
      ['floor(-1.2)', '-2'],
      ['5 % 3', '2'],
      ['-5 % 3', '-2'],
      ['5.5 % 2', 'undefined'],
      ['numbers.range(3, 1)', '[3,2,1]'],
      ['numbers.range_step(0, 10, 4)', '[0,4,8]'],
      ['sum([1, 2.5])', '3.5'],
      ['product({2, 3})', '6'],
      ['max([1, "a", null])', '"a"'],
      ['min(set())', 'undefined'],
      ['sort([3, 1, "a", null])', '[null,1,3,"a"]'],
      ['9223372036854775807 + 1', '9223372036854775808'],
      ['2 * 0.5', '1'],
    ]);
  });

  it('arrays, sets, objects', () => {
    table([
      ['array.slice([1, 2, 3, 4], 1, 3)', '[2,3]'],
      ['array.slice([1, 2], -1, 10)', '[1,2]'],
      ['array.reverse([1, 2])', '[2,1]'],
      ['intersection({{1, 2}, {2, 3}})', '[2]'],
      ['union({{1}, {2}})', '[1,2]'],
      ['object.remove({"a": 1, "b": 2}, ["a"])', '{"b":2}'],
      ['object.filter({"a": 1, "b": 2}, {"a"})', '{"a":1}'],
      ['object.union({"a": {"x": 1}, "b": 1}, {"a": {"y": 2}, "b": 2})', '{"a":{"x":1,"y":2},"b":2}'],
      ['object.union_n([{"a": 1}, {"b": 2}])', '{"a":1,"b":2}'],
      ['object.subset({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}})', 'true'],
      ['object.subset([1, 2, 3], [2, 3])', 'true'],
      ['json.filter({"a": {"b": 1, "c": 2}, "d": 3}, ["a/b", "d"])', '{"a":{"b":1},"d":3}'],
      ['json.remove({"a": {"b": 1, "c": 2}}, ["a/b"])', '{"a":{"c":2}}'],
    ]);
  });

  it('types and encodings', () => {
    table([
      ['type_name({1})', '"set"'],
      ['type_name(1.5)', '"number"'],
      ['[is_number(1), is_string("a"), is_boolean(true), is_array([]), is_set(set()), is_object({})]', '[true,true,true,true,true,true]'],
      ['base64.encode("hé")', '"aMOp"'],
      ['base64url.encode_no_pad("??>")', '"Pz8-"'],
      ['base64url.decode("Pz8-")', '"??>"'],
      ['hex.encode("hi")', '"6869"'],
      ['hex.decode("6869")', '"hi"'],
      ['json.is_valid("[1")', 'false'],
      ['json.marshal_with_options({"a": 1}, {"indent": "  "})', '"{\\n  \\"a\\": 1\\n}"'],
      ['urlquery.encode("a b&c")', '"a+b%26c"'],
      ['urlquery.decode("a+b%26c")', '"a b&c"'],
      ['urlquery.encode_object({"b": ["2", "3"], "a": "1"})', '"a=1&b=2&b=3"'],
      ['urlquery.decode_object("a=1&a=2")', '{"a":["1","2"]}'],
      ['yaml.unmarshal("a: [1, x]\\nb: {c: true}")', '{"a":[1,"x"],"b":{"c":true}}'],
      ['yaml.marshal({"a": [1]})', '"a:\\n- 1\\n"'],
      ['yaml.is_valid("a: [")', 'false'],
      ['crypto.sha256("abc")', '"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"'],
      ['crypto.hmac.sha256("msg", "key")', '"2d93cbc1be167bcb1637a4a23cbff01a7878f0c50ee833954ea5221bb1b8c628"'],
      ['units.parse_bytes("10KiB")', '10240'],
      ['units.parse_bytes("1.5kb")', '1500'],
      ['units.parse("2Mi")', '2097152'],
      ['units.parse("500m")', '0.5'],
      ['units.parse("10e")', '10000000000000000000'],
      ['units.parse("100g")', '100000000000'],
      ['units.parse("\\"100TI\\"")', '109951162777600'],
      ['units.parse("1.1Ki")', '1126.4'],
      ['units.parse_bytes("10eib")', '11529215046068469760'],
      ['units.parse_bytes(".5KB")', '500'],
      ['sprintf("%s", [123456789123456789123])', '"123456789123456789123"'],
      ['semver.compare("1.2.3", "1.10.0")', '-1'],
      ['semver.is_valid("1.0.0-rc.1")', 'true'],
      ['net.cidr_contains("10.0.0.0/8", "10.1.2.3")', 'true'],
      ['net.cidr_intersects("fd00::/8", "fd12::/16")', 'true'],
      ['graph.reachable({"a": ["b"], "b": ["c"], "c": []}, ["a"])', '["a","b","c"]'],
      ['[p | walk({"a": [1]}, [p, _])]', '[[],["a"],["a",0]]'],
    ]);
  });

  it('bits and time', () => {
    table([
      ['bits.xor(5, 3)', '6'],
      ['bits.lsh(1, 70)', '1180591620717411303424'],
      ['bits.rsh(-8, 1)', '-4'],
      ['time.parse_rfc3339_ns("2024-02-29T12:00:00.5Z")', '1709208000500000000'],
      ['time.parse_rfc3339_ns("2024-01-01T00:00:00+01:00")', '1704063600000000000'],
      ['time.parse_ns("2006-01-02", "2024-03-01")', '1709251200000000000'],
      ['time.parse_duration_ns("1h2m3.5s")', '3723500000000'],
      ['time.date(1709208000500000000)', '[2024,2,29]'],
      ['time.clock(1709208000500000000)', '[12,0,0]'],
      ['time.weekday(1709208000500000000)', '"Thursday"'],
      ['time.format(1709208000500000000)', '"2024-02-29T12:00:00.5Z"'],
      ['time.format([1709208000500000000, "UTC", "Mon Jan _2 15:04:05 2006"])', '"Thu Feb 29 12:00:00 2024"'],
      ['time.date([1709208000500000000, "America/New_York"])', '[2024,2,29]'],
      ['time.clock([1709208000500000000, "America/New_York"])', '[7,0,0]'],
      ['time.add_date(1709208000500000000, 0, 1, 1)', '1711800000500000000'],
      ['time.diff(1709208000000000000, 1704067200000000000)', '[0,1,28,12,0,0]'],
      ['time.parse_rfc3339_ns("not a time")', 'undefined'],
    ]);
    expect(Number(val('time.now_ns()'))).toBeGreaterThan(1.7e18);
  });

  it('reports type errors in strict mode with OPA wording', () => {
    expect(strictError('count(1)')).toMatch(/eval_type_error: count: operand 1 must be one of \{array, object, set, string\} but got number/);
    expect(strictError('1 / 0')).toMatch(/eval_builtin_error: div: divide by zero/);
    expect(strictError('regex.match("(", "")')).toMatch(/eval_builtin_error: regex.match: error parsing regexp/);
  });
});
