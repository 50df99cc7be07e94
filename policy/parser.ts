// Recursive-descent parser for Rego modules and queries, both syntaxes (v0 and v1). Nesting is
// bounded so that a hostile module cannot exhaust the stack; every error names file, line, column.
import type { Body, Import, Literal, Loc, Module, RegoVersion, Rule, RuleBody, RuleHead, Term, TermOf, With } from './ast.js';
import { PolicyError } from './errors.js';
import { numberFromText, scanJSON } from './json.js';
import { tokenize, type Token } from './lexer.js';

export interface ParseOptions {
  /** The syntax of modules that do not say (`import rego.v1` always selects v1). Default v1. */
  regoVersion?: RegoVersion;
  /** Deepest nesting of terms, bodies and calls. Default 128. */
  maxDepth?: number;
  /** Most tokens in one module. Default 2,000,000. */
  maxTokens?: number;
}

const KEYWORDS_V1 = new Set(['in', 'every', 'contains', 'if']);
const RESERVED = new Set(['package', 'import', 'not', 'with', 'as', 'default', 'else', 'some', 'true', 'false', 'null']);
const RELATION_OPS: Record<string, string> = { '==': 'equal', '!=': 'neq', '<': 'lt', '>': 'gt', '<=': 'lte', '>=': 'gte' };

export function parseModule(src: string, file: string, opts: ParseOptions = {}): Module {
  const p = new Parser(src, file, opts);
  return p.module();
}

/** A query (`data.x.p = y; z := 1`) in the given syntax. */
export function parseQuery(src: string, file = 'query', opts: ParseOptions = {}): Body {
  const p = new Parser(src, file, opts);
  return p.queryOnly();
}

/** A single term (for `input_term` and `with` values given as text). */
export function parseTerm(src: string, file = 'term', opts: ParseOptions = {}): Term {
  const p = new Parser(src, file, opts);
  return p.termOnly();
}

class Parser {
  private toks: Token[];
  private i = 0;
  private depth = 0;
  /** Inside brackets line breaks do not end a literal. */
  private nest = 0;
  private wildcards = 0;
  private readonly maxDepth: number;
  private version: RegoVersion;
  private kw = new Set<string>();

  constructor(
    private readonly src: string,
    private readonly file: string,
    opts: ParseOptions,
  ) {
    this.toks = tokenize(src, file, { maxTokens: opts.maxTokens ?? 2_000_000 });
    this.maxDepth = opts.maxDepth ?? 128;
    this.version = opts.regoVersion ?? 'v1';
    if (this.version === 'v1') this.kw = new Set(KEYWORDS_V1);
  }

  // ---- token helpers

  private get tok(): Token {
    return this.toks[this.i]!;
  }

  private peek(n = 1): Token {
    return this.toks[Math.min(this.i + n, this.toks.length - 1)]!;
  }

  private next(): Token {
    const t = this.tok;
    if (t.kind !== 'eof') this.i++;
    return t;
  }

  private isOp(text: string, t = this.tok): boolean {
    return t.kind === 'op' && t.text === text;
  }

  private isKw(text: string, t = this.tok): boolean {
    return t.kind === 'ident' && t.text === text && (RESERVED.has(text) || this.kw.has(text));
  }

  private fail(msg: string, t: Token = this.tok): never {
    throw new PolicyError('rego_parse_error', msg, { file: this.file, row: t.row, col: t.col });
  }

  private expectOp(text: string): Token {
    if (!this.isOp(text)) this.fail(`expected ${text}, found ${this.describe(this.tok)}`);
    return this.next();
  }

  private describe(t: Token): string {
    if (t.kind === 'eof') return 'end of input';
    if (t.kind === 'string') return 'string';
    return t.text;
  }

  private loc(start: Token, endTok?: Token): Loc {
    const end = endTok ?? this.toks[this.i - 1] ?? start;
    return { file: this.file, row: start.row, col: start.col, offset: start.offset, end: Math.max(end.end, start.end) };
  }

  private atEnd(): boolean {
    return this.tok.kind === 'eof';
  }

  private enter(): void {
    if (++this.depth > this.maxDepth) this.fail(`nesting deeper than ${this.maxDepth}`);
  }

