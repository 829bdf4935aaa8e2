/**
 * A Server-Sent Events decoder after the WHATWG rules: lines end with CRLF, LF or CR (also when
 * the two bytes of a CRLF, or the bytes of one UTF-8 character, arrive in different network
 * reads); `data` lines of one event are joined with `\n`; lines starting with `:` are comments;
 * a blank line ends an event; a leading BOM is skipped.
 */

export interface ServerSentEvent {
  /** The `event` field, `message` when the event had none. */
  event: string;
  data: string;
  /** The last event id seen on the stream (`''` if none). */
  id: string;
  /** The `retry` field of this event, when it had one. */
  retry?: number;
}

const LF = 10;
const CR = 13;

/** Feed it bytes (or text) as they arrive; it returns the events they complete. */
export class SSEDecoder {
  private readonly decoder = new TextDecoder('utf-8');
  private partial = '';
  private afterCR = false;
  private data: string[] = [];
  private hasData = false;
  private eventType = '';
  private lastId = '';
  private retry: number | undefined;

  push(chunk: Uint8Array | string): ServerSentEvent[] {
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    const out: ServerSentEvent[] = [];
    this.feed(text, out);
    return out;
  }

  /**
   * The end of the stream. An event whose lines all arrived but whose closing blank line did not
   * is still delivered; a line cut off in the middle is dropped.
   */
  end(): ServerSentEvent[] {
    const out: ServerSentEvent[] = [];
    this.feed(this.decoder.decode(), out);
    if (this.partial === '' && this.hasData) this.line('', out);
    this.partial = '';
    this.reset();
    return out;
  }

  private feed(text: string, out: ServerSentEvent[]): void {
    let start = 0;
    if (this.afterCR && text.length > 0) {
      // A CR ended the previous read: an LF opening this one belongs to the same line break.
      if (text.charCodeAt(0) === LF) start = 1;
      this.afterCR = false;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      const line = this.partial + text.slice(start, i);
      this.partial = '';
      this.line(line, out);
      if (c === CR) {
        if (i + 1 === text.length) this.afterCR = true;
        else if (text.charCodeAt(i + 1) === LF) i++;
      }
      start = i + 1;
    }
    if (start < text.length) this.partial += text.slice(start);
  }

  private line(line: string, out: ServerSentEvent[]): void {
    if (line === '') {
      if (this.hasData) {
        const event: ServerSentEvent = { event: this.eventType || 'message', data: this.data.join('\n'), id: this.lastId };
        if (this.retry !== undefined) event.retry = this.retry;
        out.push(event);
      }
      this.reset();
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) return; // a comment (keep-alives are sent this way)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  private reset(): void {
    this.data = [];
    this.hasData = false;
    this.eventType = '';
    this.retry = undefined;
  }
}

/** A body to decode: a `fetch` response body, or any async iterable of bytes or text. */
export type SSESource = ReadableStream<Uint8Array> | AsyncIterable<Uint8Array | string>;

/**
 * The events of an SSE body, in order. Leaving the loop early (or an error) cancels the body,
 * which closes the connection.
 */
export async function* parseSSE(source: SSESource): AsyncGenerator<ServerSentEvent, void, undefined> {
  const decoder = new SSEDecoder();
  if (isReadableStream(source)) {
    const reader = source.getReader();
    let finished = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        yield* decoder.push(value);
      }
      finished = true;
      yield* decoder.end();
    } finally {
      if (!finished) await reader.cancel().catch(() => undefined);
      reader.releaseLock();
    }
    return;
  }
  for await (const chunk of source) yield* decoder.push(chunk);
  yield* decoder.end();
}

function isReadableStream(source: SSESource): source is ReadableStream<Uint8Array> {
  return typeof (source as ReadableStream<Uint8Array>).getReader === 'function';
}
