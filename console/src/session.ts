/**
 * Who the console calls the gateway as: a password sign-in at the Identity API, kept for the tab.
 *
 * - The session lives in memory and in `sessionStorage`, so a reload keeps it and closing the tab
 *   forgets it; nothing goes to `localStorage` or cookies.
 * - The access token is refreshed 30 s before it expires, on demand, and once more after a 401.
 *   Refresh tokens rotate (each works once), so concurrent calls share one refresh.
 * - A duplicated tab starts with a copy of the same refresh token, and the Identity service revokes
 *   a session whose spent refresh token is presented again. So tabs of one session announce every
 *   new token on a BroadcastChannel and take each refresh under a Web Lock: the second tab adopts
 *   the first one's token instead of spending the old one.
 * - The admin claim (`reactor_admin: true`) is read from the token only to choose which views to
 *   offer; the gateway checks it on every call.
 */

import { AUTH, ApiError, requestJson, type TokenAnswer } from './api';

const STORAGE_KEY = 'reactor-console.session';
const REFRESH_MARGIN_S = 30;
const CHANNEL = 'reactor-console.session';
const LOCK = 'reactor-console.refresh';

export interface Session {
  accessToken: string;
  refreshToken: string | null;
  expiresAt: number;
  userId: string;
  email: string | null;
  admin: boolean;
  sessionId: string | null;
}

type Listener = (session: Session | null, reason: string | null) => void;

/** The claims of a JWT, read without verifying (the gateway verifies). */
export function claimsOf(token: string): Record<string, unknown> {
  const part = token.split('.')[1];
  if (!part) return {};
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : {};
  } catch {
    return {};
  }
}

function sessionFrom(answer: TokenAnswer): Session {
  if (!answer || typeof answer.access_token !== 'string') {
    throw new ApiError('The Identity service gave no access token.', 0, 'bad_response');
  }
  const claims = claimsOf(answer.access_token);
  const exp = typeof claims.exp === 'number' ? claims.exp : Number(answer.expires_at) || Date.now() / 1000 + 60;
  return {
    accessToken: answer.access_token,
    refreshToken: answer.refresh_token ?? null,
    expiresAt: Number(answer.expires_at) || exp,
    userId: answer.user?.id ?? String(claims.sub ?? ''),
    email: answer.user?.email ?? (typeof claims.email === 'string' ? claims.email : null),
    admin: claims.reactor_admin === true,
    sessionId: typeof claims.sid === 'string' ? claims.sid : null,
  };
}

function isSession(value: unknown): value is Session {
  const s = value as Session;
  return !!s && typeof s.accessToken === 'string' && typeof s.expiresAt === 'number' && typeof s.userId === 'string';
}

export class Auth {
  private current: Session | null = null;
  private refreshing: Promise<Session> | null = null;
  private readonly listeners = new Set<Listener>();
  private readonly channel: BroadcastChannel | null =
    typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL) : null;

  constructor() {
    try {
      const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? 'null');
      if (isSession(stored)) this.current = stored;
    } catch {
      sessionStorage.removeItem(STORAGE_KEY);
    }
    this.channel?.addEventListener('message', (event: MessageEvent) => {
      const theirs = event.data;
      const mine = this.current;
      // Another tab of this very session refreshed it: its token replaces ours (ours is spent).
      if (isSession(theirs) && mine && theirs.sessionId && theirs.sessionId === mine.sessionId
          && theirs.expiresAt >= mine.expiresAt) {
        this.store(theirs, false);
      }
    });
  }

  get session(): Session | null {
    return this.current;
  }

  onChange(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async signIn(email: string, password: string): Promise<Session> {
    const answer = await requestJson<TokenAnswer>(`${AUTH}/token?grant_type=password`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    const session = sessionFrom(answer);
    this.store(session, false);
    this.emit(null);
    return session;
  }

  /** An access token good for at least the refresh margin, refreshed first when needed. */
  async accessToken(): Promise<string> {
    const session = this.current;
    if (!session) throw new ApiError('Not signed in.', 401, 'unauthorized');
    if (session.expiresAt - REFRESH_MARGIN_S > Date.now() / 1000) return session.accessToken;
    return (await this.refresh()).accessToken;
  }

  /** Exchanges the refresh token for new tokens; concurrent callers share one exchange. */
  refresh(): Promise<Session> {
    if (!this.refreshing) {
      const spent = this.current?.accessToken;
      this.refreshing = this.withLock(() => this.exchange(spent)).finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async withLock<T>(work: () => Promise<T>): Promise<T> {
    const locks = (navigator as Navigator & { locks?: LockManager }).locks;
    return locks ? locks.request(LOCK, work) : work();
  }

  private async exchange(spent: string | undefined): Promise<Session> {
    const session = this.current;
    if (!session) throw new ApiError('Not signed in.', 401, 'unauthorized');
    // Another tab refreshed while this one waited for the lock: its token is already here.
    if (session.accessToken !== spent && session.expiresAt - REFRESH_MARGIN_S > Date.now() / 1000) return session;
    if (!session.refreshToken) {
      this.drop('Your session has expired; sign in again.');
      throw new ApiError('Your session has expired; sign in again.', 401, 'invalid_grant');
    }
    try {
      const answer = await requestJson<TokenAnswer>(`${AUTH}/token?grant_type=refresh_token`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: session.refreshToken }),
      });
      const next = sessionFrom(answer);
      this.store(next, true);
      return next;
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 400)) {
        this.drop('Your session has ended; sign in again.');
      }
      throw error;
    }
  }

  /** Ends the session at the Identity service (best effort) and forgets it here. */
  async signOut(): Promise<void> {
    const session = this.current;
    this.drop(null);
    if (!session) return;
    try {
      await requestJson<void>(`${AUTH}/logout`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${session.accessToken}` },
        body: JSON.stringify(session.refreshToken ? { refresh_token: session.refreshToken } : {}),
      });
    } catch {
      // The tokens run out by themselves; the page has forgotten them already.
    }
  }

  /** Forgets the session (after a refused refresh, or on sign-out) and tells the views why. */
  drop(reason: string | null): void {
    if (!this.current) return;
    this.current = null;
    sessionStorage.removeItem(STORAGE_KEY);
    this.emit(reason);
  }

  private store(session: Session, announce: boolean): void {
    this.current = session;
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    if (announce) this.channel?.postMessage(session);
  }

  private emit(reason: string | null): void {
    for (const listener of this.listeners) listener(this.current, reason);
  }
}

/**
 * `fetch` of a JSON endpoint as the signed-in user: the bearer token attached, and one retry
 * after a refresh when the gateway answers 401 (the token may have expired on the way).
 */
export async function authedJson<T>(auth: Auth, url: string, signal?: AbortSignal): Promise<T> {
  const call = async (token: string) =>
    requestJson<T>(url, { headers: { Authorization: `Bearer ${token}` }, signal });
  try {
    return await call(await auth.accessToken());
  } catch (error) {
    if (error instanceof ApiError && error.status === 401 && auth.session) {
      return call((await auth.refresh()).accessToken);
    }
    throw error;
  }
}