  private leave(): void {
    this.depth--;
  }

  // ---- module

  module(): Module {
    if (!this.isKw('package')) this.fail(this.tok.kind === 'eof' ? 'empty module' : `expected package, found ${this.describe(this.tok)}`);
    const pkgTok = this.next();
    const pkgRef = this.term();
    const pkg = this.refPath(pkgRef, 'package');
    const packageLoc = this.loc(pkgTok);
    const mod: Module = { file: this.file, src: this.src, package: pkg, packageLoc, imports: [], rules: [], version: this.version };
    while (this.isKw('import')) {
      const t = this.next();
      const path = this.term();
      let alias: string | undefined;
      if (this.isKw('as') && !this.tok.nl) {
        this.next();
        const a = this.next();
        if (a.kind !== 'ident') this.fail('expected an alias name after as', a);
        alias = a.text;
      }
      const imp: Import = { path, loc: this.loc(t) };
      if (alias !== undefined) imp.alias = alias;
      this.checkImport(imp);
      mod.imports.push(imp);
    }
    mod.version = this.version;
    while (this.tok.kind !== 'eof') {
      if (this.isKw('import')) this.fail('imports must come before rules');
      if (this.isKw('package')) this.fail('one package per module');
      for (const r of this.rule(mod)) mod.rules.push(r);
    }
    return mod;
  }

  private checkImport(imp: Import): void {
    const t = imp.path;
    const head = t.type === 'var' ? t.name : t.type === 'ref' && t.head.type === 'var' ? t.head.name : '';
    if (!['data', 'input', 'future', 'rego'].includes(head)) {
      this.failAt(`invalid import path: must begin with input or data`, t.loc);
    }
    if (head === 'rego') {
      const path = this.refPath(t, 'import');
      if (path.join('.') !== 'rego.v1') this.failAt(`invalid import ${path.join('.')}, must be rego.v1`, t.loc);
      this.version = 'v1';
      for (const k of KEYWORDS_V1) this.kw.add(k);
    } else if (head === 'future') {
      const path = this.refPath(t, 'import');
      if (path[1] !== 'keywords') this.failAt(`invalid import ${path.join('.')}, must be future.keywords`, t.loc);
      if (path.length === 2) for (const k of KEYWORDS_V1) this.kw.add(k);
      else if (path.length === 3 && KEYWORDS_V1.has(path[2]!)) this.kw.add(path[2]!);
      else this.failAt(`unexpected keyword import ${path.join('.')}`, t.loc);
    }
  }

  private failAt(msg: string, loc: Loc): never {
    throw new PolicyError('rego_parse_error', msg, { file: loc.file, row: loc.row, col: loc.col });
  }

  /** A ref made of a name and string parts as a path (package names, imports). */
  private refPath(t: Term, what: string): string[] {
    if (t.type === 'var') return [t.name];
    if (t.type === 'ref' && t.head.type === 'var') {
      const out = [t.head.name];
      for (const p of t.path) {
        if (p.type !== 'scalar' || typeof p.value !== 'string') this.failAt(`invalid ${what} path`, p.loc);
        out.push(p.value);
      }
      return out;
    }
    return this.failAt(`invalid ${what} path`, t.loc);
  }

  // ---- rules

