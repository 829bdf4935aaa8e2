import type { AuthClient } from './auth.js';
import { ReactorError, isObject, type ErrorBody } from './errors.js';
import { Http, connectionError, linkedController, readJson, type HttpRequest } from './http.js';
import { parseSSE } from './sse.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatCompletionStreamRequest,
  EmbeddingRequest,
  EmbeddingResponse,
  Health,
  Model,
  ModelList,
  RequestOptions,
} from './types.js';

/** The gateway's OpenAI-compatible API (`/ai/v1`), called with the client's session or token. */
export class AIClient {
  /** `{url}/ai/v1`: also the `baseURL` for the official OpenAI SDKs. */
  readonly baseUrl: string;

  constructor(
    private readonly http: Http,
    private readonly auth: AuthClient,
    url: string,
  ) {
    this.baseUrl = `${url}/ai/v1`;
  }

  /** A chat completion, whole. */
  async chatCompletion(request: ChatCompletionRequest, options: RequestOptions = {}): Promise<ChatCompletion> {
    const response = await this.send('POST', '/chat/completions', { ...request, stream: false }, options);
    return readJson<ChatCompletion>(response, `${this.baseUrl}/chat/completions`, options.signal);
  }

  /**
   * A chat completion as it is generated. Resolves once the gateway accepted the request (an
   * error before the first token rejects here); iterate the result with `for await` to get the
   * chunks. An error event mid-stream, or a stream that ends without `[DONE]`, throws a
   * {@link ReactorError} from the loop.
   */
  async chatCompletionStream(
    request: ChatCompletionStreamRequest,
    options: RequestOptions = {},
  ): Promise<ChatCompletionStream> {
    const { controller, release } = linkedController(options.signal);
    try {
      const response = await this.send('POST', '/chat/completions', { ...request, stream: true }, {
        ...options,
        signal: controller.signal,
      }, 'text/event-stream');
      const type = response.headers.get('content-type') ?? '';
      if (!type.startsWith('text/event-stream') || !response.body) {
        await response.body?.cancel().catch(() => undefined);
        throw new ReactorError(`Expected an event stream from ${this.baseUrl}/chat/completions, got '${type}'.`, {
          code: 'invalid_response',
          status: response.status,
          requestId: response.headers.get('x-request-id') ?? undefined,
        });
      }
      return new ChatCompletionStream(response, controller, release, `${this.baseUrl}/chat/completions`);
    } catch (error) {
      release();
      throw error;
    }
  }

  /** Embeddings of one or more inputs. */
  async embed(request: EmbeddingRequest, options: RequestOptions = {}): Promise<EmbeddingResponse> {
    const response = await this.send('POST', '/embeddings', request, options);
    return readJson<EmbeddingResponse>(response, `${this.baseUrl}/embeddings`, options.signal);
  }

  /** Every model and alias the gateway can serve. */
  async models(options: RequestOptions = {}): Promise<ModelList> {
    const response = await this.send('GET', '/models', undefined, options);
    return readJson<ModelList>(response, `${this.baseUrl}/models`, options.signal);
  }

  /** One model or alias (`model_not_found` when the registry has no such id). */
  async model(id: string, options: RequestOptions = {}): Promise<Model> {
    const path = `/models/${id.split('/').map(encodeURIComponent).join('/')}`;
    const response = await this.send('GET', path, undefined, options);
    return readJson<Model>(response, `${this.baseUrl}${path}`, options.signal);
  }

  /** The gateway's health (no sign-in needed); a 503 answer is returned, not thrown. */
  async health(options: RequestOptions = {}): Promise<Health> {
    const url = `${this.baseUrl}/health`;
    try {
      return await this.http.json<Health>({ method: 'GET', url, signal: options.signal, headers: options.headers });
    } catch (error) {
      if (error instanceof ReactorError && error.status === 503) {
        return { status: 'unavailable', error: error.message };
      }
      throw error;
    }
  }

  private async send(
    method: HttpRequest['method'],
    path: string,
    body: unknown,
    options: RequestOptions,
    accept?: string,
  ): Promise<Response> {
    const request: HttpRequest = {
      method,
      url: `${this.baseUrl}${path}`,
      body,
      headers: options.headers,
      signal: options.signal,
      accept,
    };
    const token = await this.auth.accessToken({ signal: options.signal });
    try {
      return await this.http.send({ ...request, token });
    } catch (error) {
      // A refused token may be stale (clock skew, a revocation): refresh once and try again.
      if (!(error instanceof ReactorError) || error.status !== 401) throw error;
      const fresh = await this.auth.tokenAfterUnauthorized(token, { signal: options.signal }).catch(() => null);
      if (!fresh) throw error;
      return this.http.send({ ...request, token: fresh });
    }
  }
}

/**
 * The chunks of a streamed chat completion: iterate it once with `for await`. Leaving the loop
 * early closes the connection, which makes the gateway stop the upstream call.
 */
export class ChatCompletionStream implements AsyncIterable<ChatCompletionChunk> {
  /** The gateway's id for the request (`X-Request-Id`); the completion id is `chatcmpl-<it>`. */
  readonly requestId: string | undefined;
  private iterated = false;

  constructor(
    readonly response: Response,
    private readonly controller: AbortController,
    private readonly release: () => void,
    private readonly url: string,
  ) {
    this.requestId = response.headers.get('x-request-id') ?? undefined;
  }

  /** Stops the stream: the loop reading it rejects with an `AbortError`. */
  abort(reason?: unknown): void {
    this.controller.abort(reason);
  }

  [Symbol.asyncIterator](): AsyncIterator<ChatCompletionChunk> {
    if (this.iterated) throw new TypeError('A ChatCompletionStream can be iterated only once.');
    this.iterated = true;
    return this.chunks();
  }

  /** Reads the whole stream and returns the text of its first choice. */
  async text(): Promise<string> {
    let text = '';
    for await (const chunk of this) text += chunk.choices[0]?.delta?.content ?? '';
    return text;
  }

  private async *chunks(): AsyncGenerator<ChatCompletionChunk, void, undefined> {
    const signal = this.controller.signal;
    const requestId = this.requestId;
    const events = parseSSE(this.response.body as ReadableStream<Uint8Array>);
    try {
      for (;;) {
        let next: IteratorResult<{ data: string }>;
        try {
          next = await events.next();
        } catch (error) {
          const failure = connectionError(error, this.url, signal, requestId);
          if (failure instanceof ReactorError) {
            throw new ReactorError(`The stream broke off: ${failure.message}`, {
              code: 'incomplete_stream',
              requestId,
              midStream: true,
              cause: error,
            });
          }
          throw failure;
        }
        if (next.done) break;
        const data = next.value.data;
        if (data === '[DONE]') return;
        let payload: unknown;
        try {
          payload = JSON.parse(data);
        } catch (error) {
          throw new ReactorError(`An event of the stream is not JSON: ${data.slice(0, 200)}`, {
            code: 'invalid_response',
            requestId,
            midStream: true,
            cause: error,
          });
        }
        if (isObject(payload) && isObject(payload.error)) {
          throw ReactorError.fromBody(payload.error as Partial<ErrorBody>, { requestId, midStream: true });
        }
        yield payload as ChatCompletionChunk;
      }
      if (signal.aborted) throw signal.reason;
      throw new ReactorError('The stream ended before [DONE].', { code: 'incomplete_stream', requestId, midStream: true });
    } finally {
      await events.return(undefined).catch(() => undefined);
      this.release();
    }
  }
}
