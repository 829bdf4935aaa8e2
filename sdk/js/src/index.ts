/**
 * `@reactor/client`: the TypeScript client of Reactor Gateway.
 *
 * ```ts
 * import { createClient } from '@reactor/client';
 *
 * const reactor = createClient({ url: process.env.REACTOR_URL! });
 * await reactor.auth.signInWithPassword({ email, password });
 * const response = await reactor.ai.chatCompletion({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hello!' }] });
 * ```
 */

import { AIClient } from './ai.js';
import { AuthClient } from './auth.js';
import { Http, trimSlash, type FetchLike } from './http.js';

export interface ClientOptions {
  /** The gateway's root URL, e.g. `http://127.0.0.1:8004` (the API is under `/ai/v1`). */
  url: string;
  /** The Identity service; by default the gateway's embedded one at `{url}/auth/v1`. */
  authUrl?: string;
  /** A static access token (e.g. a service token from `reactor auth token USER_ID`); never refreshed. */
  token?: string;
  /** The `fetch` to send requests with (default: the global one). */
  fetch?: FetchLike;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** Refresh a session's access token this many seconds before it expires (default 30). */
  refreshMargin?: number;
}

export interface ReactorClient {
  /** The gateway's root URL, without a trailing slash. */
  readonly url: string;
  readonly auth: AuthClient;
  readonly ai: AIClient;
}

export function createClient(options: ClientOptions): ReactorClient {
  if (!options || typeof options.url !== 'string' || options.url.trim() === '') {
    throw new TypeError('createClient needs the gateway URL: createClient({ url: "http://127.0.0.1:8004" })');
  }
  const url = trimSlash(options.url.trim());
  const fetchImpl = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
  if (typeof fetchImpl !== 'function') {
    throw new TypeError('No fetch is available: run on Node 18 or later, or pass createClient({ fetch }).');
  }
  const http = new Http(fetchImpl, options.headers ?? {});
  const auth = new AuthClient(http, {
    authUrl: trimSlash(options.authUrl ?? `${url}/auth/v1`),
    token: options.token,
    refreshMargin: options.refreshMargin,
  });
  const ai = new AIClient(http, auth, url);
  return { url, auth, ai };
}

export { AIClient, ChatCompletionStream } from './ai.js';
export { AuthClient } from './auth.js';
export type { AuthChangeEvent, AuthChangeListener, Session, User } from './auth.js';
export { ReactorError, statusForCode } from './errors.js';
export type { ErrorBody, ReactorErrorInit } from './errors.js';
export type { FetchLike } from './http.js';
export { SSEDecoder, parseSSE } from './sse.js';
export type { ServerSentEvent, SSESource } from './sse.js';
export type * from './types.js';