  private rule(mod: Module): Rule[] {
    const start = this.tok;
    // Rules start on a line of their own.
    if (!start.nl) this.fail(`unexpected ${this.describe(start)} token: expected a new line before the rule`);
    const isDefault = this.isKw('default');
    if (isDefault) this.next();
    if (this.tok.kind !== 'ident' || RESERVED.has(this.tok.text)) this.fail(`unexpected ${this.describe(this.tok)} token: expected rule head`);
    const headStart = this.tok;
    const ref = this.headRef();
    const head: RuleHead = { ref, assign: false, loc: this.loc(headStart) };
    if (this.isOp('(') && !this.tok.nl) {
      this.next();
      this.nest++;
      head.args = [];
      if (!this.isOp(')')) {
        for (;;) {
          head.args.push(this.termIn());
          if (this.isOp(',')) {
            this.next();
            continue;
          }
          break;
        }
      }
      this.nest--;
      this.expectOp(')');
    }
    if (this.isKw('contains') && !this.tok.nl) {
      this.next();
      head.member = this.termIn();
    }
    if ((this.isOp(':=') || this.isOp('=')) && !this.tok.nl) {
      head.assign = this.next().text === ':=';
      if (head.member) this.fail('a multi-value rule has no value');
      head.value = this.termIn();
    }
    head.loc = this.loc(headStart);
    const rule: Rule = { head, isDefault, bodies: [], loc: head.loc, module: mod };
    if (isDefault) {
      if (!head.value) this.failAt('default rules must have a value', head.loc);
      if (this.isKw('if') || (this.isOp('{') && !this.tok.nl)) this.fail('default rules cannot have a body');
      rule.loc = this.loc(start);
      return [rule];
    }
    const rules = [rule];
    const hasIf = this.isKw('if') && !this.tok.nl;
    if (hasIf) {
      this.next();
      rule.bodies.push(this.ruleBody(false, undefined));
    } else if (this.isOp('{') && !this.tok.nl) {
      if (this.version === 'v1') this.fail('`if` keyword is required before rule body');
      rule.bodies.push(this.ruleBody(false, undefined));
    }
    // else chains, and v0's extra bodies (`p { a } { b }` is two rules)
    for (;;) {
      if (this.isKw('else')) {
        if (rule.bodies.length === 0) this.fail('else keyword cannot be used on rule without a body');
        if (head.member) this.fail('else keyword cannot be used on multi-value rules');
        if (head.args === undefined && head.ref.some((t, i) => i > 0 && t.type !== 'scalar')) this.fail('else keyword cannot be used on rules with variables in head');
        const elseTok = this.next();
        let value: Term | undefined;
        if (this.isOp(':=') || this.isOp('=')) {
          this.next();
          value = this.termIn();
        }
        let b: RuleBody;
        if (this.isKw('if')) {
          this.next();
          b = this.ruleBody(true, value);
        } else if (this.isOp('{')) {
          if (this.version === 'v1') this.fail('`if` keyword is required before rule body');
          b = this.ruleBody(true, value);
        } else {
          // `else := v` with no body holds whenever it is reached
          if (!value) this.fail('expected a value or body after else');
          b = { body: [], isElse: true, loc: this.loc(elseTok), value };
        }
        b.loc = this.loc(elseTok);
        rule.bodies.push(b);
        continue;
      }
      if (this.isOp('{') && this.tok.nl === false && rule.bodies.length > 0 && this.version === 'v0') {
        const extra: Rule = { head, isDefault: false, bodies: [this.ruleBody(false, undefined)], loc: head.loc, module: mod };
        rules.push(extra);
        continue;
      }
      break;
    }
    if (rule.bodies.length === 0) {
      // `p := 1`, `p contains 1`, `f(x) := x` — a rule without a body
      rule.bodies.push({ body: [], isElse: false, loc: head.loc });
      if (!head.value && !head.member) this.failAt('rule must have value assignment and/or body', head.loc);
    }
    this.normalizeHead(rule, hasIf);
    rule.loc = this.loc(start);
    for (const r of rules) r.loc = rule.loc;
    if (!this.atEnd() && !this.tok.nl) this.fail(`unexpected ${this.describe(this.tok)} token: expected a new line after the rule`);
    return rules;
  }

  /** v0's `p[x] { }` is a partial set; in v1 a bracket head without value is `p[x] := true`. */
  private normalizeHead(rule: Rule, _hasIf: boolean): void {
    const h = rule.head;
    if (h.args !== undefined || h.member || h.value) return;
    if (h.ref.length === 2 && h.ref[1]!.type !== 'scalar' && this.version === 'v0') {
      h.member = h.ref.pop()!;
      return;
    }
    if (h.ref.length === 2 && h.ref[1]!.type === 'scalar' && this.version === 'v0' && typeof (h.ref[1] as TermOf<'scalar'>).value === 'string') {
      // v0 `p["a"] { }` is a set with member "a" when written in brackets; OPA treats it so.
      const src = this.src.slice(h.ref[1]!.loc.offset - 1, h.ref[1]!.loc.offset);
      if (src === '[') h.member = h.ref.pop()!;
    }
  }

