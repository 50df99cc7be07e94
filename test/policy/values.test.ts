// Values: OPA's total order, equality across number forms, exact big integers, canonical JSON,
// and the bounded JSON reader.
import { describe, expect, it } from 'vitest';
import { parseJSON } from '../../policy/json.js';
import { RObject, RSet, canonical, compare, compareStrings, equal, printText, termText, toJSON, type Value } from '../../policy/values.js';

const obj = (e: [Value, Value][]) => RObject.of(e);

describe('policy values', () => {
  it('orders types null < boolean < number < string < array < object < set', () => {
    const vs: Value[] = [RSet.of([1]), obj([['a', 1]]), [1], 'a', 1, true, false, null];
    const sorted = [...vs].sort(compare);
    expect(sorted.map((v) => canonical(v))).toEqual(['null', 'false', 'true', '1', '"a"', '[1]', '{"a":1}', '[1]']);
    expect(compare(sorted[6]!, sorted[7]!)).toBeLessThan(0); // object before set
  });

  it('compares numbers exactly across doubles and big integers', () => {
    expect(equal(1, 1.0)).toBe(true);
    expect(equal(28857836529306024611913n, 28857836529306024611912n)).toBe(false);
    expect(compare(2n ** 64n, 1.5)).toBeGreaterThan(0);
    expect(compare(2n ** 64n, 2 ** 64)).toBe(0);
    expect(equal(parseJSON('18446744073709551616'), 2n ** 64n)).toBe(true);
    // a double that equals a big integer meets it in sets and object keys
    expect(RSet.of([2 ** 64]).has(2n ** 64n)).toBe(true);
  });

  it('compares strings by code point, as Go and Rust do', () => {
    // U+FF61 (one UTF-16 unit) sorts before U+1F600 (a surrogate pair) by code point
    expect(compareStrings('\uFF61', '\u{1F600}')).toBeLessThan(0);
    expect('\uFF61' < '\u{1F600}').toBe(false); // JS's own order would get this wrong
  });

  it('treats objects and sets by content, iterating in sort order', () => {
    const a = obj([['b', 1], ['a', [1, 2]]]);
    const b = obj([['a', [1, 2]], ['b', 1]]);
    expect(equal(a, b)).toBe(true);
    expect(a.keys()).toEqual(['a', 'b']);
    const s = RSet.of([3, 'x', 1, [1], 1.0]);
    expect(s.size).toBe(4);
    expect(s.values()).toEqual([1, 3, 'x', [1]]);
    // composite keys work
    const o = obj([[[1, 2], 'pair'], [RSet.of(['a']), 'set']]);
    expect(o.get([1, 2])).toBe('pair');
    expect(o.get(RSet.of(['a']))).toBe('set');
  });

  it('writes canonical JSON (sorted keys, sets as sorted arrays) and Rego text', () => {
    const v = obj([['z', RSet.of(['b', 'a'])], ['a', 2n ** 70n]]);
    expect(canonical(v)).toBe('{"a":1180591620717411303424,"z":["a","b"]}');
    expect(toJSON(v, 2)).toBe('{\n  "a": 1180591620717411303424,\n  "z": [\n    "a",\n    "b"\n  ]\n}');
    expect(termText(v)).toBe('{"a": 1180591620717411303424, "z": {"a", "b"}}');
    expect(termText(new RSet())).toBe('set()');
    expect(printText('bare')).toBe('bare');
    expect(printText(['q'])).toBe('["q"]');
    expect(printText(undefined)).toBe('<undefined>');
  });

  it('reads JSON with limits and positions', () => {
    expect(() => parseJSON('['.repeat(600) + ']'.repeat(600))).toThrow(/nesting deeper than 512/);
    expect(() => parseJSON('{"a": 1,}')).toThrow(/line 1, column 9/);
    expect(() => parseJSON('"abc', 'input')).toThrow(/^input_error: input: unterminated string/);
    expect(() => parseJSON('1'.repeat(100), 'x', { maxLength: 10 })).toThrow(/exceed the limit/);
    expect(canonical(parseJSON('{"a":"\\u00e9\\n","b":[1.5,-0,1e2]}'))).toBe('{"a":"é\\n","b":[1.5,0,100]}');
  });
});
