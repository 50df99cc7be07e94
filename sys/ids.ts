// Ids that become path components (sandbox, container and exec ids, namespaces): one rule for the
// shim and the agent, containerd's identifier rule (alphanumeric runs joined by single '.', '_' or
// '-', at most 76 characters). It admits no '/', no leading '.', no '..' and no empty id, so an id
// can never leave the directory it is joined to.

export const ID_MAX_LENGTH = 76;
const ID_RE = /^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$/;

/** A stable code for callers that map errors to their own wire (ttrpc InvalidArgument, exit status). */
export const INVALID_ID = 'KATATS_INVALID_ID';

export class InvalidIdError extends Error {
  override readonly name = 'InvalidIdError';
  readonly code = INVALID_ID;
  constructor(
    readonly what: string,
    readonly id: string,
    reason: string,
  ) {
    super(`${what} ${JSON.stringify(id)} is not a valid id: ${reason}`);
  }
}

export function isValidId(id: string): boolean {
  return id.length > 0 && id.length <= ID_MAX_LENGTH && ID_RE.test(id);
}

/** Returns `id` when it is safe as a path component; else throws InvalidIdError naming `what` and the id. */
export function checkId(id: string, what: string): string {
  if (id.length === 0) throw new InvalidIdError(what, id, 'it is empty');
  if (id.length > ID_MAX_LENGTH) throw new InvalidIdError(what, id.length > 200 ? `${id.slice(0, 200)}...` : id, `longer than ${ID_MAX_LENGTH} characters`);
  if (!ID_RE.test(id)) throw new InvalidIdError(what, id, "letters and digits, joined by single '.', '_' or '-'");
  return id;
}
