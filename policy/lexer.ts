// Rego's tokens. A token records whether a line break came before it: in a rule body a line
// break separates literals, inside brackets it does not, and the parser decides which applies.
import { PolicyError } from './errors.js';

export type TokenKind = 'ident' | 'number' | 'string' | 'op' | 'eof';

export interface Token {
  kind: TokenKind;
  /** Identifier name, operator text, number text, or the decoded string. */
  text: string;
  /** A raw (backquoted) string. */
  raw?: boolean;
  row: number;
  col: number;
  offset: number;
  end: number;
  /** A line break between the previous token and this one. */
  nl: boolean;
}

const OPS2 = new Set([':=', '==', '!=', '<=', '>=']);
const OPS1 = new Set(['=', '<', '>', '+', '-', '*', '/', '%', '&', '|', '.', ',', ':', ';', '[', ']', '{', '}', '(', ')']);

export interface LexLimits {
  maxTokens: number;
}

export function tokenize(src: string, file: string, limits: LexLimits): Token[] {
  const out: Token[] = [];
  let i = 0;
  let row = 1;
  let lineStart = 0;
  let nl = false;
  const n = src.length;
  const err = (msg: string, at: number, r = row, ls = lineStart): never => {
    throw new PolicyError('rego_parse_error', msg, { file, row: r, col: at - ls + 1 });
  };
  while (i < n) {
    const c = src.charCodeAt(i);
    if (c === 10) {
      i++;
      row++;
      lineStart = i;
      nl = true;
      continue;
    }
    if (c === 32 || c === 9 || c === 13 || c === 0xfeff) {
      i++;
      continue;
    }
    if (c === 35) {
      // # comment to end of line
      while (i < n && src.charCodeAt(i) !== 10) i++;
      continue;
    }
    if (out.length >= limits.maxTokens) err(`more than ${limits.maxTokens} tokens`, i);
    const start = i;
    const col = i - lineStart + 1;
    const tokRow = row;
    const push = (kind: TokenKind, text: string, raw?: boolean) => {
      const t: Token = { kind, text, row: tokRow, col, offset: start, end: i, nl };
      if (raw) t.raw = true;
      out.push(t);
      nl = false;
    };
    if ((c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95) {
      i++;
      while (i < n) {
        const d = src.charCodeAt(i);
        if ((d >= 65 && d <= 90) || (d >= 97 && d <= 122) || d === 95 || (d >= 48 && d <= 57)) i++;
        else break;
      }
      push('ident', src.slice(start, i));
      continue;
    }
    if (c >= 48 && c <= 57) {
      while (i < n && isDigit(src.charCodeAt(i))) i++;
      if (src[i] === '.' && isDigit(src.charCodeAt(i + 1))) {
        i++;
        while (i < n && isDigit(src.charCodeAt(i))) i++;
      }
      if (src[i] === 'e' || src[i] === 'E') {
        let j = i + 1;
        if (src[j] === '+' || src[j] === '-') j++;
        if (isDigit(src.charCodeAt(j))) {
          i = j;
          while (i < n && isDigit(src.charCodeAt(i))) i++;
        }
      }
      if (i < n && isIdentStart(src.charCodeAt(i))) err(`invalid number literal ${src.slice(start, i + 1)}`, start);
      push('number', src.slice(start, i));
      continue;
    }
    if (c === 34) {
      i++;
      let s = '';
      let segStart = i;
      for (;;) {
        if (i >= n) err('non-terminated string', start, tokRow, lineStart);
        const d = src.charCodeAt(i);
        if (d === 34) {
          s += src.slice(segStart, i);
          i++;
          break;
        }
        if (d === 10) err('non-terminated string', start);
        if (d === 92) {
          s += src.slice(segStart, i);
          const e = src[i + 1];
          i += 2;
          switch (e) {
            case '"':
              s += '"';
              break;
            case '\\':
              s += '\\';
              break;
            case '/':
              s += '/';
              break;
            case 'b':
              s += '\b';
              break;
            case 'f':
              s += '\f';
              break;
            case 'n':
              s += '\n';
              break;
            case 'r':
              s += '\r';
              break;
            case 't':
              s += '\t';
              break;
            case 'u': {
              const h = src.slice(i, i + 4);
              if (!/^[0-9a-fA-F]{4}$/.test(h)) err('illegal escape sequence', i - 2);
              s += String.fromCharCode(parseInt(h, 16));
              i += 4;
              break;
            }
            default:
              err('illegal escape sequence', i - 2);
          }
          segStart = i;
          continue;
        }
        i++;
      }
      push('string', s);
      continue;
    }
    if (c === 96) {
      i++;
      const s0 = i;
      while (i < n && src.charCodeAt(i) !== 96) {
        if (src.charCodeAt(i) === 10) {
          row++;
          lineStart = i + 1;
        }
        i++;
      }
      if (i >= n) err('non-terminated raw string', start, tokRow, start - col + 1);
      const s = src.slice(s0, i);
      i++;
      push('string', s, true);
      continue;
    }
    const two = src.slice(i, i + 2);
    if (OPS2.has(two)) {
      i += 2;
      push('op', two);
      continue;
    }
    const one = src[i]!;
    if (OPS1.has(one)) {
      i++;
      push('op', one);
      continue;
    }
    err(`illegal token ${JSON.stringify(src.slice(i, i + 1))}`, i);
  }
  out.push({ kind: 'eof', text: '', row, col: i - lineStart + 1, offset: i, end: i, nl: true });
  return out;
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function isIdentStart(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
}
