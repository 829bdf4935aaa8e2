// The JavaScript snippets of the product page, as they are printed there. The page leaves
// `email` and `password` to the reader: they come from the test user tests/test_js_client.py makes.
// `process` and `console` in the tests are stand-ins that collect what the snippets print.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createClient } from '@reactor/client';

import { noGateway, noIdentity, printing } from './live.js';

const email = process.env.REACTOR_TEST_EMAIL ?? '';
const password = process.env.REACTOR_TEST_PASSWORD ?? '';
const skipSignIn = await noIdentity();

test('Quickstart: sign in, chat, stream', { skip: skipSignIn }, async () => {
  const { process, console, output } = printing();
  {
    const reactor = createClient({ url: process.env.REACTOR_URL! });
    await reactor.auth.signInWithPassword({ email, password });

    // Non-streaming
    const response = await reactor.ai.chatCompletion({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Hello!' }],
    });
    console.log(response.choices[0].message.content);

    // Streaming
    const stream = await reactor.ai.chatCompletionStream({
      model: 'reasoning/cheapest',
      messages: [{ role: 'user', content: 'Explain quantum computing' }],
    });
    for await (const chunk of stream) {
      process.stdout.write(chunk.choices[0]?.delta?.content ?? '');
    }
  }
  assert.equal(output(), 'Hello from mock: Hello!\nHello from mock: Explain quantum computing');
});

// The same Quickstart with a service token (`reactor auth token USER_ID`) in place of the sign-in.
test('Quickstart with a service token: chat, stream', { skip: noGateway }, async () => {
  const { process, console, output } = printing();
  {
    const reactor = createClient({ url: process.env.REACTOR_URL!, token: process.env.REACTOR_TOKEN! });

    // Non-streaming
    const response = await reactor.ai.chatCompletion({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Hello!' }],
    });
    console.log(response.choices[0].message.content);

    // Streaming
    const stream = await reactor.ai.chatCompletionStream({
      model: 'reasoning/cheapest',
      messages: [{ role: 'user', content: 'Explain quantum computing' }],
    });
    for await (const chunk of stream) {
      process.stdout.write(chunk.choices[0]?.delta?.content ?? '');
    }
  }
  assert.equal(output(), 'Hello from mock: Hello!\nHello from mock: Explain quantum computing');
});

test('Use a routing alias', { skip: noGateway }, async () => {
  const reactor = createClient({ url: process.env.REACTOR_URL!, token: process.env.REACTOR_TOKEN! });

  const response = await reactor.ai.chatCompletion({
    model: 'reasoning/cheapest',
    messages: [{ role: 'user', content: 'Draft a product announcement' }],
  });

  // The alias resolved to its cheapest target.
  assert.equal(response.model, 'gpt-4o-mini');
  assert.equal(response.choices[0].message.content, 'Hello from mock: Draft a product announcement');
});

test('Generate embeddings', { skip: noGateway }, async () => {
  const { process, console, output } = printing();
  const reactor = createClient({ url: process.env.REACTOR_URL!, token: process.env.REACTOR_TOKEN! });
  {
    const { data } = await reactor.ai.embed({
      model: 'text-embedding-3-small',
      input: ['Hello', 'World'],
    });
    console.log(data[0].embedding.length);
  }
  assert.match(output(), /^[1-9]\d*\n$/);
});
