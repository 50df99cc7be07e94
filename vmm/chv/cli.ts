// The katats-chv executable (dist/chv.mjs, or this file under tsx in a checkout).
import { runChv } from './main.js';

runChv(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`katats-chv: ${(err as Error).message}\n`);
  process.exit(2);
});
