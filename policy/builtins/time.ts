// time.*: nanoseconds since the epoch (exact integers), Go layouts, time zones through Intl.
import { BuiltinError } from '../errors.js';
import { normInt, type Value } from '../values.js';
import { def, num, str, typeErr, type BuiltinTable } from './types.js';

const NS_PER_MS = 1_000_000n;
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const RFC3339_NANO = '2006-01-02T15:04:05.999999999Z07:00';

interface Parts {
  year: number;
  month: number; // 1-12
  day: number;
  hour: number;
  minute: number;
  second: number;
  nanos: number;
  weekday: number; // 0 = Sunday
  yday: number;
  /** offset from UTC in seconds */
  offset: number;
  zone: string;
}

function nsOf(fn: string, v: Value, pos = 1): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return BigInt(Math.trunc(v));
    return BigInt(v);
  }
  throw typeErr(fn, pos, 'number', v);
}

const zoneCache = new Map<string, Intl.DateTimeFormat>();

function zoneFormat(fn: string, tz: string): Intl.DateTimeFormat | null {
  if (tz === '' || tz === 'UTC') return null;
  let f = zoneCache.get(tz);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat('en-US', {
        timeZone: tz === 'Local' ? undefined : tz,
        hourCycle: 'h23',
        year: 'numeric',
        month: 'numeric',
        day: 'numeric',
        hour: 'numeric',
        minute: 'numeric',
        second: 'numeric',
        timeZoneName: 'short',
      });
    } catch {
      throw new BuiltinError(`${fn}: unknown time zone ${tz}`);
    }
    if (zoneCache.size > 64) zoneCache.clear();
    zoneCache.set(tz, f);
  }
  return f;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n !== b < 0n ? q - 1n : q;
}

export function partsOf(fn: string, ns: bigint, tz: string): Parts {
  const ms = floorDiv(ns, NS_PER_MS);
  const nanos = Number(ns - ms * NS_PER_MS);
  const msn = Number(ms);
  if (!Number.isFinite(msn) || Math.abs(msn) > 8.64e15) throw new BuiltinError(`${fn}: time out of range`);
  const d = new Date(msn);
  const nanosTotal = (((msn % 1000) + 1000) % 1000) * 1_000_000 + nanos;
  const f = zoneFormat(fn, tz);
  let p: Omit<Parts, 'weekday' | 'yday'>;
  if (!f) {
    p = {
      year: d.getUTCFullYear(),
      month: d.getUTCMonth() + 1,
      day: d.getUTCDate(),
      hour: d.getUTCHours(),
      minute: d.getUTCMinutes(),
      second: d.getUTCSeconds(),
      nanos: nanosTotal,
      offset: 0,
      zone: 'UTC',
    };
  } else {
    const parts: Record<string, string> = {};
    for (const x of f.formatToParts(d)) parts[x.type] = x.value;
    const year = Number(parts.year);
    const local = Date.UTC(year, Number(parts.month) - 1, Number(parts.day), Number(parts.hour), Number(parts.minute), Number(parts.second));
    const offset = Math.round((local - (msn - (((msn % 1000) + 1000) % 1000))) / 1000);
    p = {
      year,
      month: Number(parts.month),
      day: Number(parts.day),
      hour: Number(parts.hour),
      minute: Number(parts.minute),
      second: Number(parts.second),
      nanos: nanosTotal,
      offset,
      zone: parts.timeZoneName ?? tz,
    };
  }
  const utcDay = Date.UTC(p.year, p.month - 1, p.day);
  const weekday = new Date(utcDay).getUTCDay();
  const yday = Math.round((utcDay - Date.UTC(p.year, 0, 1)) / 86400000) + 1;
  return { ...p, weekday, yday };
}

function timeArg(fn: string, v: Value): { ns: bigint; tz: string; layout?: string } {
  if (Array.isArray(v)) {
    if (v.length < 1 || v.length > 3) throw typeErr(fn, 1, 'one of {number, array[number, string]}', v);
    const tz = v[1] ?? 'UTC';
    if (typeof tz !== 'string') throw typeErr(fn, 1, 'array[number, string]', v);
    const out: { ns: bigint; tz: string; layout?: string } = { ns: nsOf(fn, v[0]!), tz };
    if (v.length === 3) {
      if (typeof v[2] !== 'string') throw typeErr(fn, 1, 'array[number, string, string]', v);
      out.layout = v[2];
    }
    return out;
  }
  return { ns: nsOf(fn, v), tz: 'UTC' };
}