  private headRef(): Term[] {
    const nameTok = this.next();
    const out: Term[] = [{ type: 'var', name: nameTok.text, loc: this.loc(nameTok) }];
    for (;;) {
      if (this.isOp('.') && !this.tok.nl) {
        this.next();
        const t = this.next();
        if (t.kind !== 'ident') this.fail('expected a name after .', t);
        out.push({ type: 'scalar', value: t.text, loc: this.loc(t) });
        continue;
      }
      if (this.isOp('[') && !this.tok.nl) {
        this.next();
        this.nest++;
        out.push(this.termIn());
        this.nest--;
        this.expectOp(']');
        continue;
      }
      return out;
    }
  }

  private ruleBody(isElse: boolean, value: Term | undefined): RuleBody {
    const start = this.tok;
    let body: Body;
    if (this.isOp('{')) {
      body = this.braceBody();
    } else {
      // `p if x > 1`: a single literal
      if (this.tok.nl || this.tok.kind === 'eof') this.fail('expected a rule body');
      body = [this.literal()];
    }
    const rb: RuleBody = { body, isElse, loc: this.loc(start) };
    if (value) rb.value = value;
    return rb;
  }

  private braceBody(): Body {
    const open = this.expectOp('{');
    const saveNest = this.nest;
    this.nest = 0;
    this.enter();
    const body = this.query('}');
    this.leave();
    this.nest = saveNest;
    this.expectOp('}');
    if (body.length === 0) this.fail('found empty body', open);
    return body;
  }

  // ---- queries and literals

  queryOnly(): Body {
    const body = this.query('');
    if (this.tok.kind !== 'eof') this.fail(`unexpected ${this.describe(this.tok)} token`);
    if (body.length === 0) this.fail('empty query');
    return body;
  }

  termOnly(): Term {
    const t = this.termIn();
    if (this.tok.kind !== 'eof') this.fail(`unexpected ${this.describe(this.tok)} token`);
    return t;
  }

  /** Literals separated by `;` or line breaks, up to `close` (or end of input). */
  private query(close: string): Body {
    const out: Literal[] = [];
    for (;;) {
      while (this.isOp(';')) this.next();
      if (this.tok.kind === 'eof' || (close && this.isOp(close))) return out;
      if (out.length > 0 && !this.tok.nl && !this.isOp(';', this.toks[this.i - 1])) {
        this.fail(`unexpected ${this.describe(this.tok)} token: expected \\n or ; or ${close || 'end of query'}`);
      }
      out.push(this.literal());
    }
  }

  private literal(): Literal {
    const start = this.tok;
    let lit: Literal;
    if (this.isKw('some')) {
      lit = this.someDecl();
    } else if (this.isKw('every')) {
      lit = this.every(false);
    } else if (this.isKw('not')) {
      this.next();
      if (this.isKw('every')) {
        lit = this.every(true);
      } else if (this.isKw('some')) {
        return this.fail('unexpected some keyword: not some is not allowed');
      } else {
        const expr = this.expr();
        lit = { kind: 'expr', expr, negated: true, withs: [], loc: this.loc(start) };
      }
    } else {
      const expr = this.expr();
      lit = { kind: 'expr', expr, negated: false, withs: [], loc: this.loc(start) };
    }
    while (this.isKw('with') && !(this.tok.nl && this.nest === 0)) {
      const w = this.next();
      const target = this.term();
      if (!this.isKw('as')) this.fail('expected as after with target');
      this.next();
      const value = this.termIn();
      const wm: With = { target, value, loc: this.loc(w) };
      lit.withs.push(wm);
    }
    lit.loc = this.loc(start);
    return lit;
  }

  private someDecl(): Literal {
    const start = this.next();
    const terms: Term[] = [];
    for (;;) {
      terms.push(this.termRelation());
      if (this.isOp(',') && !(this.tok.nl && this.nest === 0)) {
        this.next();
        continue;
      }
      break;
    }
    if (this.isKw('in')) {
      this.next();
      if (terms.length > 2) this.fail('unexpected , in some: at most key and value before in');
      const coll = this.termRelation();
      const lit: Literal = { kind: 'somein', value: terms[terms.length - 1]!, coll, withs: [], loc: this.loc(start), negated: false };
      if (terms.length === 2) lit.key = terms[0]!;
      return lit;
    }
    const vars: TermOf<'var'>[] = [];
    for (const t of terms) {
      if (t.type !== 'var') this.failAt('expected var in some declaration', t.loc);
      vars.push(t);
    }
    return { kind: 'some', vars, withs: [], loc: this.loc(start), negated: false };
  }

