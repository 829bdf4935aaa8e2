import { ReactorError, isObject } from './errors.js';
import { Http, abortable } from './http.js';

export interface User {
  id: string;
  email: string | null;
}

/** A signed-in session, as the Identity service's token endpoint answers it. */
export interface Session {
  access_token: string;
  token_type: string;
  /** Lifetime of the access token in seconds, when it was issued. */
  expires_in: number;
  /** When the access token expires, in seconds since the epoch. */
  expires_at: number;
  /** Spent by each refresh: the answer carries the next one. */
  refresh_token: string | null;
  user: User | null;
}

export type AuthChangeEvent = 'SIGNED_IN' | 'TOKEN_REFRESHED' | 'SIGNED_OUT';
export type AuthChangeListener = (event: AuthChangeEvent, session: Session | null) => void;

export interface AuthOptions {
  /** The Identity API, e.g. `http://127.0.0.1:8004/auth/v1`. */
  authUrl: string;
  /** A static access token (a service token from `reactor auth token`); never refreshed. */
  token?: string;
  /** Refresh this many seconds before the access token expires (default 30). */
  refreshMargin?: number;
}

interface CallOptions {
  signal?: AbortSignal;
}

/**
 * Who the client calls the gateway as: a session from {@link signInWithPassword} (kept in memory,
 * its access token refreshed shortly before it expires; refresh tokens rotate), or a static token.
 */
export class AuthClient {
  private current: Session | null = null;
  private staticToken: string | null;
  private refreshing: Promise<Session> | null = null;
  // Bumped whenever the session is replaced or dropped, so a refresh that finishes late
  // cannot bring back a session the caller has left.
  private generation = 0;
  private readonly listeners = new Set<AuthChangeListener>();
  private readonly authUrl: string;
  private readonly refreshMargin: number;

  constructor(
    private readonly http: Http,
    options: AuthOptions,
  ) {
    this.authUrl = options.authUrl;
    this.staticToken = options.token ?? null;
    this.refreshMargin = options.refreshMargin ?? 30;
  }

  /** Signs in with email and password; the session is kept for the client's calls. */
  async signInWithPassword(credentials: { email: string; password: string }, options: CallOptions = {}): Promise<Session> {
    const answer = await this.http.json<unknown>({
      method: 'POST',
      url: `${this.authUrl}/token?grant_type=password`,
      body: { email: credentials.email, password: credentials.password },
      signal: options.signal,
    });
    const session = sessionFrom(answer, this.authUrl);
    this.staticToken = null; // the session takes over from a static token
    this.replace(session, 'SIGNED_IN');
    return session;
  }

  /**
   * Exchanges the refresh token for a new access token (and a new refresh token: the old one is
   * spent). Calls made through the client do this by themselves when the token is about to expire.
   */
  async refreshSession(options: CallOptions = {}): Promise<Session> {
    if (!this.refreshing) {
      const session = this.current;
      if (!session?.refresh_token) {
        throw new ReactorError('There is no session to refresh; sign in first.', { code: 'unauthorized', status: 401 });
      }
      const generation = this.generation;
      this.refreshing = this.exchange(session.refresh_token, generation).finally(() => {
        this.refreshing = null;
      });
    }
    return abortable(this.refreshing, options.signal);
  }

  /**
   * Ends the session: forgets it (and any static token) at once, then has the Identity service
   * revoke it (the refresh token identifies the session even when the access token has expired).
   */
  async signOut(options: CallOptions = {}): Promise<void> {
    const session = this.current;
    const hadToken = this.staticToken !== null;
    this.staticToken = null;
    if (session || hadToken) this.replace(null, 'SIGNED_OUT');
    if (!session) return;
    try {
      await this.http.send({
        method: 'POST',
        url: `${this.authUrl}/logout`,
        token: session.access_token,
        body: session.refresh_token ? { refresh_token: session.refresh_token } : {},
        signal: options.signal,
      });
    } catch (error) {
      if (error instanceof ReactorError && error.status === 401) return; // the session had ended already
      throw error;
    }
  }

  /** The current session, or `null` (also when a static token is in use). */
  session(): Session | null {
    return this.current;
  }

  /** Puts back a session saved earlier (e.g. from {@link onAuthStateChange}). */
  setSession(session: Session): void {
    this.staticToken = null;
    this.replace(session, 'SIGNED_IN');
  }

  /** Calls the gateway with a static access token (e.g. from `reactor auth token`); `null` removes it. */
  setToken(token: string | null): void {
    const had = this.current !== null;
    this.staticToken = token;
    if (had) this.replace(null, 'SIGNED_OUT');
  }