// ---- Go layouts

type Tok = { lit: string } | { f: string };

const LAYOUT_TOKENS = [
  'January', 'Monday', '2006', '-07:00:00', 'Z07:00:00', '-07:00', 'Z07:00', '-0700', 'Z0700', '-07', 'Z07', 'Jan', 'Mon', 'MST',
  '002', '__2', '01', '02', '_2', '03', '04', '05', '06', '15', 'PM', 'pm', '1', '2', '3', '4', '5',
];

function layoutTokens(layout: string): Tok[] {
  const out: Tok[] = [];
  let lit = '';
  for (let i = 0; i < layout.length; ) {
    // fractional seconds: .000 / ,999
    const frac = /^[.,](0+|9+)(?![0-9])/.exec(layout.slice(i));
    if (frac) {
      if (lit) {
        out.push({ lit });
        lit = '';
      }
      out.push({ f: frac[0] });
      i += frac[0].length;
      continue;
    }
    const t = LAYOUT_TOKENS.find((x) => layout.startsWith(x, i));
    if (t) {
      if (lit) {
        out.push({ lit });
        lit = '';
      }
      out.push({ f: t });
      i += t.length;
      continue;
    }
    lit += layout[i++];
  }
  if (lit) out.push({ lit });
  return out;
}

function p2(n: number): string {
  return String(n).padStart(2, '0');
}

function zoneText(off: number, colon: boolean, seconds: boolean, hoursOnly: boolean): string {
  const sign = off < 0 ? '-' : '+';
  const a = Math.abs(off);
  const h = p2(Math.floor(a / 3600));
  const m = p2(Math.floor((a % 3600) / 60));
  const s = p2(a % 60);
  if (hoursOnly) return sign + h;
  return sign + h + (colon ? ':' : '') + m + (seconds ? (colon ? ':' : '') + s : '');
}

export function formatLayout(p: Parts, layout: string): string {
  let out = '';
  for (const t of layoutTokens(layout)) {
    if ('lit' in t) {
      out += t.lit;
      continue;
    }
    const f = t.f;
    switch (f) {
      case '2006':
        out += String(p.year).padStart(4, '0');
        break;
      case '06':
        out += p2(p.year % 100);
        break;
      case 'January':
        out += MONTHS[p.month - 1];
        break;
      case 'Jan':
        out += MONTHS[p.month - 1]!.slice(0, 3);
        break;
      case '01':
        out += p2(p.month);
        break;
      case '1':
        out += String(p.month);
        break;
      case 'Monday':
        out += DAYS[p.weekday];
        break;
      case 'Mon':
        out += DAYS[p.weekday]!.slice(0, 3);
        break;
      case '02':
        out += p2(p.day);
        break;
      case '_2':
        out += String(p.day).padStart(2, ' ');
        break;
      case '2':
        out += String(p.day);
        break;
      case '002':
        out += String(p.yday).padStart(3, '0');
        break;
      case '__2':
        out += String(p.yday).padStart(3, ' ');
        break;
      case '15':
        out += p2(p.hour);
        break;
      case '03':
        out += p2(p.hour % 12 === 0 ? 12 : p.hour % 12);
        break;
      case '3':
        out += String(p.hour % 12 === 0 ? 12 : p.hour % 12);
        break;
      case '04':
        out += p2(p.minute);
        break;
      case '4':
        out += String(p.minute);
        break;
      case '05':
        out += p2(p.second);
        break;
      case '5':
        out += String(p.second);
        break;
      case 'PM':
        out += p.hour >= 12 ? 'PM' : 'AM';
        break;
      case 'pm':
        out += p.hour >= 12 ? 'pm' : 'am';
        break;
      case 'MST':
        out += p.zone;
        break;
      default:
        if (f.startsWith('Z') && p.offset === 0) out += 'Z';
        else if (f.endsWith('07:00:00')) out += zoneText(p.offset, true, true, false);
        else if (f.endsWith('07:00')) out += zoneText(p.offset, true, false, false);
        else if (f.endsWith('0700')) out += zoneText(p.offset, false, false, false);
        else if (f.endsWith('07')) out += zoneText(p.offset, false, false, true);
        else if (/^[.,]0+$/.test(f)) out += f[0] + String(p.nanos).padStart(9, '0').slice(0, f.length - 1);
        else if (/^[.,]9+$/.test(f)) {
          const digits = String(p.nanos).padStart(9, '0').slice(0, f.length - 1).replace(/0+$/, '');
          if (digits) out += f[0] + digits;
        }
    }
  }
  return out;
}

