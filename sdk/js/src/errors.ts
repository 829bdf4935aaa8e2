/**
 * Every failure the client reports, whether the gateway or the Identity service sent it, the
 * network failed, or a stream broke off, is a {@link ReactorError}. Aborted calls are the
 * exception: they reject with the signal's reason (an `AbortError`), as `fetch` does.
 */

/** The error object the gateway and the Identity service answer with: `{"error": {...}}`. */
export interface ErrorBody {
  message: string;
  type?: string;
  param?: string | null;
  code?: string | null;
}

export interface ReactorErrorInit {
  /** The HTTP status; for an error event mid-stream, the status the same error has before a stream starts. */
  status?: number;
  /** The gateway's error code (`model_not_found`, `provider_error`, …) or one of the client's own. */
  code: string;
  type?: string;
  param?: string | null;
  requestId?: string;
  /** Seconds to wait before trying again, from `Retry-After`. */
  retryAfter?: number;
  /** True when the error arrived after a stream had started (some of the answer was delivered). */
  midStream?: boolean;
  cause?: unknown;
}

/**
 * Codes the client itself uses, beside the gateway's:
 *
 * - `connection_error`: the request never got an answer (refused, reset, DNS, …).
 * - `invalid_response`: the answer was not what the API promises (not JSON, no event stream).
 * - `incomplete_stream`: the event stream ended without `[DONE]`.
 */
export class ReactorError extends Error {
  override readonly name = 'ReactorError';
  readonly status: number | undefined;
  readonly code: string;
  readonly type: string | undefined;
  readonly param: string | null;
  readonly requestId: string | undefined;
  readonly retryAfter: number | undefined;
  readonly midStream: boolean;

  constructor(message: string, init: ReactorErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    this.type = init.type;
    this.param = init.param ?? null;
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
    this.midStream = init.midStream ?? false;
  }

  /** The error the gateway sent as `{"error": body}`; the status comes from the code when not given. */
  static fromBody(
    body: Partial<ErrorBody>,
    extra: { status?: number; requestId?: string; retryAfter?: number; midStream?: boolean } = {},
  ): ReactorError {
    const code = (typeof body.code === 'string' && body.code) || codeForStatus(extra.status) || 'unknown_error';
    const type = typeof body.type === 'string' ? body.type : undefined;
    const message = typeof body.message === 'string' && body.message ? body.message : `The request failed (${code}).`;
    return new ReactorError(message, {
      status: extra.status ?? statusForCode(code, type),
      code,
      type,
      param: typeof body.param === 'string' ? body.param : null,
      requestId: extra.requestId,
      retryAfter: extra.retryAfter,
      midStream: extra.midStream,
    });
  }
}

const STATUS_BY_CODE: Record<string, number> = {
  invalid_request_error: 400,
  model_not_supported: 400,
  context_length_exceeded: 400,
  no_route: 400,
  unauthorized: 401,
  invalid_credentials: 401,
  model_not_found: 404,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  rate_limit_exceeded: 429,
  quota_exceeded: 429,
  internal_error: 500,
  provider_error: 502,
  incomplete_response: 502,
  no_worker_available: 503,
  overloaded: 503,
  service_unavailable: 503,
  upstream_timeout: 504,
};

const STATUS_BY_TYPE: Record<string, number> = {
  invalid_request_error: 400,
  rate_limit_error: 429,
  server_error: 500,
  provider_error: 502,
  timeout_error: 504,
};

/** The HTTP status the gateway answers a code with (used for error events inside a stream). */
export function statusForCode(code: string, type?: string): number | undefined {
  return STATUS_BY_CODE[code] ?? (type === undefined ? undefined : STATUS_BY_TYPE[type]);
}

function codeForStatus(status: number | undefined): string | undefined {
  if (status === undefined) return undefined;
  const known: Record<number, string> = {
    400: 'invalid_request_error',
    401: 'unauthorized',
    403: 'forbidden',
    404: 'not_found',
    413: 'payload_too_large',
    429: 'rate_limit_exceeded',
    502: 'provider_error',
    503: 'service_unavailable',
    504: 'upstream_timeout',
  };
  return known[status] ?? (status >= 500 ? 'server_error' : `http_${status}`);
}

function retryAfterOf(headers: Headers): number | undefined {
  const value = headers.get('retry-after');
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - Date.now()) / 1000);
}

/** The error of a non-2xx answer, from its `{"error": {...}}` body when it has one. */
export async function errorFromResponse(response: Response, url: string): Promise<ReactorError> {
  const requestId = response.headers.get('x-request-id') ?? undefined;
  const retryAfter = retryAfterOf(response.headers);
  let text = '';
  try {
    text = await response.text();
  } catch {
    // The body could not be read; the status still says what happened.
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  const error = isObject(body) ? body.error : undefined;
  if (isObject(error)) {
    return ReactorError.fromBody(error as Partial<ErrorBody>, { status: response.status, requestId, retryAfter });
  }
  // Not the gateway's shape (a proxy in between, or a plain-text error).
  const detail = text.trim().slice(0, 200);
  return ReactorError.fromBody(
    { message: `HTTP ${response.status} from ${url}${detail ? `: ${detail}` : ''}` },
    { status: response.status, requestId, retryAfter },
  );
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
