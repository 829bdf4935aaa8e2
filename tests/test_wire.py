import json
from typing import Any

import msgspec
import pytest

from shared.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoWorker,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
    WireError,
    redact,
)
from shared.wire import (
    ChatRequest,
    EmbeddingsRequest,
    ImagePart,
    Reply,
    StreamOptions,
    TextPart,
    ToolChoiceFunction,
    check_chat,
    check_embeddings,
    decode_request,
    reply_decoder,
    reply_encoder,
)

USER = {"role": "user", "content": "Hello"}


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [USER], **fields}).encode()


def chat(**fields: Any) -> ChatRequest:
    typed, _ = decode_request(body(**fields), ChatRequest)
    return typed


def invalid(data: bytes, kind: type = ChatRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_request(data, kind)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def chat_rule(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_chat(chat(**fields))
    return info.value


# --- decode_request: what it accepts --------------------------------------------------------------


def test_plain_chat_request() -> None:
    typed, raw = decode_request(body(), ChatRequest)

    assert typed.model == "gpt-4o-mini"
    assert len(typed.messages) == 1
    assert (typed.messages[0].role, typed.messages[0].content) == ("user", "Hello")
    assert typed.stream is None and typed.tools is None
    assert raw == {"model": "gpt-4o-mini", "messages": [USER]}
    check_chat(typed)


def test_content_parts() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f-1"}},
    ]
    typed = chat(messages=[{"role": "user", "content": content},
                           {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}])

    parts = typed.messages[0].content
    assert isinstance(parts, list) and len(parts) == 4
    assert parts[0] == TextPart("What is this?")
    assert isinstance(parts[1], ImagePart)
    assert (parts[1].image_url.url, parts[1].image_url.detail) == ("https://x.example/a.png", "low")
    assert parts[2].input_audio.format == "wav"
    assert parts[3].file == {"file_id": "f-1"}
    assert typed.messages[1].content[0].refusal == "no"
    check_chat(typed)


def test_every_role() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": "d"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "function", "name": "f", "content": "42"},
    ]
    typed = chat(messages=messages)

    assert [m.role for m in typed.messages] == ["system", "developer", "user", "assistant", "tool", "function"]
    assert typed.messages[3].tool_calls[0].function.name == "f"
    assert typed.messages[4].tool_call_id == "call_1"
    check_chat(typed)


TOOL = {"type": "function", "function": {"name": "get_weather-v2", "description": "d",
                                          "parameters": {"type": "object", "properties": {}}, "strict": True}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", "none"),
        ("auto", "auto"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "get_weather-v2"}}, "named"),
    ],
)
def test_tools_and_tool_choice(choice: Any, expected: Any) -> None:
    typed = chat(tools=[TOOL], tool_choice=choice, parallel_tool_calls=False)

    assert typed.tools[0].function.name == "get_weather-v2"
    assert typed.tools[0].function.parameters == {"type": "object", "properties": {}}
    assert typed.parallel_tool_calls is False
    if expected == "named":
        assert isinstance(typed.tool_choice, ToolChoiceFunction)
        assert typed.tool_choice.function.name == "get_weather-v2"
    else:
        assert typed.tool_choice == expected
    check_chat(typed)


@pytest.mark.parametrize(("stop", "expected"), [("END", "END"), (["a", "b"], ["a", "b"]), ([], [])])
def test_stop_forms(stop: Any, expected: Any) -> None:
    assert chat(stop=stop).stop == expected


def test_sampling_bounds_are_inclusive() -> None:
    typed = chat(temperature=2, top_p=0, n=128, max_tokens=1, presence_penalty=-2, frequency_penalty=2,
                 top_logprobs=20)

    assert (typed.temperature, typed.top_p, typed.n, typed.max_tokens) == (2.0, 0.0, 128, 1)
    assert (typed.presence_penalty, typed.frequency_penalty, typed.top_logprobs) == (-2.0, 2.0, 20)


def test_unknown_fields_are_kept_in_the_raw_body() -> None:
    extra = {"logit_bias": {"50256": -100}, "metadata": {"team": "ml"}, "reasoning_effort": "low",
             "provider": {"order": ["x"]}}
    typed, raw = decode_request(body(**extra), ChatRequest)

    assert not hasattr(typed, "logit_bias")
    assert raw == {"model": "gpt-4o-mini", "messages": [USER], **extra}


def test_stream_with_options() -> None:
    typed = chat(stream=True, stream_options={"include_usage": True})

    assert typed.stream is True
    assert typed.stream_options == StreamOptions(include_usage=True)
    check_chat(typed)


# --- decode_request: what it rejects, and where ---------------------------------------------------


def test_invalid_json() -> None:
    error = invalid(b'{"model": ')

    assert error.param is None
    assert error.message.startswith("The request body is not valid JSON")


