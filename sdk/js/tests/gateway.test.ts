// The client against a running gateway (real `reactor api` + `reactor worker`, mock upstreams).
// The mock answers "Hello from mock: <prompt>"; directives in the prompt (#chunks=N, #delay=MS,
// #midstream_error) shape the answer.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ReactorError, createClient } from '@reactor/client';

import { noGateway } from './live.js';

describe('against a running gateway', { skip: noGateway }, () => {
  const url = process.env.REACTOR_URL!;
  const reactor = createClient({ url, token: process.env.REACTOR_TOKEN! });

  test('chatCompletion', async () => {
    const response = await reactor.ai.chatCompletion({
      model: 'mock-local',
      messages: [{ role: 'user', content: 'Hello there' }],
    });
    assert.equal(response.object, 'chat.completion');
    assert.equal(response.model, 'mock-local');
    assert.equal(response.choices[0].message.role, 'assistant');
    assert.equal(response.choices[0].message.content, 'Hello from mock: Hello there');
    assert.equal(response.choices[0].finish_reason, 'stop');
    assert.ok(response.usage && response.usage.completion_tokens > 0);
    assert.match(response.id, /^chatcmpl-/);
  });

  test('chatCompletionStream assembles the text, chunk by chunk', async () => {
    const stream = await reactor.ai.chatCompletionStream({
      model: 'mock-local',
      messages: [{ role: 'user', content: 'count #chunks=5' }],
      stream_options: { include_usage: true },
    });
    assert.ok(stream.requestId);
    let text = '';
    let contentChunks = 0;
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      assert.equal(chunk.id, `chatcmpl-${stream.requestId}`);
      const choice = chunk.choices[0];
      if (choice?.delta?.content) {
        text += choice.delta.content;
        contentChunks++;
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, 'tok0 tok1 tok2 tok3 tok4 ');
    assert.equal(contentChunks, 5);
    assert.equal(finish, 'stop');
    assert.ok(usage && usage.completion_tokens === 5);
  });

  test('an error mid-stream throws a ReactorError after the chunks before it', async () => {
    const stream = await reactor.ai.chatCompletionStream({
      model: 'mock-local',
      messages: [{ role: 'user', content: 'fail #chunks=6 #midstream_error' }],
    });
    let text = '';
    await assert.rejects(
      async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
      },
      (error: unknown) => {
        assert.ok(error instanceof ReactorError, String(error));
        assert.equal(error.midStream, true);
        // Content had been sent, so the gateway reports the failure as an incomplete answer.
        assert.equal(error.code, 'incomplete_response');
        assert.equal(error.status, 502);
        assert.match(error.message, /incomplete/);
        assert.equal(error.requestId, stream.requestId);
        return true;
      },
    );
    assert.equal(text, 'tok0 tok1 ');
  });

  test('embed', async () => {
    const { data, model, usage } = await reactor.ai.embed({ model: 'mock-embed', input: ['Hello', 'World'] });
    assert.equal(model, 'mock-embed');
    assert.equal(data.length, 2);
    assert.deepEqual(data.map((d) => d.index), [0, 1]);
    assert.ok(data[0].embedding.length > 0);
    assert.ok(data[0].embedding.every((x) => typeof x === 'number'));
    assert.notDeepEqual(data[0].embedding, data[1].embedding);
    assert.ok(usage.prompt_tokens > 0);
  });

  test('models and one model or alias', async () => {
    const list = await reactor.ai.models();
    assert.equal(list.object, 'list');
    const ids = list.data.map((m) => m.id);
    for (const id of ['mock-local', 'mock-embed', 'gpt-4o-mini', 'reasoning/cheapest']) assert.ok(ids.includes(id), id);
    const alias = await reactor.ai.model('reasoning/cheapest');
    assert.equal(alias.alias, true);
    assert.equal(alias.strategy, 'cheapest');
    assert.deepEqual(alias.targets, ['gpt-4o-mini', 'claude-3-haiku']);
    const model = await reactor.ai.model('mock-local');
    assert.deepEqual(model.capabilities?.includes('chat'), true);
  });

  test('an unknown model is a ReactorError model_not_found, 404', async () => {
    for (const call of [
      () => reactor.ai.chatCompletion({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
      () => reactor.ai.chatCompletionStream({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
      () => reactor.ai.embed({ model: 'no-such-model', input: 'x' }),
      () => reactor.ai.model('no-such-model'),
    ]) {
      await assert.rejects(call(), (error: unknown) => {
        assert.ok(error instanceof ReactorError, String(error));
        assert.equal(error.code, 'model_not_found');
        assert.equal(error.status, 404);
        assert.match(error.message, /no-such-model/);
        return true;
      });
    }
  });

  test('no token, or a bad one, is a ReactorError unauthorized, 401', async () => {
    const anonymous = createClient({ url });
    await assert.rejects(anonymous.ai.models(), { name: 'ReactorError', status: 401, code: 'unauthorized' });
    anonymous.auth.setToken('not-a-jwt');
    await assert.rejects(anonymous.ai.models(), { name: 'ReactorError', status: 401, code: 'unauthorized' });
    anonymous.auth.setToken(process.env.REACTOR_TOKEN!);
    assert.ok((await anonymous.ai.models()).data.length > 0);
  });

  test('an invalid request is a ReactorError invalid_request_error, 400, naming the field', async () => {
    await assert.rejects(
      reactor.ai.chatCompletion({ model: 'mock-local', messages: [{ role: 'user', content: 'x' }], temperature: 'hot' as unknown as number }),
      (error: unknown) => error instanceof ReactorError && error.status === 400 && error.code === 'invalid_request_error',
    );
  });

  test('an AbortSignal cancels a slow stream at once', async () => {
    const controller = new AbortController();
    const started = Date.now();
    const stream = await reactor.ai.chatCompletionStream(
      { model: 'mock-local', messages: [{ role: 'user', content: 'slow #chunks=50 #delay=100' }] },
      { signal: controller.signal },
    );
    let received = 0;
    await assert.rejects(
      async () => {
        for await (const chunk of stream) {
          if (chunk.choices[0]?.delta?.content) received++;
          if (received === 2) controller.abort();
        }
      },
      { name: 'AbortError' },
    );
    const elapsed = Date.now() - started;
    assert.equal(received, 2);
    assert.ok(elapsed < 2000, `took ${elapsed} ms (the whole stream takes 5 s)`);
  });

  test('an AbortSignal cancels a non-streamed call, and stream.abort() a stream', async () => {
    const started = Date.now();
    await assert.rejects(
      reactor.ai.chatCompletion(
        { model: 'mock-local', messages: [{ role: 'user', content: 'slow #delay=3000' }] },
        { signal: AbortSignal.timeout(300) },
      ),
      { name: 'TimeoutError' },
    );
    assert.ok(Date.now() - started < 2000);

    const stream = await reactor.ai.chatCompletionStream({
      model: 'mock-local',
      messages: [{ role: 'user', content: 'slow #chunks=50 #delay=100' }],
    });
    await assert.rejects(
      async () => {
        for await (const _ of stream) stream.abort();
      },
      { name: 'AbortError' },
    );
  });

  test('leaving a stream early closes it; the client goes on working', async () => {
    const stream = await reactor.ai.chatCompletionStream({
      model: 'mock-local',
      messages: [{ role: 'user', content: 'slow #chunks=50 #delay=100' }],
    });
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      break;
    }
    const response = await reactor.ai.chatCompletion({ model: 'mock-local', messages: [{ role: 'user', content: 'again' }] });
    assert.equal(response.choices[0].message.content, 'Hello from mock: again');
  });

  test('health needs no sign-in', async () => {
    const health = await createClient({ url }).ai.health();
    assert.ok(['ok', 'degraded'].includes(health.status), JSON.stringify(health));
  });
});