  private every(negated: boolean): Literal {
    const start = this.next();
    const first = this.term();
    let key: TermOf<'var'> | undefined;
    let value = first;
    if (this.isOp(',')) {
      this.next();
      key = first as TermOf<'var'>;
      value = this.term();
    }
    if (value.type !== 'var' || (key && key.type !== 'var')) this.failAt('expected var in every declaration', value.loc);
    if (!this.isKw('in')) this.fail('expected in after every variables');
    this.next();
    const domain = this.termRelation();
    if (!this.isOp('{')) this.fail('expected { after every domain');
    const body = this.braceBody();
    const lit: Literal = { kind: 'every', value: value as TermOf<'var'>, domain, body, withs: [], loc: this.loc(start), negated };
    if (key) lit.key = key;
    return lit;
  }

  /** An expression: a term, or `a = b` / `a := b`, or `k, v in xs` at the top. */
  private expr(): Term {
    const start = this.tok;
    let lhs = this.termIn();
    if (this.isOp(',') && this.kw.has('in') && this.nest === 0 && !this.tok.nl) {
      // `k, v in coll` (membership with key)
      this.next();
      const v = this.termRelation();
      if (!this.isKw('in')) this.fail('expected in after key, value');
      this.next();
      const coll = this.termRelation();
      lhs = this.callOp('internal.member_3', [lhs, v, coll], start, 'in');
    }
    if ((this.isOp('=') || this.isOp(':=')) && !(this.tok.nl && this.nest === 0)) {
      const op = this.next().text;
      const rhs = this.termIn();
      return this.callOp(op === '=' ? 'eq' : 'assign', [lhs, rhs], start, op);
    }
    return lhs;
  }

  private callOp(name: string, args: Term[], start: Token, op: string): Term {
    const loc = this.loc(start);
    return { type: 'call', fn: { type: 'var', name, loc }, args, loc, op };
  }

  private opNext(): boolean {
    return !(this.tok.nl && this.nest === 0);
  }

  termIn(): Term {
    const start = this.tok;
    let t = this.termRelation();
    while (this.isKw('in') && this.opNext()) {
      this.next();
      const coll = this.termRelation();
      t = this.callOp('internal.member_2', [t, coll], start, 'in');
    }
    return t;
  }

  private termRelation(): Term {
    const start = this.tok;
    let t = this.termOr();
    while (this.tok.kind === 'op' && RELATION_OPS[this.tok.text] && this.opNext()) {
      const op = this.next().text;
      const r = this.termOr();
      t = this.callOp(RELATION_OPS[op]!, [t, r], start, op);
    }
    return t;
  }

  private termOr(noOr = false): Term {
    const start = this.tok;
    let t = this.termAnd();
    while (!noOr && this.isOp('|') && this.opNext()) {
      this.next();
      const r = this.termAnd();
      t = this.callOp('or', [t, r], start, '|');
    }
    return t;
  }

  private termAnd(): Term {
    const start = this.tok;
    let t = this.termArith();
    while (this.isOp('&') && this.opNext()) {
      this.next();
      const r = this.termArith();
      t = this.callOp('and', [t, r], start, '&');
    }
    return t;
  }

  private termArith(): Term {
    const start = this.tok;
    let t = this.termFactor();
    while ((this.isOp('+') || this.isOp('-')) && this.opNext()) {
      const op = this.next().text;
      const r = this.termFactor();
      t = this.callOp(op === '+' ? 'plus' : 'minus', [t, r], start, op);
    }
    return t;
  }

  private termFactor(): Term {
    const start = this.tok;
    let t = this.unary();
    while ((this.isOp('*') || this.isOp('/') || this.isOp('%')) && this.opNext()) {
      const op = this.next().text;
      const r = this.unary();
      t = this.callOp(op === '*' ? 'mul' : op === '/' ? 'div' : 'rem', [t, r], start, op);
    }
    return t;
  }