@pytest.mark.parametrize("data", [b"[]", b'"hi"', b"3", b"null"])
def test_non_object_body(data: bytes) -> None:
    error = invalid(data)

    assert error.param is None
    assert error.message == "The request body must be a JSON object."


@pytest.mark.parametrize(
    ("data", "param", "words"),
    [
        ({"messages": [USER]}, "model", "missing required field `model`"),
        ({"model": "m"}, "messages", "missing required field `messages`"),
        ({"model": "", "messages": [USER]}, "model", "length >= 1"),
        ({"model": 5, "messages": [USER]}, "model", "Expected `str`, got `int`"),
        ({"model": "m", "messages": []}, "messages", "length >= 1"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'robot'"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", "missing required field `role`"),
        ({"model": "m", "messages": [USER, {"role": "user", "content": [{"type": "video", "video": "v"}]}]},
         "messages[1].content[0].type", "'video'"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]},
         "messages[0].content[0].image_url.url", "length >= 1"),
    ],
)
def test_structural_errors_name_the_field(data: dict[str, Any], param: str, words: str) -> None:
    error = invalid(json.dumps(data).encode())

    assert error.param == param
    assert words in error.message
    assert error.message.endswith(f" at '{param}'")


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"temperature": 3}, "temperature", "<= 2.0"),
        ({"temperature": -0.1}, "temperature", ">= 0.0"),
        ({"top_p": 2}, "top_p", "<= 1.0"),
        ({"n": 0}, "n", ">= 1"),
        ({"n": 129}, "n", "<= 128"),
        ({"max_tokens": 0}, "max_tokens", ">= 1"),
        ({"max_completion_tokens": -1}, "max_completion_tokens", ">= 1"),
        ({"presence_penalty": 2.5}, "presence_penalty", "<= 2.0"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "length <= 4"),
        ({"stream": "yes"}, "stream", "got `str`"),
        ({"tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function", "missing required field `function`"),
        ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name", "regex"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name", "length <= 64"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type", "'retrieval'"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'xml'"),
    ],
)
def test_value_errors_name_the_field(fields: dict[str, Any], param: str, words: str) -> None:
    error = invalid(body(**fields))

    assert error.param == param
    assert words in error.message


# --- check_chat -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_need_stream(stream: bool | None) -> None:
    fields: dict[str, Any] = {"stream_options": {"include_usage": True}}
    if stream is not None:
        fields["stream"] = stream

    error = chat_rule(**fields)

    assert error.param == "stream_options"
    assert "only allowed when 'stream' is enabled" in error.message


def test_tool_message_needs_tool_call_id() -> None:
    error = chat_rule(messages=[USER, {"role": "tool", "content": "42"}])

    assert error.param == "messages[1].tool_call_id"


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_message_needs_content(role: str) -> None:
    error = chat_rule(messages=[USER, {"role": role, "content": None}])

    assert error.param == "messages[1].content"
    assert f"a '{role}' message needs 'content'" in error.message


def test_assistant_needs_content_or_tool_calls() -> None:
    error = chat_rule(messages=[USER, {"role": "assistant"}, USER])

    assert error.param == "messages[1].content"
    check_chat(chat(messages=[USER, {"role": "assistant", "content": ""}, USER]))


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_forcing_a_tool_needs_tools(choice: Any) -> None:
    assert chat_rule(tool_choice=choice).param == "tool_choice"


@pytest.mark.parametrize("choice", ["none", "auto"])
def test_permissive_tool_choice_without_tools(choice: str) -> None:
    check_chat(chat(tool_choice=choice))


def test_json_schema_format_needs_a_schema() -> None:
    assert chat_rule(response_format={"type": "json_schema"}).param == "response_format.json_schema"
    check_chat(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}))
    check_chat(chat(response_format={"type": "json_object"}))


# --- embeddings -----------------------------------------------------------------------------------


def embeddings(inp: Any, **fields: Any) -> EmbeddingsRequest:
    typed, _ = decode_request(json.dumps({"model": "text-embedding-3-small", "input": inp, **fields}).encode(),
                              EmbeddingsRequest)
    return typed


@pytest.mark.parametrize("inp", ["hello", ["a", "b"], [1, 2, 0], [[1, 2], [3]], ["x"] * 2048])
def test_embeddings_inputs_accepted(inp: Any) -> None:
    typed = embeddings(inp, encoding_format="base64", dimensions=256)

    check_embeddings(typed)
    assert typed.input == inp
    assert (typed.encoding_format, typed.dimensions) == ("base64", 256)


