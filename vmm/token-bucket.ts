// A token bucket: `rate` units per second, at most `burst` saved up. What the guest may make the
// host do (bytes to disk, lines into the log) is metered with it.

export class TokenBucket {
  private tokens: number;
  private at = Date.now();

  constructor(
    readonly rate: number,
    readonly burst: number,
  ) {
    this.tokens = burst;
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
  }

  /** Takes up to `n` units; returns how many were granted. */
  take(n: number): number {
    this.refill();
    const granted = Math.min(n, Math.floor(this.tokens));
    this.tokens -= granted;
    return granted;
  }

  /** Takes one unit if there is one. */
  allow(): boolean {
    return this.take(1) === 1;
  }
}
