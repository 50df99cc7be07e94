// cloud-hypervisor's event monitor (--event-monitor path=FILE | fd=N): one JSON object per event,
// pretty-printed, events separated by a blank line. The writer (katats-chv) and the reader (the
// driver) both live here so the two cannot drift. The reader is bounded: an event larger than
// MAX_EVENT_BYTES is dropped and counted rather than buffered without end.
import type { Readable, Writable } from 'node:stream';

export const MAX_EVENT_BYTES = 64 << 10;

export interface ClhEvent {
  timestamp: { secs: number; nanos: number };
  /** "vmm", "vm", "virtio-device", "cpu_manager", ... */
  source: string;
  /** "starting", "booting", "booted", "pausing", "paused", "resuming", "resumed", "shutdown", "deleted", "device-removed", ... */
  event: string;
  properties: Record<string, string> | null;
}

/** Writes events in cloud-hypervisor's format, timestamps since `start` (process.hrtime.bigint()). */
export class EventWriter {
  private readonly start = process.hrtime.bigint();
  constructor(private readonly out: Writable | undefined) {}

  emit(source: string, event: string, properties: Record<string, string> | null = null): ClhEvent {
    const ns = process.hrtime.bigint() - this.start;
    const ev: ClhEvent = { timestamp: { secs: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) }, source, event, properties };
    this.out?.write(`${JSON.stringify(ev, null, 2)}\n\n`);
    return ev;
  }
}

function isEvent(v: unknown): v is ClhEvent {
  const e = v as ClhEvent;
  return typeof e === 'object' && e !== null && typeof e.source === 'string' && typeof e.event === 'string' && typeof e.timestamp?.secs === 'number';
}

/**
 * Reads an event stream; `onEvent` for each well-formed event, `onBad` for what is not one (with
 * the reason). Returns a function that says how many were dropped.
 */
export function readEvents(input: Readable, onEvent: (e: ClhEvent) => void, onBad: (why: string) => void = () => {}): () => number {
  let buf = '';
  let dropped = 0;
  let skipping = false;
  const take = (text: string) => {
    const t = text.trim();
    if (!t) return;
    try {
      const v: unknown = JSON.parse(t);
      if (isEvent(v)) onEvent(v);
      else {
        dropped++;
        onBad('not an event object');
      }
    } catch {
      dropped++;
      onBad('not JSON');
    }
  };
  input.setEncoding('utf8');
  input.on('data', (d: string) => {
    buf += d;
    for (;;) {
      const i = buf.indexOf('\n\n');
      if (i < 0) break;
      const one = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (skipping) skipping = false;
      else take(one);
    }
    if (buf.length > MAX_EVENT_BYTES) {
      dropped++;
      onBad(`event larger than ${MAX_EVENT_BYTES} bytes`);
      buf = '';
      skipping = true;
    }
  });
  input.on('end', () => {
    if (!skipping) take(buf);
    buf = '';
  });
  return () => dropped;
}
