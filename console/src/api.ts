/**
 * The gateway's documented JSON endpoints, and nothing else: the Identity API at `/auth/v1` for
 * signing in, and `/ai/v1/usage`, `/ai/v1/fleet` and `/ai/v1/models` for what the views show.
 * The console is served by the gateway itself, so every call goes to the page's own origin and
 * the browser sends no cookies: the bearer token is the only credential.
 */

export const AUTH = '/auth/v1';
export const AI = '/ai/v1';

/** A failure, with the gateway's error code (`{"error": {"message", "type", "param", "code"}}`). */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null = null,
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === 'AbortError';
}

/** Sends a request and reads a JSON answer; any other outcome is an {@link ApiError}. */
export async function requestJson<T>(url: string, init: RequestInit = {}): Promise<T> {
  let response: Response;
  try {
    response = await fetch(url, { credentials: 'omit', cache: 'no-store', ...init });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError('Cannot reach the gateway.', 0, 'network_error');
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = (body as { error?: { message?: unknown; code?: unknown } } | null)?.error;
    const message = typeof error?.message === 'string' ? error.message : `The gateway answered ${response.status}.`;
    const code = typeof error?.code === 'string' ? error.code : null;
    const retry = Number(response.headers.get('retry-after'));
    throw new ApiError(message, response.status, code, Number.isFinite(retry) && retry > 0 ? retry : null);
  }
  if (body === null || typeof body !== 'object') {
    throw new ApiError(`Unexpected answer from ${url}.`, response.status, 'bad_response');
  }
  return body as T;
}

// --- the shapes the views read ---------------------------------------------------------------------

export interface Counts {
  requests: number;
  tokens_in: number;
  tokens_out: number;
  cost_usd: number;
}

export type UsageGrouping = 'day' | 'model' | 'user' | 'provider';

export type UsageGroup = Counts & Partial<Record<UsageGrouping, string>>;

/** `GET /ai/v1/usage?since&until&user&model&by` */
export interface UsageReport {
  object: 'usage';
  since: string;
  until: string;
  by: UsageGrouping;
  user: string | null;
  model: string | null;
  totals: Counts;
  groups: UsageGroup[];
}

export interface Pool {
  provider: string;
  live_workers: number;
  slots: number;
  queued: number;
  running: number;
  cooling_routes: string[];
}

/** `GET /ai/v1/fleet` (admins only) */
export interface Fleet {
  object: 'fleet';
  pools: Pool[];
  registry: { source: string; version: number; loaded_at: number | null; last_error: string | null };
  open_requests: number;
  timestamp: number;
}

/** One entry of `GET /ai/v1/models`: a model, or an alias (`alias: true`). */
export interface ModelEntry {
  id: string;
  owned_by?: string;
  alias?: boolean;
  strategy?: string | null;
  targets?: string[] | null;
  capabilities?: string[] | null;
  context_window?: number | null;
  input_price_per_mtok?: number | null;
  output_price_per_mtok?: number | null;
  cached_input_price_per_mtok?: number | null;
  providers?: string[] | null;
}

export interface ModelList {
  object: 'list';
  data: ModelEntry[];
}

export interface TokenAnswer {
  access_token: string;
  token_type: string;
  expires_in: number;
  expires_at: number;
  refresh_token: string | null;
  user: { id: string; email: string | null } | null;
}
