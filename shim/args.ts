// The shim v2 command line as containerd invokes it:
//   containerd-shim-katats-v2 -namespace NS -id ID -address ADDR [-publish-binary BIN] [-bundle DIR] [-debug] [-socket ADDR] start|delete
// Flags use Go's flag syntax (-flag value, -flag=value, --flag), so unknown ones are errors.
import { checkId } from '../sys/ids.js';

export interface ShimArgs {
  namespace: string;
  id: string;
  address: string;
  publishBinary: string;
  bundle: string;
  socket: string;
  debug: boolean;
  version: boolean;
  action: 'start' | 'delete' | 'serve';
}

const STRING_FLAGS = new Set(['namespace', 'id', 'address', 'publish-binary', 'bundle', 'socket']);
const BOOL_FLAGS = new Set(['debug', 'v']);

export function parseShimArgs(argv: string[], cwd = process.cwd()): ShimArgs {
  const vals: Record<string, string> = {};
  const bools: Record<string, boolean> = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-') || a === '-' || rest.length > 0) {
      rest.push(a);
      continue;
    }
    const body = a.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    if (STRING_FLAGS.has(name)) {
      const v = eq >= 0 ? body.slice(eq + 1) : argv[++i];
      if (v === undefined) throw new Error(`flag needs an argument: -${name}`);
      vals[name] = v;
    } else if (BOOL_FLAGS.has(name)) {
      bools[name] = eq >= 0 ? body.slice(eq + 1) !== 'false' : true;
    } else {
      throw new Error(`flag provided but not defined: -${name}`);
    }
  }
  const action = rest[0] ?? 'serve';
  if (action !== 'start' && action !== 'delete' && action !== 'serve') throw new Error(`unknown action "${action}" (start, delete)`);
  const args: ShimArgs = {
    namespace: vals['namespace'] ?? '',
    id: vals['id'] ?? '',
    address: vals['address'] ?? '',
    publishBinary: vals['publish-binary'] ?? 'containerd',
    bundle: vals['bundle'] ?? cwd,
    socket: vals['socket'] ?? '',
    debug: bools['debug'] ?? false,
    version: bools['v'] ?? false,
    action,
  };
  if (!args.version) {
    if (!args.namespace) throw new Error('shim namespace cannot be empty');
    if (!args.id) throw new Error('shim id cannot be empty');
    // Both end up in host paths (state dir, socket, logs): checked before anything is made.
    checkId(args.namespace, 'shim namespace');
    checkId(args.id, 'shim id');
  }
  return args;
}
