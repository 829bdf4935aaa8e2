// The client against a scripted `fetch`: streams cut at odd offsets, error mapping, and the
// session's life (sign-in, refresh before expiry with rotating refresh tokens, sign-out).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ReactorError, createClient, type FetchLike, type Session } from '@reactor/client';

const URL_ = 'http://gateway.test';
const encoder = new TextEncoder();

interface Call {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: any;
}

type Handler = (call: Call, signal?: AbortSignal) => Response | Promise<Response>;

function fakeFetch(handler: Handler): { fetch: FetchLike; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: FetchLike = async (url, init) => {
    const headers = Object.fromEntries(Object.entries((init.headers ?? {}) as Record<string, string>).map(([k, v]) => [k.toLowerCase(), v]));
    const call = { method: init.method ?? 'GET', url, headers, body: init.body ? JSON.parse(init.body as string) : undefined };
    calls.push(call);
    if (init.signal?.aborted) throw init.signal.reason;
    return handler(call, init.signal ?? undefined);
  };
  return { fetch, calls };
}

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

/** An event-stream response whose body arrives in the given pieces. */
function sse(pieces: (string | Uint8Array)[], headers: Record<string, string> = {}, signal?: AbortSignal): Response {
  let i = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (signal?.aborted) return controller.error(signal.reason);
      if (i === pieces.length) return controller.close();
      const piece = pieces[i++];
      controller.enqueue(typeof piece === 'string' ? encoder.encode(piece) : piece);
    },
  });
  return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream; charset=utf-8', ...headers } });
}

function chunk(content: string): string {
  return JSON.stringify({
    id: 'chatcmpl-r1',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'mock-local',
    choices: [{ index: 0, delta: { content }, finish_reason: null }],
  });
}

/** Cuts the bytes of `text` at the given offsets. */
function cut(text: string, offsets: number[]): Uint8Array[] {
  const bytes = encoder.encode(text);
  const bounds = [0, ...offsets.filter((o) => o > 0 && o < bytes.length), bytes.length];
  return bounds.slice(1).map((end, k) => bytes.slice(bounds[k], end));
}

