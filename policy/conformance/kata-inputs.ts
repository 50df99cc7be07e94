// Does our agent present requests to the policy exactly as Kata's agent does? regorus's Kata
// corpus logs the JSON Kata's agent gave its engine for each request (tests/kata/data/*/inputs.txt).
// Each logged request is encoded as protobuf with our schema, decoded, and serialised by
// policy/input.ts; the text must equal the logged text byte for byte.
//   npx tsx policy/conformance/kata-inputs.ts <regorus>/tests/kata/data
// The corpus predates some upstream fields our schema (upstream's today) has; those are taken out
// of our output before comparing, and listed. CopyFileRequest is not compared: the corpus's agent
// logged the raw request, today's presents file metadata (PolicyCopyFileRequest), as ours does.
import fs from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { messageType } from '../../proto/registry.js';
import { policyInput } from '../input.js';

/**
 * Fields upstream added (or renamed) since some of the corpus was logged: [what, the logged text
 * is from before it when this matches, from, to]. Each is taken out only of lines logged before it.
 */
export const NEWER_FIELDS: [string, RegExp, RegExp, string][] = [
  ['Storage.shared (added)', /"mount_point":(?![^}]*"shared":)/, /,"shared":false/g, ''],
  ['Route.flags, Route.mtu (added)', /"Routes":\[\{(?![^}]*"flags":)/, /,"flags":0,"mtu":0/g, ''],
  ['Interface.pciPath renamed devicePath (same number)', /"pciPath":/, /"devicePath":/g, '"pciPath":'],
  ['CreateContainer/ExecProcess stdio ports (added)', /^(?!.*"stdin_port":)/, /,"stdin_port":0,"stdout_port":0,"stderr_port":0/g, ''],
];

/** The logged JSON as a protobufjs object of type `t` (null messages left out, `type_` back to `type`). */
function fromLogged(t: protobuf.Type, j: Record<string, unknown>): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of t.fieldsArray) {
    const key = f.name === 'type' ? 'type_' : f.name;
    const v = j[key];
    if (v === undefined || v === null) continue;
    const conv = (x: unknown): unknown =>
      f.resolvedType instanceof protobuf.Type ? fromLogged(f.resolvedType, x as Record<string, unknown>) : f.type === 'bytes' ? Uint8Array.from(x as number[]) : x;
    if (f.map) o[f.name] = Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, conv(x)]));
    else if (f.repeated) o[f.name] = (v as unknown[]).map(conv);
    else o[f.name] = conv(v);
  }
  return o;
}

export interface InputsReport {
  compared: number;
  identical: number;
  skipped: Record<string, number>;
  mismatches: { file: string; line: number; ep: string; ours: string; logged: string }[];
}

export function checkInputs(dir: string): InputsReport {
  const r: InputsReport = { compared: 0, identical: 0, skipped: {}, mismatches: [] };
  for (const c of fs.readdirSync(dir).sort()) {
    const file = path.join(dir, c, 'inputs.txt');
    if (!fs.existsSync(file)) continue;
    fs.readFileSync(file, 'utf8')
      .split(/\r?\n/)
      .forEach((line, i) => {
        const m = /^\["ep":"([A-Za-z]+)",(.*)\],$/.exec(line);
        if (!m) return;
        const ep = m[1]!;
        const logged = m[2]!;
        if (ep === 'AllowRequestsFailingPolicy' || ep === 'CopyFileRequest') {
          r.skipped[ep] = (r.skipped[ep] ?? 0) + 1;
          return;
        }
        const t = messageType(`grpc.${ep}`);
        const msg = t.decode(t.encode(t.fromObject(fromLogged(t, JSON.parse(logged) as Record<string, unknown>))).finish());
        let ours = policyInput(`grpc.${ep}`, msg);
        for (const [, before, from, to] of NEWER_FIELDS) if (before.test(logged)) ours = ours.replace(from, to);
        r.compared++;
        if (ours === logged) r.identical++;
        else r.mismatches.push({ file: `${c}/inputs.txt`, line: i + 1, ep, ours, logged });
      });
  }
  return r;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename)) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: tsx policy/conformance/kata-inputs.ts <regorus>/tests/kata/data');
    process.exit(2);
  }
  const r = checkInputs(dir);
  for (const m of r.mismatches.slice(0, 5)) {
    let k = 0;
    while (m.ours[k] === m.logged[k]) k++;
    console.log(`${m.file}:${m.line} ${m.ep} differs at ${k}:\n  ours:   ${m.ours.slice(Math.max(0, k - 80), k + 80)}\n  logged: ${m.logged.slice(Math.max(0, k - 80), k + 80)}`);
  }
  console.log(`newer upstream fields taken out before comparing: ${NEWER_FIELDS.map(([w]) => w).join('; ')}`);
  console.log(`skipped: ${Object.entries(r.skipped).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  console.log(`requests: ${r.identical} of ${r.compared} byte-identical`);
  process.exit(r.identical === r.compared ? 0 : 1);
}
