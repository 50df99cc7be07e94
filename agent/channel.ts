// The guest's agent channel: a virtio-serial port (a character device such as /dev/vport0p1)
// opened as a file. Node cannot put a character device in its event loop, so reads and writes
// go through fs streams (libuv's thread pool); main.ts enlarges the pool accordingly.
import fs from 'node:fs';
import { Duplex } from 'node:stream';

export function openChannel(file: string): Duplex {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOCTTY);
  const readable = fs.createReadStream('', { fd, autoClose: false, highWaterMark: 256 * 1024 });
  const writable = fs.createWriteStream('', { fd, autoClose: false });
  const d = Duplex.from({ readable, writable });
  d.on('close', () => {
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed */
    }
  });
  return d;
}
