// A variant of a built guest image without a second build: the same kernel and rootfs, and an
// initrd that is the image's initrd followed by one more cpio archive holding /etc/katats-variant
// (the kernel unpacks concatenated archives, compressed or not, in order). Other booted bytes, so
// another launch measurement; the guest's init says the label on the console (guest/init.sh).
import fs from 'node:fs';
import { writeCpio } from './cpio.js';

/** A label the init prints as is: what its `tr -cd` keeps, at most what its `head -c` reads. */
const LABEL = /^[A-Za-z0-9._-]{1,64}$/;

export const VARIANT_FILE = 'etc/katats-variant';

/** Writes `out`: `baseInitrd` padded to 4 bytes (the next archive's headers are 4-aligned) + a newc archive with the label. */
export function writeVariantInitrd(baseInitrd: string, label: string, out: string): void {
  if (!LABEL.test(label)) throw new Error(`variant label ${JSON.stringify(label)}: use 1-64 of A-Z a-z 0-9 . _ -`);
  const base = fs.readFileSync(baseInitrd);
  const member = writeCpio(
    [
      { path: 'etc', type: 'dir', mode: 0o755 },
      { path: VARIANT_FILE, type: 'file', mode: 0o444, data: Buffer.from(`${label}\n`) },
    ],
    0,
  );
  fs.writeFileSync(out, Buffer.concat([base, Buffer.alloc((4 - (base.length % 4)) % 4), member]), { mode: 0o644 });
}