  private unary(): Term {
    if (this.isOp('-')) {
      const start = this.next();
      const nt = this.tok;
      if (nt.kind === 'number' && nt.offset === start.end) {
        this.next();
        const value = numberFromText('-' + nt.text, !/[.eE]/.test(nt.text));
        return this.refSuffix({ type: 'scalar', value: typeof value === 'number' && Object.is(value, -0) ? 0 : value, loc: this.loc(start) }, start);
      }
      this.enter();
      const operand = this.unary();
      this.leave();
      const zero: Term = { type: 'scalar', value: 0, loc: this.loc(start) };
      return this.callOp('minus', [zero, operand], start, '-');
    }
    return this.term();
  }

  /** A term with its ref suffixes and calls. */
  term(): Term {
    this.enter();
    const start = this.tok;
    const t = this.refSuffix(this.primary(), start);
    this.leave();
    return t;
  }

  private refSuffix(t0: Term, start: Token): Term {
    let t = t0;
    for (;;) {
      if (this.isOp('.') && !this.tok.nl) {
        const dot = this.next();
        const name = this.next();
        if (name.kind !== 'ident' || name.offset !== dot.end) this.fail('expected a name after .', name);
        const part: Term = { type: 'scalar', value: name.text, loc: this.loc(name) };
        t = t.type === 'ref' ? { type: 'ref', head: t.head, path: [...t.path, part], loc: this.loc(start) } : { type: 'ref', head: t, path: [part], loc: this.loc(start) };
        continue;
      }
      if (this.isOp('[') && !this.tok.nl) {
        this.next();
        this.nest++;
        const k = this.termIn();
        this.nest--;
        this.expectOp(']');
        t = t.type === 'ref' ? { type: 'ref', head: t.head, path: [...t.path, k], loc: this.loc(start) } : { type: 'ref', head: t, path: [k], loc: this.loc(start) };
        continue;
      }
      if (this.isOp('(') && !this.tok.nl && this.isCallable(t)) {
        this.next();
        this.nest++;
        const args: Term[] = [];
        if (!this.isOp(')')) {
          for (;;) {
            args.push(this.termIn());
            if (this.isOp(',')) {
              this.next();
              continue;
            }
            break;
          }
        }
        this.nest--;
        this.expectOp(')');
        // set() is the empty set's literal
        if (t.type === 'var' && t.name === 'set' && args.length === 0) t = { type: 'set', items: [], loc: this.loc(start) };
        else t = { type: 'call', fn: t, args, loc: this.loc(start) };
        continue;
      }
      return t;
    }
  }

  private isCallable(t: Term): boolean {
    if (t.type === 'var') return true;
    return t.type === 'ref' && t.head.type === 'var' && t.path.every((p) => p.type === 'scalar' && typeof p.value === 'string');
  }

  private primary(): Term {
    const t = this.tok;
    switch (t.kind) {
      case 'number': {
        this.next();
        const value = numberFromText(t.text, !/[.eE]/.test(t.text));
        return { type: 'scalar', value, loc: this.loc(t) };
      }
      case 'string':
        this.next();
        return { type: 'scalar', value: t.text, loc: this.loc(t) };
      case 'ident': {
        if (t.text === 'true' || t.text === 'false') {
          this.next();
          return { type: 'scalar', value: t.text === 'true', loc: this.loc(t) };
        }
        if (t.text === 'null') {
          this.next();
          return { type: 'scalar', value: null, loc: this.loc(t) };
        }
        if (RESERVED.has(t.text) || this.kw.has(t.text)) {
          if (!(t.text === 'contains' && this.isOp('(', this.peek()))) this.fail(`unexpected ${t.text} keyword`);
        }
        this.next();
        if (t.text === '_') return { type: 'var', name: `$_${this.wildcards++}`, loc: this.loc(t) };
        return { type: 'var', name: t.text, loc: this.loc(t) };
      }
      case 'op':
        switch (t.text) {
          case '(': {
            this.next();
            this.nest++;
            const inner = this.expr();
            this.nest--;
            this.expectOp(')');
            return inner;
          }
          case '[':
            return this.arrayTerm();
          case '{':
            return this.braceTerm();
        }
        break;
      case 'eof':
        this.fail('unexpected end of input');
    }
    return this.fail(`unexpected ${this.describe(t)} token`);
  }

