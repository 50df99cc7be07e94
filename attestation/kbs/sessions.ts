// KBS sessions: one per /auth, named by the kbs-session-id cookie. A session holds its challenge
// nonce until /attest answers it (once: the nonce is consumed whatever the outcome), then the
// attestation result until the session times out. The table is bounded: expired sessions are
// dropped first, and a full table of live ones refuses new sessions rather than growing.
import { randomBytes, randomUUID } from 'node:crypto';
import type { Claims } from './evidence.js';
import type { TeePubKey } from '../runtime-data.js';
import { KbsError } from './errors.js';

export const NONCE_BYTES = 32;

export interface Session {
  id: string;
  nonce: string;
  tee: string;
  expiresAt: number;
  /** Set once /attest succeeded. */
  attested?: { claims: Claims; teePubKey: TeePubKey; token: string };
  /** The challenge was answered (successfully or not): a second answer is a replay. */
  answered: boolean;
}

export class Sessions {
  private readonly byId = new Map<string, Session>();

  constructor(
    private readonly timeoutMs: number,
    private readonly max: number,
    private readonly now: () => number = Date.now,
  ) {}

  create(tee: string): Session {
    if (this.byId.size >= this.max) this.sweep();
    if (this.byId.size >= this.max) throw new KbsError('TooManySessions', `${this.max} sessions are open; try again later`);
    const s: Session = { id: randomUUID(), nonce: randomBytes(NONCE_BYTES).toString('base64'), tee, expiresAt: this.now() + this.timeoutMs, answered: false };
    this.byId.set(s.id, s);
    return s;
  }

  /** The live session a cookie names, or a 401 saying why there is none. */
  get(id: string | undefined): Session {
    if (!id) throw new KbsError('CookieNotFound', 'no kbs-session-id cookie: start with POST /kbs/v0/auth');
    const s = this.byId.get(id);
    if (!s) throw new KbsError('InvalidCookie', 'unknown session: start with POST /kbs/v0/auth');
    if (this.now() >= s.expiresAt) {
      this.byId.delete(id);
      throw new KbsError('ExpiredCookie', 'the session has expired: start again with POST /kbs/v0/auth');
    }
    return s;
  }

  get size(): number {
    return this.byId.size;
  }

  sweep(): void {
    const t = this.now();
    for (const [id, s] of this.byId) if (t >= s.expiresAt) this.byId.delete(id);
  }
}
