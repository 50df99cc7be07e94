// One error type for the engine, with OPA's stable codes so callers (the agent, the CLI, the
// conformance runner) match codes, never message text.
export type PolicyErrorCode =
  | 'rego_parse_error'
  | 'rego_compile_error'
  | 'rego_unsafe_var_error'
  | 'rego_recursion_error'
  | 'rego_type_error'
  | 'eval_conflict_error'
  | 'eval_builtin_error'
  | 'eval_type_error'
  | 'eval_with_merge_error'
  | 'limit_error'
  | 'input_error';

export interface Location {
  file: string;
  row: number;
  col: number;
}

export class PolicyError extends Error {
  readonly code: PolicyErrorCode;
  readonly location: Location | undefined;
  /** The message without the location prefix. */
  readonly detail: string;
  constructor(code: PolicyErrorCode, detail: string, location?: Location) {
    super(location ? `${location.file}:${location.row}:${location.col}: ${code}: ${detail}` : `${code}: ${detail}`);
    this.name = 'PolicyError';
    this.code = code;
    this.detail = detail;
    this.location = location;
  }
}

/**
 * A builtin's complaint: becomes eval_builtin_error / eval_type_error with the call's location, or
 * undefined in non-strict mode. Not an Error: policies use failing builtins as tests (to_number
 * on a non-number), and capturing a stack each time would cost more than the call.
 */
export class BuiltinError {
  readonly code: 'eval_builtin_error' | 'eval_type_error';
  readonly message: string;
  constructor(message: string, code: 'eval_builtin_error' | 'eval_type_error' = 'eval_builtin_error') {
    this.message = message;
    this.code = code;
  }
}

/** An evaluation limit was reached (steps, depth, sizes, time): never swallowed as "undefined". */
export class LimitError extends PolicyError {
  constructor(detail: string, location?: Location) {
    super('limit_error', detail, location);
  }
}
