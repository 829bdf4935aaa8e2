"""What crosses a boundary: client request bodies, queued jobs and reply messages.

Request Structs validate the parts of the OpenAI body that the gateway must understand;
the body itself travels to the worker as the client sent it, so fields we do not model
reach OpenAI-compatible upstreams untouched. Because the body goes on, the front door also
refuses what would be valid JSON to Python yet trouble further along: strings that are not
UTF-8, nesting past :data:`MAX_JSON_DEPTH`, and integers that do not fit in 64 bits (Python
reads them happily; upstreams written in other languages do not). Every such body is a 400
decided here, before any upstream is asked.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import InvalidRequest, WireError
from .extensions import Reservation

# -------------------------------------------------------------------------------------------
# Client requests (validation only)


class TextPart(Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(Struct):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL


class InputAudio(Struct):
    data: str
    format: str


class AudioPart(Struct, tag="input_audio", tag_field="type"):
    input_audio: InputAudio


class FilePart(Struct, tag="file", tag_field="type"):
    file: dict[str, Any]


class RefusalPart(Struct, tag="refusal", tag_field="type"):
    refusal: str


ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart


class FunctionCall(Struct):
    name: str
    arguments: str


class ToolCall(Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Struct):
    name: str


class ToolChoiceFunction(Struct):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Struct):
    include_usage: bool | None = None


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


Probability = Annotated[float, Meta(ge=0, le=1)]
Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
# Counts (tokens, dimensions) and token ids stay below 2**31: every upstream keeps them in a
# 32-bit integer, and no model comes near.
MAX_COUNT = 2**31 - 1
PositiveInt = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
# What a JSON integer anywhere in a body may be: a signed 64-bit value.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
# The deepest nesting a body may have: serde_json's default limit, so nothing an upstream built
# on it would refuse gets past the front door, and far below where Python's recursion ends.
MAX_JSON_DEPTH = 128


class ChatRequest(Struct):
    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    seed: Int64 | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None


class EmbeddingsRequest(Struct):
    model: Annotated[str, Meta(min_length=1)]
    # msgspec unions allow one list type; the element kinds are checked in check_embeddings.
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None


_json_decoder = msgspec.json.Decoder()
# Byte-level pre-checks that spare the walk of a decoded body in the common case: a body with no
# more brackets than MAX_JSON_DEPTH cannot nest deeper, and one without a run of 19 digits
# (2**63 has 19) holds no integer beyond 64 bits.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGIT_RUN = b"0" * 19
_CONTAINERS = frozenset({dict, list})


def decode_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why it is not one.

    Refuses bytes that are not UTF-8, nesting deeper than :data:`MAX_JSON_DEPTH` and integers
    outside the signed 64-bit range, besides what is not JSON or not an object.

    :raises InvalidRequest: naming the problem (and, for an integer, where it is).
    """
    try:
        raw = _json_decoder.decode(body)
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid JSON: it holds bytes that are not UTF-8.") from None
    except RecursionError:
        raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    deep = body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    long_ints = _LONG_DIGIT_RUN in body.translate(_DIGITS_AS_ZERO)
    if deep or long_ints:
        _check_shape(raw, deep, long_ints)
    return raw


def _check_shape(raw: dict[str, Any], depth: bool, ints: bool) -> None:
    """Walk the containers of ``raw`` (without recursion) for nesting and integer bounds."""
    stack: list[tuple[Any, int, str]] = [(raw, 1, "")]
    while stack:
        value, level, path = stack.pop()
        if depth and level > MAX_JSON_DEPTH:
            raise InvalidRequest(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")
        items = value.values() if type(value) is dict else value
        kinds = set(map(type, items))
        if ints and int in kinds:
            if kinds == {int} and INT64_MIN <= min(items) and max(items) <= INT64_MAX:
                pass  # a token array, say: checked without a Python loop
            else:
                for key, item in (value.items() if type(value) is dict else enumerate(value)):
                    if type(item) is int and not INT64_MIN <= item <= INT64_MAX:
                        where = _join(path, key)
                        raise InvalidRequest(f"The integer at '{where}' does not fit in 64 bits.", param=where)
        if not _CONTAINERS.isdisjoint(kinds):
            for key, item in (value.items() if type(value) is dict else enumerate(value)):
                if type(item) in _CONTAINERS:
                    stack.append((item, level + 1, _join(path, key)))


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def decode_request(body: bytes, kind: type[Struct]) -> tuple[Any, dict[str, Any]]:
    """Validate a JSON body; return the typed view and the raw object that will be forwarded.

    :param body: the request body as received.
    :param kind: ``ChatRequest`` or ``EmbeddingsRequest``.
    :raises InvalidRequest: with ``param`` naming the offending field.
    """
    raw = decode_json(body)
    try:
        typed = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, _, where = text.partition(" - at ")
        param = where.strip("`").removeprefix("$.").removeprefix("$") or None
        if message.startswith("Object missing required field"):
            field = message.split("`")[1]
            param = f"{param}.{field}" if param else field
        raise InvalidRequest(f"Invalid request: {message}" + (f" at '{param}'" if param else ""),
                             param=param) from None
    return typed, raw


def check_chat(req: ChatRequest) -> None:
    """Rules that types alone do not express; same wording as OpenAI where it has one."""
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             param="stream_options")
    for i, msg in enumerate(req.messages):
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequest(f"messages[{i}]: a 'tool' message needs 'tool_call_id'.",
                                 param=f"messages[{i}].tool_call_id")
        if msg.role in ("user", "system", "developer") and msg.content is None:
            raise InvalidRequest(f"messages[{i}]: a '{msg.role}' message needs 'content'.",
                                 param=f"messages[{i}].content")
        if msg.role == "assistant" and msg.content is None and not msg.tool_calls:
            raise InvalidRequest(f"messages[{i}]: an 'assistant' message needs 'content' or 'tool_calls'.",
                                 param=f"messages[{i}].content")
    if req.tool_choice is not None and req.tool_choice != "none" and not req.tools:
        if req.tool_choice != "auto":
            raise InvalidRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    if req.response_format and req.response_format.type == "json_schema" and not req.response_format.json_schema:
        raise InvalidRequest("response_format of type 'json_schema' needs 'json_schema'.",
                             param="response_format.json_schema")


