// containerd's filter syntax, as List requests carry it: a filter is selectors joined by ","
// (all must hold), a request's filters are alternatives (any may hold). A selector is a field path
// (`name`, `kind`, `parent`, `labels."containerd.io/snapshot.ref"`), optionally an operator (==,
// !=, ~= for a regular expression) and a value, quoted ("..." with escapes, or /.../) or bare. A
// field path alone asks that the field be present. containerd's metadata layer relies on
// `labels."containerd.io/snapshot.ref"==X,parent=="Y"` when a remote snapshotter reports a layer.
import { invalidArgument } from './errors.js';

type Op = '==' | '!=' | '~=' | 'present';
interface Selector {
  path: string[];
  op: Op;
  value: string;
  re?: RegExp;
}
export type Filter = Selector[][];

class Scanner {
  pos = 0;
  constructor(readonly s: string) {}
  get done(): boolean {
    return this.pos >= this.s.length;
  }
  peek(): string {
    return this.s[this.pos] ?? '';
  }
  skipSpace(): void {
    while (!this.done && /\s/.test(this.peek())) this.pos++;
  }
  fail(why: string): never {
    throw invalidArgument(`filter ${JSON.stringify(this.s)}: ${why} at ${this.pos}`);
  }
  quoted(): string {
    const q = this.peek();
    this.pos++;
    let out = '';
    while (!this.done && this.peek() !== q) {
      let c = this.peek();
      if (c === '\\' && q === '"') {
        this.pos++;
        c = this.peek();
        const esc: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"' };
        c = esc[c] ?? c;
      } else if (c === '\\' && q === '/' && this.s[this.pos + 1] === '/') {
        this.pos++;
        c = '/';
      }
      out += c;
      this.pos++;
    }
    if (this.done) this.fail('unterminated quote');
    this.pos++;
    return out;
  }
  field(): string {
    if (this.peek() === '"') return this.quoted();
    const m = /^[A-Za-z0-9_]+/.exec(this.s.slice(this.pos));
    if (!m) this.fail('expected a field name');
    this.pos += m[0].length;
    return m[0];
  }
  value(): string {
    if (this.peek() === '"' || this.peek() === '/') return this.quoted();
    const m = /^[^,\s]*/.exec(this.s.slice(this.pos))!;
    this.pos += m[0].length;
    return m[0];
  }
}

function parseOne(s: string): Selector[] {
  const sc = new Scanner(s);
  const out: Selector[] = [];
  for (;;) {
    sc.skipSpace();
    const path = [sc.field()];
    while (sc.peek() === '.') {
      sc.pos++;
      path.push(sc.field());
    }
    sc.skipSpace();
    let op: Op = 'present';
    let value = '';
    const two = sc.s.slice(sc.pos, sc.pos + 2);
    if (two === '==' || two === '!=' || two === '~=') {
      op = two;
      sc.pos += 2;
      sc.skipSpace();
      value = sc.value();
    }
    const sel: Selector = { path, op, value };
    if (op === '~=') {
      try {
        sel.re = new RegExp(value);
      } catch {
        sc.fail(`bad regular expression ${JSON.stringify(value)}`);
      }
    }
    out.push(sel);
    sc.skipSpace();
    if (sc.done) return out;
    if (sc.peek() !== ',') sc.fail('expected ","');
    sc.pos++;
  }
}

export function parseFilters(filters: string[]): Filter {
  return filters.filter((f) => f.trim() !== '').map(parseOne);
}

/** The fields a snapshot offers to filters. */
export interface Filterable {
  name: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}

/** As containerd's snapshot adaptor: name, parent and kind are always present (maybe empty). */
function field(x: Filterable, path: string[]): string | undefined {
  const [head, ...rest] = path;
  switch (head) {
    case 'name':
    case 'parent':
    case 'kind':
      return x[head];
    case 'labels':
      return rest.length === 1 && Object.hasOwn(x.labels, rest[0]!) ? x.labels[rest[0]!] : undefined;
    default:
      return undefined;
  }
}

export function matches(f: Filter, x: Filterable): boolean {
  if (!f.length) return true;
  return f.some((sels) =>
    sels.every((s) => {
      const v = field(x, s.path);
      switch (s.op) {
        case 'present':
          return v !== undefined;
        case '==':
          return v === s.value;
        case '!=':
          return v !== s.value;
        case '~=':
          return v !== undefined && s.re!.test(v);
      }
      return false;
    }),
  );
}
