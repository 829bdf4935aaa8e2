/**
 * Requests and responses of the gateway's OpenAI-compatible API (`/ai/v1`). Fields the gateway
 * does not model are forwarded to OpenAI-compatible upstreams untouched, so requests accept
 * extra keys.
 */

// --- chat ---------------------------------------------------------------------------------------

export interface TextContentPart {
  type: 'text';
  text: string;
}

export interface ImageContentPart {
  type: 'image_url';
  image_url: { url: string; detail?: 'auto' | 'low' | 'high' };
}

export interface AudioContentPart {
  type: 'input_audio';
  input_audio: { data: string; format: 'wav' | 'mp3' };
}

export type ContentPart = TextContentPart | ImageContentPart | AudioContentPart | { type: string; [key: string]: unknown };

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface SystemMessage {
  role: 'system' | 'developer';
  content: string | TextContentPart[];
  name?: string;
}

export interface UserMessage {
  role: 'user';
  content: string | ContentPart[];
  name?: string;
}

export interface AssistantMessage {
  role: 'assistant';
  content?: string | TextContentPart[] | null;
  name?: string;
  tool_calls?: ToolCall[];
  refusal?: string | null;
}

export interface ToolMessage {
  role: 'tool';
  content: string | TextContentPart[];
  tool_call_id: string;
}

export type ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage;

export interface FunctionTool {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; json_schema: { name: string; schema?: Record<string, unknown>; strict?: boolean; description?: string } };

/** A chat request; `stream` is set by the method you call. */
export interface ChatCompletionRequest {
  /** A model id or a routing alias such as `reasoning/cheapest`. */
  model: string;
  messages: ChatMessage[];
  max_tokens?: number;
  max_completion_tokens?: number;
  temperature?: number;
  top_p?: number;
  n?: number;
  stop?: string | string[];
  seed?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  logit_bias?: Record<string, number>;
  logprobs?: boolean;
  top_logprobs?: number;
  tools?: FunctionTool[];
  tool_choice?: ToolChoice;
  parallel_tool_calls?: boolean;
  response_format?: ResponseFormat;
  user?: string;
  [key: string]: unknown;
}

export interface ChatCompletionStreamRequest extends ChatCompletionRequest {
  /** `include_usage: true` adds a last chunk with `usage` and no choices. */
  stream_options?: { include_usage?: boolean };
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number; [key: string]: unknown };
  completion_tokens_details?: { reasoning_tokens?: number; [key: string]: unknown };
}

export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'function_call';

export interface ChatCompletionMessage {
  role: 'assistant';
  content: string | null;
  tool_calls?: ToolCall[];
  refusal?: string | null;
}

export interface ChatCompletionChoice {
  index: number;
  message: ChatCompletionMessage;
  finish_reason: FinishReason | null;
  logprobs?: unknown;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  /** The registry id of the model that served (for an alias, the target it resolved to). */
  model: string;
  choices: ChatCompletionChoice[];
  usage?: CompletionUsage;
  system_fingerprint?: string | null;
}

export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function?: { name?: string; arguments?: string };
}

export interface ChatCompletionDelta {
  role?: 'assistant';
  content?: string | null;
  tool_calls?: ToolCallDelta[];
  refusal?: string | null;
}

export interface ChatCompletionChunkChoice {
  index: number;
  delta: ChatCompletionDelta;
  finish_reason: FinishReason | null;
  logprobs?: unknown;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: ChatCompletionChunkChoice[];
  usage?: CompletionUsage | null;
  system_fingerprint?: string | null;
}

// --- embeddings ---------------------------------------------------------------------------------

export interface EmbeddingRequest {
  model: string;
  /** A string, strings, a token array or token arrays. */
  input: string | string[] | number[] | number[][];
  encoding_format?: 'float' | 'base64';
  dimensions?: number;
  user?: string;
  [key: string]: unknown;
}

export interface Embedding {
  object: 'embedding';
  index: number;
  /** Floats, or a base64 string of little-endian float32 when `encoding_format: 'base64'`. */
  embedding: number[];
}

export interface EmbeddingResponse {
  object: 'list';
  data: Embedding[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

// --- models -------------------------------------------------------------------------------------

export interface Model {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  /** True for a routing alias, which carries `strategy` and `targets` instead of capabilities. */
  alias?: boolean;
  strategy?: 'first' | 'random' | 'round_robin' | 'cheapest' | 'fastest' | string;
  targets?: string[];
  capabilities?: string[];
  context_window?: number;
  input_price_per_mtok?: number;
  output_price_per_mtok?: number;
  cached_input_price_per_mtok?: number;
  /** The provider tables that can serve the model, in the order they are tried. */
  providers?: string[];
}

export interface ModelList {
  object: 'list';
  data: Model[];
}

export interface Health {
  status: 'ok' | 'degraded' | 'unavailable' | string;
  redis?: string;
  workers?: Record<string, number>;
  version?: string;
  [key: string]: unknown;
}

// --- calls --------------------------------------------------------------------------------------

export interface RequestOptions {
  /** Aborts the call (and a stream being read); the call then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Extra request headers. */
  headers?: Record<string, string>;
}
