import { ReactorError, errorFromResponse } from './errors.js';

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface HttpRequest {
  method: 'GET' | 'POST';
  url: string;
  body?: unknown;
  token?: string | null;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  accept?: string;
}

/** Sends requests with the client's `fetch` and default headers; non-2xx answers become {@link ReactorError}s. */
export class Http {
  constructor(
    private readonly fetchImpl: FetchLike,
    private readonly defaultHeaders: Record<string, string>,
  ) {}

  /** The response once its headers arrived (status 2xx), the body unread. */
  async send(request: HttpRequest): Promise<Response> {
    const headers: Record<string, string> = { Accept: request.accept ?? 'application/json', ...this.defaultHeaders };
    if (request.token) headers.Authorization = `Bearer ${request.token}`;
    let body: string | undefined;
    if (request.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(request.body);
    }
    Object.assign(headers, request.headers);
    let response: Response;
    try {
      response = await this.fetchImpl(request.url, { method: request.method, headers, body, signal: request.signal });
    } catch (error) {
      throw connectionError(error, request.url, request.signal);
    }
    if (!response.ok) throw await errorFromResponse(response, request.url);
    return response;
  }

  /** The JSON answer of a request. */
  async json<T>(request: HttpRequest): Promise<T> {
    const response = await this.send(request);
    return readJson<T>(response, request.url, request.signal);
  }
}

export async function readJson<T>(response: Response, url: string, signal?: AbortSignal): Promise<T> {
  const requestId = response.headers.get('x-request-id') ?? undefined;
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    throw connectionError(error, url, signal, requestId);
  }
  if (text === '' && response.status === 204) return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch (error) {
    throw new ReactorError(`The answer from ${url} is not JSON.`, {
      code: 'invalid_response',
      status: response.status,
      requestId,
      cause: error,
    });
  }
}

/** What a failed fetch or body read becomes: the abort reason when the call was aborted, else a ReactorError. */
export function connectionError(error: unknown, url: string, signal?: AbortSignal, requestId?: string): unknown {
  if (signal?.aborted) return signal.reason ?? error;
  if (error instanceof ReactorError) return error;
  if (isAbortError(error)) return error;
  const detail = error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
  return new ReactorError(`Cannot reach ${url}: ${detail}`, { code: 'connection_error', requestId, cause: error });
}

export function isAbortError(error: unknown): boolean {
  return error instanceof Error && (error.name === 'AbortError' || error.name === 'TimeoutError');
}

/**
 * A controller that aborts when `signal` does; `release` detaches it from `signal` (so a
 * long-lived signal does not collect listeners of finished calls).
 */
export function linkedController(signal?: AbortSignal): { controller: AbortController; release: () => void } {
  const controller = new AbortController();
  if (!signal) return { controller, release: () => undefined };
  if (signal.aborted) {
    controller.abort(signal.reason);
    return { controller, release: () => undefined };
  }
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  return { controller, release: () => signal.removeEventListener('abort', onAbort) };
}

/** `promise`, or the signal's reason as soon as it aborts (the work itself goes on). */
export function abortable<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

export function trimSlash(url: string): string {
  return url.replace(/\/+$/, '');
}
