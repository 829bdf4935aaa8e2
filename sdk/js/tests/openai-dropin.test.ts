// "Drop-in OpenAI SDK replacement" from the product page, verbatim, with the official `openai` package.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import OpenAI from 'openai';

import { noGateway } from './live.js';

test('the official OpenAI SDK pointed at the gateway', { skip: noGateway }, async () => {
  const openai = new OpenAI({
    baseURL: `${process.env.REACTOR_URL}/ai/v1`,
    apiKey: process.env.REACTOR_TOKEN!, // JWT access token
  });

  const completion = await openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'Hello!' }],
  });

  assert.equal(completion.choices[0].message.content, 'Hello from mock: Hello!');
  assert.equal(completion.model, 'gpt-4o-mini');
});

test('the official OpenAI SDK: streaming, embeddings, models and errors', { skip: noGateway }, async () => {
  const openai = new OpenAI({ baseURL: `${process.env.REACTOR_URL}/ai/v1`, apiKey: process.env.REACTOR_TOKEN!, maxRetries: 0 });

  const stream = await openai.chat.completions.create({
    model: 'reasoning/cheapest',
    messages: [{ role: 'user', content: 'Explain quantum computing' }],
    stream: true,
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(text, 'Hello from mock: Explain quantum computing');

  const embeddings = await openai.embeddings.create({ model: 'text-embedding-3-small', input: ['Hello', 'World'] });
  assert.equal(embeddings.data.length, 2);

  const models = [];
  for await (const model of openai.models.list()) models.push(model.id);
  assert.ok(models.includes('gpt-4o-mini'));

  await assert.rejects(
    openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (error: unknown) => error instanceof OpenAI.NotFoundError && error.code === 'model_not_found',
  );

  const broken = await openai.chat.completions.create({
    model: 'mock-local',
    messages: [{ role: 'user', content: '#chunks=4 #midstream_error' }],
    stream: true,
  });
  await assert.rejects(async () => {
    for await (const _ of broken);
  }, OpenAI.APIError);
});