@pytest.mark.parametrize(
    ("inp", "words"),
    [
        ("", "empty string"),
        ([], "empty array"),
        (["a", 1], "not a mix"),
        ([[1], 2], "not a mix"),
        (["a", ""], "empty strings"),
        ([[1], []], "empty token arrays"),
        ([5, -1], "negative"),
        (["x"] * 2049, "at most 2048"),
        ([1] * 2049, "at most 2048"),
    ],
)
def test_embeddings_inputs_rejected(inp: Any, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as info:
        check_embeddings(embeddings(inp))
    assert info.value.param == "input"


@pytest.mark.parametrize(
    ("inp", "param"),
    [([True], "input[0]"), ([1.5], "input[0]"), ([[1], [2, "x"]], "input[1][1]"), ({"a": 1}, "input")],
)
def test_embeddings_input_types_rejected_at_decode(inp: Any, param: str) -> None:
    error = invalid(json.dumps({"model": "e", "input": inp}).encode(), EmbeddingsRequest)

    assert error.param == param


def test_embeddings_missing_input() -> None:
    assert invalid(b'{"model": "e"}', EmbeddingsRequest).param == "input"


def test_negative_token_in_a_token_array_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="negative") as info:
        check_embeddings(embeddings([[1, 2], [3, -4]]))
    assert info.value.param == "input"


# --- replies on the wire --------------------------------------------------------------------------


def test_reply_round_trips_through_msgpack() -> None:
    reply = Reply("req-1", 3, "data", frames=[b'{"a":1}', b"[DONE]"])

    assert reply_decoder.decode(reply_encoder.encode(reply)) == reply


# --- shared/errors.py: redact ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Incorrect API key provided: sk-proj-abcDEF123_xyz.", "Incorrect API key provided: [redacted]."),
        ("key sk-or-v1-0123456789abcdef was revoked", "key [redacted] was revoked"),
        ("Authorization: Bearer abcdefgh12345678 rejected", "Authorization: [redacted] rejected"),
        ("got Bearer   tok.en-1234_5678", "got [redacted]"),
        ("aws AKIAABCDEFGHIJKLMNOP denied", "aws [redacted] denied"),
        ("jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln here", "jwt [redacted] here"),
        ("no secrets here: sk- and Bearer x", "no secrets here: sk- and Bearer x"),
    ],
)
def test_redact_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_lowercase_bearer() -> None:
    assert redact("authorization: bearer abcdefgh12345678") == "authorization: [redacted]"


def test_redact_exact_secrets() -> None:
    secret = "local.secret+with/odd=chars"

    assert redact(f"upstream said {secret} twice: {secret}", (secret,)) == (
        "upstream said [redacted] twice: [redacted]"
    )
    # Too short to mask safely, and empty: left alone rather than shredding the text.
    assert redact("abc abc", ("abc", "")) == "abc abc"
    assert redact("plain text", ("x" * 10,)) == "plain text"


# --- shared/errors.py: WireError ------------------------------------------------------------------


def through_the_wire(exc: GatewayError) -> GatewayError:
    wire = WireError.of(exc)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(wire), type=WireError)
    assert decoded == wire
    return decoded.to_exception()


@pytest.mark.parametrize(
    "cls",
    [InvalidRequest, PayloadTooLarge, Unauthorized, ModelNotFound, NotFound, QuotaExceeded, ProviderError,
     UpstreamTimeout, NoWorker, Unavailable, InternalError],
)
def test_wire_error_round_trips_each_class(cls: type[GatewayError]) -> None:
    back = through_the_wire(cls("went wrong", param="model"))

    assert type(back) is cls
    assert (back.message, back.status, back.type, back.code, back.param) == (
        "went wrong", cls.status, cls.type, cls.code, "model"
    )
    assert back.headers == {}


def test_wire_error_keeps_overrides_and_retry_after() -> None:
    exc = ProviderError("upstream rate limited", code="rate_limited", status=429, headers={"Retry-After": "7"})

    back = through_the_wire(exc)

    assert type(back) is ProviderError
    assert (back.status, back.code, back.type) == (429, "rate_limited", "provider_error")
    assert back.headers == {"Retry-After": "7"}
    assert back.to_json() == exc.to_json()
    assert json.loads(back.to_json()) == {
        "error": {"message": "upstream rate limited", "type": "provider_error", "param": None, "code": "rate_limited"}
    }


def test_unknown_wire_kind_becomes_internal_error() -> None:
    back = WireError("SomethingNew", "odd", 418, "teapot").to_exception()

    assert type(back) is InternalError
    assert (back.message, back.status, back.code) == ("odd", 418, "teapot")


def test_wire_error_round_trips_method_not_allowed() -> None:
    back = through_the_wire(MethodNotAllowed("no"))

    assert type(back) is MethodNotAllowed
    assert back.type == "invalid_request_error"