def check_embeddings(req: EmbeddingsRequest) -> None:
    inp = req.input
    if isinstance(inp, str):
        if not inp:
            raise InvalidRequest("'input' cannot be an empty string.", param="input")
    elif not inp:
        raise InvalidRequest("'input' cannot be an empty array.", param="input")
    elif len(inp) > 2048:
        raise InvalidRequest("'input' may hold at most 2048 items.", param="input")
    else:
        kinds = {type(item) for item in inp}
        if len(kinds) != 1:
            raise InvalidRequest("'input' must be a string, an array of strings, an array of tokens "
                                 "or an array of token arrays, not a mix.", param="input")
        if str in kinds and not all(inp):
            raise InvalidRequest("'input' cannot contain empty strings.", param="input")
        if list in kinds and not all(inp):
            raise InvalidRequest("'input' cannot contain empty token arrays.", param="input")
        if int in kinds or list in kinds:
            low, high = (min(inp), max(inp)) if int in kinds else (min(map(min, inp)), max(map(max, inp)))
            if low < 0:
                raise InvalidRequest("token ids in 'input' cannot be negative.", param="input")
            if high > MAX_COUNT:
                raise InvalidRequest(f"token ids in 'input' cannot be above {MAX_COUNT}.", param="input")


# -------------------------------------------------------------------------------------------
# Queue: what the front door hands a worker


class Target(Struct, frozen=True, array_like=True):
    """One concrete way to serve a request: a registry model on one provider."""

    model_id: str
    provider: str
    upstream_model: str


class Job(Struct, array_like=True):
    """A request on its way to a worker.

    ``attempt`` is the index in ``targets`` of the target to serve it with; ``tried`` counts the
    targets tried before (a fallback moves a job on with both advanced). ``reply_seq`` is where
    the reply's sequence numbers continue after a hand-off from another worker.
    """

    request_id: str
    kind: Literal["chat", "embeddings"]
    reply_channel: str
    user_id: str
    targets: list[Target]
    alias: str | None
    body: bytes            # the client's JSON body, forwarded with only `model` (and usage asks) changed
    stream: bool = False
    include_usage: bool = False
    enqueued_at: float = 0.0
    attempt: int = 0
    tried: int = 0
    reply_seq: int = 0
    reservations: list[Reservation] = []
    # The API the client spoke (chat, embeddings, responses, messages), recorded with the usage.
    surface: str = "chat"
    # The client's own X-Request-Id, for logs; never the job's id, which must stay unique.
    client_request_id: str | None = None
    # The front door's request span (W3C `traceparent`), parent of the workers' job spans; None
    # without tracing (one nil byte in the job).
    traceparent: str | None = None
    # How many times the front door ran the request again because its worker was lost before any
    # output; each run's replies and cancels have an id of their own (shared/queue.py `reply_id`).
    run: int = 0


# -------------------------------------------------------------------------------------------
# Replies: what a worker publishes back, batched per front-door process, each naming its request


class Reply(Struct, array_like=True):
    """One reply message of one request.

    ``seq`` counts messages per request from 0 so the front door can tell a lost message from
    a late one. ``frames`` are ready-made SSE ``data:`` payloads coalesced while a publish was
    in flight; ``kind`` says what follows them.
    """

    request_id: str
    seq: int
    # "handoff": this worker gave the request to another pool (a fallback); the next worker's
    # messages continue the sequence.
    kind: Literal["start", "data", "result", "done", "error", "handoff"]
    frames: list[bytes] = []
    body: bytes | None = None          # "result": the full JSON response
    error: WireError | None = None     # "error": what went wrong
    model_id: str | None = None        # "start": the model that is serving
    out_chars: int = 0                 # characters of output sent so far, for metering a lost worker
    # "start": the provider that is serving. A model may have routes on several providers, and a
    # fallback between them keeps the model: the front door learns the provider only from here.
    provider: str | None = None


class ReplyBatch(Struct, array_like=True):
    """One pub/sub message from a worker process to a front-door process: replies of any of the
    worker's requests on that front door, in order. Empty, it says only that the worker is alive."""

    worker_id: str
    replies: list[Reply] = []


class Cancel(Struct, array_like=True):
    request_id: str


reply_encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(Reply)
batch_decoder = msgspec.msgpack.Decoder(ReplyBatch)
job_decoder = msgspec.msgpack.Decoder(Job)