  /** A literal that is plain JSON (policy_data) is read in one step, its tokens skipped. */
  private jsonConstant(): Term | null {
    const start = this.tok;
    const r = scanJSON(this.src, start.offset, this.maxDepth - this.depth);
    if (!r) return null;
    const c = r.value;
    // only composites: scalars are cheap, and a number must stay a Rego scalar term
    if (typeof c !== 'object' || c === null) return null;
    const save = this.i;
    while (this.tok.kind !== 'eof' && this.tok.offset < r.end) this.i++;
    const last = this.toks[this.i - 1]!;
    if (last.end !== r.end) {
      // the JSON ended inside a token: not a plain literal after all
      this.i = save;
      return null;
    }
    return { type: 'value', value: c, loc: this.loc(start, last) };
  }

  private arrayTerm(): Term {
    const fast = this.jsonConstant();
    if (fast) return fast;
    const start = this.next();
    this.nest++;
    if (this.isOp(']')) {
      this.nest--;
      this.next();
      return { type: 'array', items: [], loc: this.loc(start) };
    }
    const first = this.termInNoOr();
    if (this.isOp('|')) {
      this.next();
      const body = this.comprBody(']');
      this.nest--;
      this.expectOp(']');
      return { type: 'arraycompr', term: first, body, loc: this.loc(start) };
    }
    const items = [first];
    while (this.isOp(',')) {
      this.next();
      if (this.isOp(']')) break;
      items.push(this.termIn());
    }
    this.nest--;
    this.expectOp(']');
    return { type: 'array', items, loc: this.loc(start) };
  }

  private braceTerm(): Term {
    const fast = this.jsonConstant();
    if (fast) return fast;
    const start = this.next();
    this.nest++;
    if (this.isOp('}')) {
      this.nest--;
      this.next();
      return { type: 'object', items: [], loc: this.loc(start) };
    }
    const first = this.termInNoOr();
    if (this.isOp(':')) {
      this.next();
      const v = this.termInNoOr();
      if (this.isOp('|')) {
        this.next();
        const body = this.comprBody('}');
        this.nest--;
        this.expectOp('}');
        return { type: 'objcompr', key: first, value: v, body, loc: this.loc(start) };
      }
      const items: [Term, Term][] = [[first, v]];
      while (this.isOp(',')) {
        this.next();
        if (this.isOp('}')) break;
        const k = this.termIn();
        this.expectOp(':');
        items.push([k, this.termIn()]);
      }
      this.nest--;
      this.expectOp('}');
      return { type: 'object', items, loc: this.loc(start) };
    }
    if (this.isOp('|')) {
      this.next();
      const body = this.comprBody('}');
      this.nest--;
      this.expectOp('}');
      return { type: 'setcompr', term: first, body, loc: this.loc(start) };
    }
    const items = [first];
    while (this.isOp(',')) {
      this.next();
      if (this.isOp('}')) break;
      items.push(this.termIn());
    }
    this.nest--;
    this.expectOp('}');
    return { type: 'set', items, loc: this.loc(start) };
  }

  /** A term where a top-level `|` starts a comprehension body rather than a union. */
  private termInNoOr(): Term {
    const start = this.tok;
    // Relation level with the or-level disabled for the first operand chain.
    let t = this.termOr(true);
    while (this.tok.kind === 'op' && RELATION_OPS[this.tok.text]) {
      const op = this.next().text;
      const r = this.termOr(true);
      t = this.callOp(RELATION_OPS[op]!, [t, r], start, op);
    }
    while (this.isKw('in')) {
      this.next();
      const coll = this.termOr(true);
      t = this.callOp('internal.member_2', [t, coll], start, 'in');
    }
    return t;
  }

  private comprBody(close: string): Body {
    const saveNest = this.nest;
    this.nest = 0;
    this.enter();
    const body = this.query(close);
    this.leave();
    this.nest = saveNest;
    if (body.length === 0) this.fail('empty comprehension body');
    return body;
  }
}

/** Rego's reserved words, which no variable, rule or package part may be called. */
export function isKeyword(name: string): boolean {
  return RESERVED.has(name) || KEYWORDS_V1.has(name);
}