  /** The signed-in user, as the Identity service knows it. */
  async getUser(options: CallOptions = {}): Promise<User> {
    const token = await this.accessToken(options);
    if (!token) throw new ReactorError('Not signed in.', { code: 'unauthorized', status: 401 });
    const answer = await this.http.json<unknown>({ method: 'GET', url: `${this.authUrl}/user`, token, signal: options.signal });
    const user = userFrom(answer);
    if (!user) throw new ReactorError(`The answer from ${this.authUrl}/user is not a user.`, { code: 'invalid_response' });
    return user;
  }

  /**
   * The access token to call with: the static token, or the session's (refreshed first when it
   * expires within the refresh margin), or `null` when signed out.
   */
  async accessToken(options: CallOptions = {}): Promise<string | null> {
    if (this.staticToken !== null) return this.staticToken;
    const session = this.current;
    if (!session) return null;
    const now = Date.now() / 1000;
    if (!session.refresh_token || session.expires_at - this.refreshMargin > now) return session.access_token;
    try {
      return (await this.refreshSession(options)).access_token;
    } catch (error) {
      // Identity unreachable for a moment: a token that has not expired yet still serves.
      if (error instanceof ReactorError && error.code === 'connection_error' && session.expires_at > now) {
        return session.access_token;
      }
      throw error;
    }
  }

  /**
   * After the gateway refused `token` with a 401: a fresh token to retry with, or `null` when
   * there is none to get (static token, no session, or it was refreshed already and still refused).
   */
  async tokenAfterUnauthorized(token: string | null, options: CallOptions = {}): Promise<string | null> {
    const session = this.current;
    if (this.staticToken !== null || !session?.refresh_token) return null;
    if (session.access_token !== token) return session.access_token;
    return (await this.refreshSession(options)).access_token;
  }

  /** Calls `listener` on sign-in, refresh and sign-out; returns a function that stops it. */
  onAuthStateChange(listener: AuthChangeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private async exchange(refreshToken: string, generation: number): Promise<Session> {
    let answer: unknown;
    try {
      answer = await this.http.json<unknown>({
        method: 'POST',
        url: `${this.authUrl}/token?grant_type=refresh_token`,
        body: { refresh_token: refreshToken },
      });
    } catch (error) {
      if (error instanceof ReactorError && error.status !== undefined && error.status < 500 && error.status !== 429) {
        // The refresh token was refused (spent, revoked, expired): the session is over.
        if (generation === this.generation) this.replace(null, 'SIGNED_OUT');
        throw new ReactorError('The session has ended; sign in again.', {
          code: 'unauthorized',
          status: 401,
          requestId: error.requestId,
          cause: error,
        });
      }
      throw error;
    }
    const session = sessionFrom(answer, this.authUrl);
    if (generation !== this.generation) {
      throw new ReactorError('The session changed while its token was being refreshed.', { code: 'unauthorized', status: 401 });
    }
    this.replace(session, 'TOKEN_REFRESHED');
    return session;
  }

  private replace(session: Session | null, event: AuthChangeEvent): void {
    this.current = session;
    this.generation++;
    for (const listener of [...this.listeners]) {
      try {
        listener(event, session);
      } catch {
        // A listener's failure is its own; the session change stands.
      }
    }
  }
}

function userFrom(value: unknown): User | null {
  if (!isObject(value) || typeof value.id !== 'string') return null;
  return { id: value.id, email: typeof value.email === 'string' ? value.email : null };
}

function sessionFrom(answer: unknown, url: string): Session {
  if (!isObject(answer) || typeof answer.access_token !== 'string') {
    throw new ReactorError(`The answer from ${url}/token has no access_token.`, { code: 'invalid_response' });
  }
  const now = Date.now() / 1000;
  const expiresIn = typeof answer.expires_in === 'number' ? answer.expires_in : undefined;
  const expiresAt =
    typeof answer.expires_at === 'number' ? answer.expires_at : expiresIn !== undefined ? now + expiresIn : now + 3600;
  return {
    access_token: answer.access_token,
    token_type: typeof answer.token_type === 'string' ? answer.token_type : 'bearer',
    expires_in: expiresIn ?? Math.max(0, Math.round(expiresAt - now)),
    expires_at: expiresAt,
    refresh_token: typeof answer.refresh_token === 'string' ? answer.refresh_token : null,
    user: userFrom(answer.user),
  };
}
