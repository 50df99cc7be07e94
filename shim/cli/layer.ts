// `katats verity format` and `katats layer build`: the snapshotter's layer format on the command
// line, so an operator (or `katats policy gen`) gets the root hash a node will compute.
import fs from 'node:fs';
import path from 'node:path';
import { buildLayerFile } from '../../snapshotter/layer.js';
import { parseSalt, verityFormat, veritysetupReport, ZERO_SALT } from '../../snapshotter/verity.js';

/** Positional arguments and --name VALUE options; an unknown option is an error. */
function parse(args: string[], known: string[]): { pos: string[]; opts: Map<string, string> } {
  const pos: string[] = [];
  const opts = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('--')) {
      if (!known.includes(a)) throw new Error(`unknown option ${a}`);
      const v = args[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      opts.set(a, v);
    } else pos.push(a);
  }
  return { pos, opts };
}

export async function verityCommand(args: string[], usage: string): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'format') {
    console.error(usage);
    return 2;
  }
  const { pos, opts } = parse(rest, ['--salt', '--hash-offset']);
  if (pos.length < 1 || pos.length > 2) {
    console.error(usage);
    return 2;
  }
  const [data, hash] = pos as [string, string | undefined];
  const salt = opts.has('--salt') ? parseSalt(opts.get('--salt')!) : ZERO_SALT;
  const hashOffset = Number(opts.get('--hash-offset') ?? 0);
  if (!Number.isSafeInteger(hashOffset) || hashOffset < 0 || hashOffset % 4096) throw new Error('--hash-offset must be a multiple of 4096');
  const r = await verityFormat(data, { salt, hashFile: hash, hashOffset });
  console.log(veritysetupReport(data, r));
  return 0;
}

export async function layerCommand(args: string[], usage: string): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'build') {
    console.error(usage);
    return 2;
  }
  const { pos, opts } = parse(rest, ['--salt']);
  if (pos.length !== 2) {
    console.error(usage);
    return 2;
  }
  const [input, out] = pos as [string, string];
  const salt = opts.has('--salt') ? parseSalt(opts.get('--salt')!) : ZERO_SALT;
  const r = await buildLayerFile(fs.createReadStream(input, { highWaterMark: 1024 * 1024 }), path.resolve(out), { salt });
  console.error(
    `layer: ${r.entries} tar entries, ${r.inodes} inodes, ${r.compression} ${r.uncompressedBytes} bytes of tar -> ${r.erofsBytes} bytes of EROFS + ${r.fileBytes - r.erofsBytes} of hash tree`,
  );
  console.error(`layer: diff_id ${r.diffId}; verity: format 1, sha256, 4096-byte blocks, salt ${salt.toString('hex') || '-'}, hash offset ${r.erofsBytes}`);
  console.log(r.rootHash);
  return 0;
}
