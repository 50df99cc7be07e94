// The guest console as lines. The guest decides where its lines end, so a line is cut into
// pieces of at most `maxLineChars` (nothing is thrown away here; each piece is a line of its own),
// and what is held waiting for a newline never exceeds that.
import { StringDecoder } from 'node:string_decoder';

export class LineSplitter {
  private buf = '';
  private readonly decoder = new StringDecoder('utf8');

  constructor(
    readonly maxLineChars: number,
    private readonly onLine: (line: string) => void,
  ) {}

  push(chunk: Buffer): void {
    let text = this.decoder.write(chunk);
    while (text.length > 0) {
      const nl = text.indexOf('\n');
      const end = nl < 0 ? text.length : nl;
      const room = this.maxLineChars - this.buf.length;
      if (end > room || (nl < 0 && end === room)) {
        // The line is at its limit without an end in sight: it goes out as a piece.
        this.onLine(this.buf + text.slice(0, room));
        this.buf = '';
        text = text.slice(room);
        continue;
      }
      if (nl < 0) {
        this.buf += text;
        return;
      }
      this.onLine(this.buf + text.slice(0, nl));
      this.buf = '';
      text = text.slice(nl + 1);
    }
  }

  /** Whatever is held, as a last line. */
  flush(): void {
    const rest = this.buf + this.decoder.end();
    this.buf = '';
    if (rest) this.onLine(rest.slice(0, this.maxLineChars));
  }

  /** Characters held while waiting for a newline (never more than maxLineChars). */
  get held(): number {
    return this.buf.length;
  }
}