function nextIsFraction(toks: Tok[], ti: number): boolean {
  const n = toks[ti + 1];
  return n !== undefined && 'f' in n && /^[.,]/.test(n.f);
}

/** Parses a value with a Go layout; returns ns since the epoch. */
export function parseLayout(fn: string, layout: string, value: string): bigint {
  let i = 0;
  let year = 1;
  let month = 1;
  let day = 1;
  let hour = 0;
  let minute = 0;
  let second = 0;
  let nanos = 0;
  let pm: boolean | null = null;
  let offset: number | null = null;
  const bad = (): never => {
    throw new BuiltinError(`${fn}: parsing time ${JSON.stringify(value)} as ${JSON.stringify(layout)}: cannot parse`);
  };
  const digits = (min: number, max: number): number => {
    const m = new RegExp(`^\\d{${min},${max}}`).exec(value.slice(i));
    if (!m) return bad();
    i += m[0].length;
    return Number(m[0]);
  };
  const word = (list: string[], len?: number): number => {
    for (let k = 0; k < list.length; k++) {
      const w = len ? list[k]!.slice(0, len) : list[k]!;
      if (value.slice(i, i + w.length).toLowerCase() === w.toLowerCase()) {
        i += w.length;
        return k;
      }
    }
    return bad();
  };
  const toks = layoutTokens(layout);
  for (let ti = 0; ti < toks.length; ti++) {
    const t = toks[ti]!;
    if ('lit' in t) {
      if (!value.startsWith(t.lit, i)) bad();
      i += t.lit.length;
      continue;
    }
    const f = t.f;
    switch (f) {
      case '2006':
        year = digits(4, 4);
        break;
      case '06':
        year = digits(2, 2);
        year += year >= 69 ? 1900 : 2000;
        break;
      case 'January':
        month = word(MONTHS) + 1;
        break;
      case 'Jan':
        month = word(MONTHS, 3) + 1;
        break;
      case '01':
        month = digits(2, 2);
        break;
      case '1':
        month = digits(1, 2);
        break;
      case 'Monday':
        word(DAYS);
        break;
      case 'Mon':
        word(DAYS, 3);
        break;
      case '02':
        day = digits(2, 2);
        break;
      case '_2':
        if (value[i] === ' ') i++;
        day = digits(1, 2);
        break;
      case '2':
        day = digits(1, 2);
        break;
      case '002':
      case '__2':
        digits(1, 3);
        break;
      case '15':
        hour = digits(1, 2);
        break;
      case '03':
      case '3':
        hour = digits(f === '03' ? 2 : 1, 2);
        break;
      case '04':
      case '4':
        minute = digits(f === '04' ? 2 : 1, 2);
        break;
      case '05':
      case '5':
        second = digits(f === '05' ? 2 : 1, 2);
        // Go accepts fractional seconds after seconds even if the layout has none
        if ((value[i] === '.' || value[i] === ',') && /\d/.test(value[i + 1] ?? '') && !nextIsFraction(toks, ti)) {
          i++;
          const m = /^\d+/.exec(value.slice(i))!;
          nanos = Number(m[0].slice(0, 9).padEnd(9, '0'));
          i += m[0].length;
        }
        break;
      case 'PM':
      case 'pm': {
        const s = value.slice(i, i + 2).toUpperCase();
        if (s !== 'AM' && s !== 'PM') bad();
        pm = s === 'PM';
        i += 2;
        break;
      }
      case 'MST': {
        const m = /^[A-Z]{3,5}/.exec(value.slice(i));
        if (!m) bad();
        i += m![0].length;
        if (m![0] === 'UTC' || m![0] === 'GMT') offset = 0;
        break;
      }
      default:
        if (/^[.,][09]+$/.test(f)) {
          if (value[i] === '.' || value[i] === ',') {
            i++;
            const m = /^\d+/.exec(value.slice(i));
            if (!m) bad();
            nanos = Number(m![0].slice(0, 9).padEnd(9, '0'));
            i += m![0].length;
          } else if (f[1] === '0') bad();
          break;
        }
        if (f.startsWith('Z') && (value[i] === 'Z' || value[i] === 'z')) {
          i++;
          offset = 0;
          break;
        }
        {
          const m = /^([+-])(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?/.exec(value.slice(i));
          if (!m) bad();
          i += m![0].length;
          offset = (m![1] === '-' ? -1 : 1) * (Number(m![2]) * 3600 + Number(m![3] ?? 0) * 60 + Number(m![4] ?? 0));
        }
    }
  }
  if (i !== value.length) throw new BuiltinError(`${fn}: parsing time ${JSON.stringify(value)}: extra text: ${JSON.stringify(value.slice(i))}`);
  if (pm !== null) {
    if (hour > 12) bad();
    if (pm && hour < 12) hour += 12;
    if (!pm && hour === 12) hour = 0;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59) {
    throw new BuiltinError(`${fn}: parsing time ${JSON.stringify(value)}: value out of range`);
  }
  const dt = new Date(0);
  dt.setUTCFullYear(year, month - 1, day);
  dt.setUTCHours(hour, minute, second, 0);
  if (dt.getUTCDate() !== day) throw new BuiltinError(`${fn}: parsing time ${JSON.stringify(value)}: day out of range`);
  return BigInt(dt.getTime()) * NS_PER_MS + BigInt(nanos) - BigInt((offset ?? 0) * 1000) * NS_PER_MS;
}

const GO_LAYOUTS: Record<string, string> = {
  ANSIC: 'Mon Jan _2 15:04:05 2006',
  UnixDate: 'Mon Jan _2 15:04:05 MST 2006',
  RubyDate: 'Mon Jan 02 15:04:05 -0700 2006',
  RFC822: '02 Jan 06 15:04 MST',
  RFC822Z: '02 Jan 06 15:04 -0700',
  RFC850: 'Monday, 02-Jan-06 15:04:05 MST',
  RFC1123: 'Mon, 02 Jan 2006 15:04:05 MST',
  RFC1123Z: 'Mon, 02 Jan 2006 15:04:05 -0700',
  RFC3339: '2006-01-02T15:04:05Z07:00',
  RFC3339Nano: RFC3339_NANO,
  Kitchen: '3:04PM',
  Stamp: 'Jan _2 15:04:05',
  StampMilli: 'Jan _2 15:04:05.000',
  StampMicro: 'Jan _2 15:04:05.000000',
  StampNano: 'Jan _2 15:04:05.000000000',
  DateTime: '2006-01-02 15:04:05',
  DateOnly: '2006-01-02',
  TimeOnly: '15:04:05',
};

const DURATION_UNITS: Record<string, number> = { ns: 1, us: 1e3, 'µs': 1e3, 'μs': 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

export function parseDuration(fn: string, s: string): bigint {
  const m = /^([+-]?)(.*)$/.exec(s)!;
  const sign = m[1] === '-' ? -1n : 1n;
  let rest = m[2]!;
  if (rest === '0') return 0n;
  if (rest === '') throw new BuiltinError(`${fn}: time: invalid duration ${JSON.stringify(s)}`);
  let total = 0;
  while (rest.length > 0) {
    const p = /^(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)/.exec(rest);
    if (!p || (p[1] === '' && (p[2] === undefined || p[2] === ''))) throw new BuiltinError(`${fn}: time: invalid duration ${JSON.stringify(s)}`);
    const unit = DURATION_UNITS[p[3]!]!;
    total += Number(p[1] || '0') * unit + (p[2] ? Number('0.' + p[2]) * unit : 0);
    rest = rest.slice(p[0].length);
  }
  return sign * BigInt(Math.round(total));
}

export function register(t: BuiltinTable): void {
  def(t, 'time.now_ns', 0, (_a, b) => {
    let v = b.memo.get('time.now_ns');
    if (v === undefined) {
      v = normInt(BigInt(Date.now()) * NS_PER_MS);
      b.memo.set('time.now_ns', v);
    }
    return v;
  });
  def(t, 'time.parse_rfc3339_ns', 1, (a) => normInt(parseLayout('time.parse_rfc3339_ns', GO_LAYOUTS.RFC3339!, str('time.parse_rfc3339_ns', a, 0))));
  def(t, 'time.parse_ns', 2, (a) => {
    const layout = str('time.parse_ns', a, 0);
    return normInt(parseLayout('time.parse_ns', GO_LAYOUTS[layout] ?? layout, str('time.parse_ns', a, 1)));
  });
  def(t, 'time.parse_duration_ns', 1, (a) => normInt(parseDuration('time.parse_duration_ns', str('time.parse_duration_ns', a, 0))));
  def(t, 'time.date', 1, (a) => {
    const x = timeArg('time.date', a[0]!);
    const p = partsOf('time.date', x.ns, x.tz);
    return [p.year, p.month, p.day];
  });
  def(t, 'time.clock', 1, (a) => {
    const x = timeArg('time.clock', a[0]!);
    const p = partsOf('time.clock', x.ns, x.tz);
    return [p.hour, p.minute, p.second];
  });
  def(t, 'time.weekday', 1, (a) => {
    const x = timeArg('time.weekday', a[0]!);
    return DAYS[partsOf('time.weekday', x.ns, x.tz).weekday]!;
  });
  def(t, 'time.format', 1, (a) => {
    const x = timeArg('time.format', a[0]!);
    const layout = x.layout === undefined ? RFC3339_NANO : (GO_LAYOUTS[x.layout] ?? x.layout);
    return formatLayout(partsOf('time.format', x.ns, x.tz), layout);
  });
  def(t, 'time.add_date', 4, (a) => {
    const ns = nsOf('time.add_date', a[0]!);
    const [y, m, d] = [1, 2, 3].map((i) => Number(num('time.add_date', a, i)));
    const ms = floorDiv(ns, NS_PER_MS);
    const rem = ns - ms * NS_PER_MS;
    const dt = new Date(Number(ms));
    // setUTCFullYear, not Date.UTC: Date.UTC maps years 0-99 to 1900-1999
    const fixed = new Date(0);
    fixed.setUTCFullYear(dt.getUTCFullYear() + y!, dt.getUTCMonth() + m!, dt.getUTCDate() + d!);
    fixed.setUTCHours(dt.getUTCHours(), dt.getUTCMinutes(), dt.getUTCSeconds(), dt.getUTCMilliseconds());
    if (!Number.isFinite(fixed.getTime())) throw new BuiltinError('time.add_date: time outside of valid range');
    return normInt(BigInt(fixed.getTime()) * NS_PER_MS + rem);
  });
  def(t, 'time.diff', 2, (a) => {
    const x = timeArg('time.diff', a[0]!);
    const y = timeArg('time.diff', a[1]!);
    let p1 = partsOf('time.diff', x.ns, x.tz);
    let p2v = partsOf('time.diff', y.ns, y.tz);
    if (x.ns > y.ns) [p1, p2v] = [p2v, p1];
    let years = p2v.year - p1.year;
    let months = p2v.month - p1.month;
    let days = p2v.day - p1.day;
    let hours = p2v.hour - p1.hour;
    let mins = p2v.minute - p1.minute;
    let secs = p2v.second - p1.second;
    if (secs < 0) (secs += 60), mins--;
    if (mins < 0) (mins += 60), hours--;
    if (hours < 0) (hours += 24), days--;
    if (days < 0) {
      days += new Date(Date.UTC(p1.year, p1.month, 0)).getUTCDate();
      months--;
    }
    if (months < 0) (months += 12), years--;
    return [years, months, days, hours, mins, secs];
  });
}
