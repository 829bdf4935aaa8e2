// Sign-in against the gateway's Identity service for real: sessions, refresh with rotation, sign-out.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ReactorError, createClient } from '@reactor/client';

import { noIdentity } from './live.js';

const email = process.env.REACTOR_TEST_EMAIL ?? '';
const password = process.env.REACTOR_TEST_PASSWORD ?? '';
const url = process.env.REACTOR_URL ?? '';

describe('with the Identity service', { skip: await noIdentity() }, () => {
  test('signInWithPassword, then the gateway takes the session token', async () => {
    const reactor = createClient({ url });
    const session = await reactor.auth.signInWithPassword({ email, password });
    assert.equal(session.token_type.toLowerCase(), 'bearer');
    assert.equal(session.user?.email, email);
    assert.match(session.user?.id ?? '', /\S/);
    assert.ok(session.expires_at > Date.now() / 1000);
    assert.ok(session.refresh_token);
    assert.deepEqual(await reactor.auth.getUser(), session.user);
    const response = await reactor.ai.chatCompletion({ model: 'mock-local', messages: [{ role: 'user', content: 'signed in' }] });
    assert.equal(response.choices[0].message.content, 'Hello from mock: signed in');
    await reactor.auth.signOut();
  });

  test('the access token is refreshed before it expires, and each refresh token works once', async () => {
    // A margin longer than the token's life: every call finds it about to expire.
    const reactor = createClient({ url, refreshMargin: 24 * 3600 });
    const first = await reactor.auth.signInWithPassword({ email, password });
    const events: string[] = [];
    reactor.auth.onAuthStateChange((event) => events.push(event));
    const stream = await reactor.ai.chatCompletionStream({ model: 'mock-local', messages: [{ role: 'user', content: '#chunks=3' }] });
    assert.equal(await stream.text(), 'tok0 tok1 tok2 ');
    const second = reactor.auth.session()!;
    assert.notEqual(second.refresh_token, first.refresh_token);
    await Promise.all([reactor.ai.models(), reactor.ai.models()]); // one refresh for both
    const third = reactor.auth.session()!;
    assert.notEqual(third.refresh_token, second.refresh_token);
    assert.deepEqual(events, ['TOKEN_REFRESHED', 'TOKEN_REFRESHED']);

    // The spent refresh token is refused.
    const replay = createClient({ url, refreshMargin: 24 * 3600 });
    replay.auth.setSession(first);
    await assert.rejects(replay.ai.models(), (error: unknown) => error instanceof ReactorError && error.status === 401);
    assert.equal(replay.auth.session(), null);
  });

  test('signOut ends the session at the Identity service', async () => {
    const reactor = createClient({ url });
    const session = await reactor.auth.signInWithPassword({ email, password });
    await reactor.auth.signOut();
    assert.equal(reactor.auth.session(), null);
    const later = createClient({ url });
    later.auth.setSession(session);
    await assert.rejects(later.auth.refreshSession(), (error: unknown) => error instanceof ReactorError && error.status === 401);
  });
});