test('chatCompletionStream assembles the text from a body cut at odd offsets', async () => {
  const body = `data: ${chunk('Hé')}\r\n\r\n: keep-alive\n\ndata: ${chunk('llo 🌍')}\n\ndata: ${chunk('!')}\n\ndata: [DONE]\n\n`;
  const length = encoder.encode(body).length;
  for (const offsets of [[1], [7, 13], [3, 5, 7, 11, 13, 17, 19, 23], [length - 1], Array.from({ length }, (_, i) => i)]) {
    const { fetch, calls } = fakeFetch(() => sse(cut(body, offsets), { 'x-request-id': 'r1' }));
    const reactor = createClient({ url: URL_, token: 'tok', fetch });
    const stream = await reactor.ai.chatCompletionStream({ model: 'mock-local', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(stream.requestId, 'r1');
    assert.equal(await stream.text(), 'Héllo 🌍!');
    assert.equal(calls[0].url, `${URL_}/ai/v1/chat/completions`);
    assert.equal(calls[0].body.stream, true);
    assert.equal(calls[0].headers.authorization, 'Bearer tok');
    assert.equal(calls[0].headers.accept, 'text/event-stream');
  }
});

test('an error event mid-stream throws a ReactorError after the chunks before it', async () => {
  const error = { error: { message: 'upstream broke', type: 'provider_error', param: null, code: 'provider_error' } };
  const { fetch } = fakeFetch(() => sse([`data: ${chunk('a')}\n\n`, `data: ${JSON.stringify(error)}\n\n`], { 'x-request-id': 'r2' }));
  const reactor = createClient({ url: URL_, token: 'tok', fetch });
  const stream = await reactor.ai.chatCompletionStream({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
  const seen: string[] = [];
  await assert.rejects(
    async () => {
      for await (const c of stream) seen.push(c.choices[0]?.delta?.content ?? '');
    },
    (e: unknown) => {
      assert.ok(e instanceof ReactorError);
      assert.equal(e.code, 'provider_error');
      assert.equal(e.status, 502);
      assert.equal(e.message, 'upstream broke');
      assert.equal(e.requestId, 'r2');
      assert.equal(e.midStream, true);
      return true;
    },
  );
  assert.deepEqual(seen, ['a']);
});

test('a stream that ends without [DONE] throws incomplete_stream', async () => {
  const { fetch } = fakeFetch(() => sse([`data: ${chunk('a')}\n\n`]));
  const reactor = createClient({ url: URL_, token: 'tok', fetch });
  const stream = await reactor.ai.chatCompletionStream({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
  await assert.rejects(stream.text(), (e: unknown) => e instanceof ReactorError && e.code === 'incomplete_stream');
});

test('a stream can be iterated only once', async () => {
  const { fetch } = fakeFetch(() => sse([`data: ${chunk('a')}\n\ndata: [DONE]\n\n`]));
  const reactor = createClient({ url: URL_, token: 'tok', fetch });
  const stream = await reactor.ai.chatCompletionStream({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(await stream.text(), 'a');
  assert.throws(() => stream[Symbol.asyncIterator](), TypeError);
});

test('HTTP errors become ReactorErrors with status, code, message, request id and Retry-After', async () => {
  const { fetch } = fakeFetch((call) =>
    call.url.endsWith('/embeddings')
      ? json({ error: { message: 'busy', type: 'server_error', param: null, code: 'overloaded' } }, 503, { 'retry-after': '1', 'x-request-id': 'r3' })
      : call.url.endsWith('/models')
        ? new Response('<html>bad gateway</html>', { status: 502 })
        : json({ error: { message: "The model 'nope' does not exist", type: 'invalid_request_error', param: 'model', code: 'model_not_found' } }, 404, { 'x-request-id': 'r4' }),
  );
  const reactor = createClient({ url: URL_, token: 'tok', fetch });
  await assert.rejects(reactor.ai.chatCompletion({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }), {
    name: 'ReactorError',
    status: 404,
    code: 'model_not_found',
    param: 'model',
    requestId: 'r4',
    message: "The model 'nope' does not exist",
  });
  await assert.rejects(reactor.ai.embed({ model: 'e', input: 'x' }), { status: 503, code: 'overloaded', retryAfter: 1, requestId: 'r3' });
  await assert.rejects(reactor.ai.models(), (e: unknown) => e instanceof ReactorError && e.status === 502 && /bad gateway/.test(e.message));
});

test('a refused connection is a connection_error; an aborted call rejects with the abort reason', async () => {
  const down = createClient({ url: 'http://127.0.0.1:9', token: 'tok' });
  await assert.rejects(down.ai.models(), (e: unknown) => e instanceof ReactorError && e.code === 'connection_error' && e.status === undefined);
  const { fetch } = fakeFetch(() => json({ object: 'list', data: [] }));
  const reactor = createClient({ url: URL_, token: 'tok', fetch });
  await assert.rejects(reactor.ai.models({ signal: AbortSignal.abort() }), { name: 'AbortError' });
});

// --- sessions ------------------------------------------------------------------------------------

/** A scripted Identity service: refresh tokens rotate (each is good once), access tokens last `ttl` s. */
function identity(ttl: number) {
  let serial = 0;
  const live = new Set<string>();
  const revoked: string[] = [];
  const issue = () => {
    serial++;
    const refresh = `rt${serial}`;
    live.add(refresh);
    const now = Date.now() / 1000;
    return json({
      access_token: `at${serial}`,
      token_type: 'bearer',
      expires_in: ttl,
      expires_at: now + ttl,
      refresh_token: refresh,
      user: { id: 'user_1', email: 'ada@example.com' },
    });
  };
  const handler: Handler = (call) => {
    const url = new URL(call.url);
    if (url.pathname === '/auth/v1/token' && url.searchParams.get('grant_type') === 'password') {
      if (call.body.password !== 'pw') {
        return json({ error: { message: 'Invalid email or password.', type: 'invalid_request_error', param: null, code: 'invalid_credentials' } }, 400);
      }
      return issue();
    }
    if (url.pathname === '/auth/v1/token' && url.searchParams.get('grant_type') === 'refresh_token') {
      if (!live.delete(call.body.refresh_token)) {
        return json({ error: { message: 'Invalid refresh token.', type: 'invalid_request_error', param: null, code: 'invalid_grant' } }, 400);
      }
      return issue();
    }
    if (url.pathname === '/auth/v1/logout') {
      live.delete(call.body.refresh_token);
      revoked.push(call.body.refresh_token);
      return new Response(null, { status: 204 });
    }
    if (url.pathname === '/auth/v1/user') return json({ id: 'user_1', email: 'ada@example.com' });
    if (url.pathname === '/ai/v1/models') {
      return call.headers.authorization === `Bearer at${serial}`
        ? json({ object: 'list', data: [] })
        : json({ error: { message: 'expired', type: 'invalid_request_error', param: null, code: 'unauthorized' } }, 401);
    }
    return json({ error: { message: 'no route', type: 'invalid_request_error', param: null, code: 'not_found' } }, 404);
  };
  return { handler, revoked, refreshes: () => serial - 1 };
}

test('signInWithPassword keeps the session (in place of a static token); calls use its access token', async () => {
  const idp = identity(3600);
  const { fetch, calls } = fakeFetch(idp.handler);
  const reactor = createClient({ url: URL_, token: 'service-token', fetch });
  const events: string[] = [];
  reactor.auth.onAuthStateChange((event) => events.push(event));
  const session = await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  assert.equal(calls[0].url, `${URL_}/auth/v1/token?grant_type=password`);
  assert.deepEqual(calls[0].body, { email: 'ada@example.com', password: 'pw' });
  assert.equal(session.access_token, 'at1');
  assert.deepEqual(session.user, { id: 'user_1', email: 'ada@example.com' });
  assert.deepEqual(reactor.auth.session(), session);
  await reactor.ai.models();
  assert.equal(calls[1].headers.authorization, 'Bearer at1');
  assert.deepEqual(await reactor.auth.getUser(), { id: 'user_1', email: 'ada@example.com' });
  assert.deepEqual(events, ['SIGNED_IN']);
});

test('wrong credentials reject with the Identity error', async () => {
  const { fetch } = fakeFetch(identity(3600).handler);
  const reactor = createClient({ url: URL_, fetch });
  await assert.rejects(reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'nope' }), {
    name: 'ReactorError',
    status: 400,
    code: 'invalid_credentials',
  });
  assert.equal(reactor.auth.session(), null);
});

test('the access token is refreshed before it expires, once for concurrent calls, and the refresh token rotates', async () => {
  const idp = identity(20); // inside the 30 s margin: every call finds it about to expire
  const { fetch, calls } = fakeFetch(idp.handler);
  const reactor = createClient({ url: URL_, fetch });
  const events: string[] = [];
  reactor.auth.onAuthStateChange((event) => events.push(event));
  await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  await Promise.all([reactor.ai.models(), reactor.ai.models(), reactor.ai.models()]);
  assert.equal(idp.refreshes(), 1);
  const refreshCall = calls.find((c) => c.url.endsWith('grant_type=refresh_token'))!;
  assert.deepEqual(refreshCall.body, { refresh_token: 'rt1' });
  assert.equal(reactor.auth.session()?.refresh_token, 'rt2');
  assert.ok(calls.filter((c) => c.url.endsWith('/models')).every((c) => c.headers.authorization === 'Bearer at2'));
  await reactor.ai.models();
  assert.equal(reactor.auth.session()?.refresh_token, 'rt3');
  assert.deepEqual(events, ['SIGNED_IN', 'TOKEN_REFRESHED', 'TOKEN_REFRESHED']);

  // A long-lived token is left alone.
  const fresh = identity(3600);
  const second = fakeFetch(fresh.handler);
  const other = createClient({ url: URL_, fetch: second.fetch });
  await other.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  await other.ai.models();
  await other.ai.models();
  assert.equal(fresh.refreshes(), 0);
});

test('a 401 from the gateway refreshes once and retries', async () => {
  const idp = identity(3600);
  const { fetch, calls } = fakeFetch(idp.handler);
  const reactor = createClient({ url: URL_, fetch });
  const stale: Session = {
    access_token: 'at-stale',
    token_type: 'bearer',
    expires_in: 3600,
    expires_at: Date.now() / 1000 + 3600,
    refresh_token: 'rt0',
    user: null,
  };
  await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' }); // issues rt1
  reactor.auth.setSession({ ...stale, refresh_token: 'rt1' });
  await reactor.ai.models();
  const models = calls.filter((c) => c.url.endsWith('/models')).map((c) => c.headers.authorization);
  assert.deepEqual(models, ['Bearer at-stale', 'Bearer at2']);
});

test('a refused refresh token ends the session', async () => {
  const idp = identity(10);
  const { fetch } = fakeFetch(idp.handler);
  const reactor = createClient({ url: URL_, fetch });
  const events: string[] = [];
  reactor.auth.onAuthStateChange((event) => events.push(event));
  const session = await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  reactor.auth.setSession({ ...session, refresh_token: 'rt-spent' });
  await assert.rejects(reactor.ai.models(), { name: 'ReactorError', status: 401, code: 'unauthorized' });
  assert.equal(reactor.auth.session(), null);
  assert.deepEqual(events, ['SIGNED_IN', 'SIGNED_IN', 'SIGNED_OUT']);
});

test('signOut revokes the refresh token and forgets the session', async () => {
  const idp = identity(3600);
  const { fetch, calls } = fakeFetch(idp.handler);
  const reactor = createClient({ url: URL_, fetch });
  await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  await reactor.auth.signOut();
  const logout = calls.find((c) => c.url.endsWith('/auth/v1/logout'))!;
  assert.equal(logout.headers.authorization, 'Bearer at1');
  assert.deepEqual(logout.body, { refresh_token: 'rt1' });
  assert.deepEqual(idp.revoked, ['rt1']);
  assert.equal(reactor.auth.session(), null);
  await reactor.auth.signOut(); // signed out already: nothing to do
  assert.equal(calls.filter((c) => c.url.endsWith('/logout')).length, 1);
});

test('a static token is sent as is and never refreshed', async () => {
  const { fetch, calls } = fakeFetch(() => json({ object: 'list', data: [] }));
  const reactor = createClient({ url: `${URL_}/`, token: 'service-token', fetch });
  await reactor.ai.models();
  reactor.auth.setToken('other-token');
  await reactor.ai.models();
  reactor.auth.setToken(null);
  await reactor.ai.models();
  assert.deepEqual(
    calls.map((c) => [c.url, c.headers.authorization]),
    [
      [`${URL_}/ai/v1/models`, 'Bearer service-token'],
      [`${URL_}/ai/v1/models`, 'Bearer other-token'],
      [`${URL_}/ai/v1/models`, undefined],
    ],
  );
});

test('authUrl points sign-in at an external Identity service', async () => {
  const { fetch, calls } = fakeFetch((call) =>
    call.url.startsWith('https://id.example/v1/token') ? identity(3600).handler({ ...call, url: `${URL_}/auth/v1/token?grant_type=password` }) : json({}),
  );
  const reactor = createClient({ url: URL_, authUrl: 'https://id.example/v1/', fetch });
  await reactor.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' });
  assert.equal(calls[0].url, 'https://id.example/v1/token?grant_type=password');
});

test('createClient needs a URL', () => {
  assert.throws(() => createClient({ url: '' }), TypeError);
  assert.throws(() => createClient({ url: undefined as unknown as string }), TypeError);
});
