// The KBS protocol's ErrorInformation (RFC 7807 problem details): {type, detail}, the type a URL
// under the KBS's errors namespace naming the problem, with the HTTP status that goes with it.
export const ERROR_TYPE_BASE = 'https://github.com/confidential-containers/kbs/errors/';

export type KbsProblem =
  | 'InvalidRequest'
  | 'PayloadTooLarge'
  | 'ProtocolVersion'
  | 'UnsupportedTee'
  | 'CookieNotFound'
  | 'InvalidCookie'
  | 'ExpiredCookie'
  | 'ChallengeConsumed'
  | 'AttestationFailed'
  | 'TokenInvalid'
  | 'PolicyDeny'
  | 'ResourceNotFound'
  | 'AdminAuthFailed'
  | 'PolicyInvalid'
  | 'TooManySessions'
  | 'InternalError';

const STATUS: Record<KbsProblem, number> = {
  InvalidRequest: 400,
  PayloadTooLarge: 413,
  ProtocolVersion: 400,
  UnsupportedTee: 400,
  CookieNotFound: 401,
  InvalidCookie: 401,
  ExpiredCookie: 401,
  ChallengeConsumed: 401,
  AttestationFailed: 401,
  TokenInvalid: 401,
  PolicyDeny: 403,
  ResourceNotFound: 404,
  AdminAuthFailed: 401,
  PolicyInvalid: 400,
  TooManySessions: 503,
  InternalError: 500,
};

export interface ErrorInformation {
  type: string;
  detail: string;
}

export class KbsError extends Error {
  readonly status: number;
  constructor(
    readonly problem: KbsProblem,
    detail: string,
  ) {
    super(detail);
    this.status = STATUS[problem];
  }

  body(): ErrorInformation {
    return { type: ERROR_TYPE_BASE + this.problem, detail: this.message };
  }
}
