// The SSE decoder on its own: bodies split at every offset, line endings, comments, multi-line data.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SSEDecoder, parseSSE, type ServerSentEvent } from '@reactor/client';

const encoder = new TextEncoder();

function decodeAll(parts: (Uint8Array | string)[]): ServerSentEvent[] {
  const decoder = new SSEDecoder();
  const events = parts.flatMap((part) => decoder.push(part));
  return [...events, ...decoder.end()];
}

/** Every way of cutting `bytes` in two, and in three at odd offsets. */
function splits(bytes: Uint8Array): Uint8Array[][] {
  const out: Uint8Array[][] = [[bytes]];
  for (let i = 0; i <= bytes.length; i++) out.push([bytes.slice(0, i), bytes.slice(i)]);
  for (let i = 1; i < bytes.length; i += 3) {
    for (let j = i + 1; j < bytes.length; j += 5) out.push([bytes.slice(0, i), bytes.slice(i, j), bytes.slice(j)]);
  }
  return out;
}

const data = (events: ServerSentEvent[]) => events.map((event) => event.data);

const CHUNK = (text: string) =>
  JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: text }, finish_reason: null }] });

test('events come out whole however the body is cut, also inside a UTF-8 character', () => {
  const body = `: keep-alive\n\ndata: ${CHUNK('héllo ')}\n\ndata: ${CHUNK('wörld 🌍')}\r\n\r\ndata: [DONE]\n\n`;
  const bytes = encoder.encode(body);
  const expected = [CHUNK('héllo '), CHUNK('wörld 🌍'), '[DONE]'];
  for (const parts of splits(bytes)) {
    assert.deepEqual(data(decodeAll(parts)), expected, `split at ${parts.map((p) => p.length).join('+')}`);
  }
  // One byte at a time.
  assert.deepEqual(data(decodeAll([...bytes].map((b) => Uint8Array.of(b)))), expected);
});

test('CRLF, LF and CR all end lines, also when CR and LF arrive in different reads', () => {
  for (const eol of ['\n', '\r\n', '\r']) {
    const bytes = encoder.encode(`data: a${eol}data: b${eol}${eol}data: c${eol}${eol}`);
    for (const parts of splits(bytes)) {
      assert.deepEqual(data(decodeAll(parts)), ['a\nb', 'c'], JSON.stringify(eol));
    }
  }
  // A CR at the end of one read and an LF at the start of the next are one line break, not two.
  assert.deepEqual(data(decodeAll(['data: x\r', '\ndata: y\r', '\n\r', '\n'])), ['x\ny']);
});

test('multi-line data is joined with newlines; comments, unknown fields and empty events are skipped', () => {
  const events = decodeAll([
    ': comment\n',
    'data: {"a":\n',
    ':another comment between the lines\n',
    'data:  1}\n', // only one leading space is stripped
    'foo: bar\n',
    '\n',
    '\n\n', // blank lines without data dispatch nothing
    'data\n', // a field name alone: an empty value
    '\n',
  ]);
  assert.deepEqual(data(events), ['{"a":\n 1}', '']);
});

test('event, id and retry fields', () => {
  const events = decodeAll(['event: ping\nid: 7\nretry: 1500\ndata: x\n\n', 'data: y\n\n']);
  assert.deepEqual(events, [
    { event: 'ping', data: 'x', id: '7', retry: 1500 },
    { event: 'message', data: 'y', id: '7' },
  ]);
});

test('a leading BOM is skipped', () => {
  const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...encoder.encode('data: hi\n\n')]);
  for (const parts of splits(bytes)) assert.deepEqual(data(decodeAll(parts)), ['hi']);
});

test('at the end of the body: a complete last event is kept, a line cut in the middle is dropped', () => {
  assert.deepEqual(data(decodeAll(['data: a\n\ndata: [DONE]\n'])), ['a', '[DONE]']);
  assert.deepEqual(data(decodeAll(['data: a\n\ndata: {"cho'])), ['a']);
});

test('parseSSE reads a fetch body (a ReadableStream) and an async iterable alike', async () => {
  const pieces = ['da', 'ta: one\r', '\n\r\ndata: t', 'wo\n', '\n'];
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const piece of pieces) controller.enqueue(encoder.encode(piece));
      controller.close();
    },
  });
  const fromStream: string[] = [];
  for await (const event of parseSSE(stream)) fromStream.push(event.data);
  assert.deepEqual(fromStream, ['one', 'two']);

  async function* iterable() {
    yield* pieces;
  }
  const fromIterable: string[] = [];
  for await (const event of parseSSE(iterable())) fromIterable.push(event.data);
  assert.deepEqual(fromIterable, ['one', 'two']);
});

test('leaving the loop early cancels the body', async () => {
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(encoder.encode('data: tick\n\n'));
    },
    cancel() {
      cancelled = true;
    },
  });
  for await (const event of parseSSE(stream)) {
    assert.equal(event.data, 'tick');
    break;
  }
  assert.ok(cancelled);
});
