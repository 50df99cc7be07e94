// Ending a process whose logger writes asynchronously: process.exit() drops what the destination
// has not written yet, so the last lines (the ones that say why it ended) were often lost.

/** The longest a flush may hold the exit: a destination that never drains must not keep the process. */
export const EXIT_FLUSH_TIMEOUT_MS = 2000;

/** Exits with `code` once `flush` says the buffered log lines are written (or after the time limit). */
export function exitAfterFlush(flush: (cb: (err?: Error) => void) => void, code: number, limitMs = EXIT_FLUSH_TIMEOUT_MS): void {
  setTimeout(() => process.exit(code), limitMs);
  try {
    flush(() => process.exit(code));
  } catch {
    // A destination that is not open yet cannot flush; the timer ends the process.
  }
}
