"""The Anthropic Messages surface through the official ``anthropic`` SDK and raw HTTP.

Claude clients point at ``$REACTOR_URL/ai`` (the SDK appends ``/v1/messages``). Each answer must
parse in the SDK and its stream helpers, every stream must keep Anthropic's event order (one
``message_start``, blocks started once with indexes 0…n and never interleaved, ``message_delta``
then ``message_stop``), tools must make a full round trip on every provider, errors must come in
Anthropic's shape, and usage must be recorded as the ``messages`` surface.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import anthropic
import httpx
import pytest

from api.messages import StreamTranslator, model_candidates

from .cloud import CASES, Case
from .gateway_proc import RunningGateway
from .mocks.script import CITIES, MIDSTREAM_ERROR_AFTER, REPLY_PREFIX, TOOL_RESULT_PREFIX

IDS = [c.chat_model for c in CASES]
MODEL = "mock-local"
# A short ping interval for the gateway of the ping test, so a slow upstream shows pings quickly.
PING_S = 0.4

TOOLS = [
    {"name": "get_weather", "description": "Weather in a city",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "get_time", "description": "Local time in a city",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]
EXPECTED_RESULTS = TOOL_RESULT_PREFIX + "get_weather ok 0; get_time ok 1"


def claude(gw: RunningGateway, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gw.url}/ai", auth_token=kwargs.pop("token", None) or gw.token(),
                               max_retries=0, timeout=kwargs.pop("timeout", 20.0), **kwargs)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def check_events(events: list[dict]) -> None:
    """Anthropic's stream order, as the SDKs and Claude Code need it."""
    types = [e["type"] for e in events if e["type"] != "ping"]
    assert types[0] == "message_start" and types.count("message_start") == 1, types
    assert types[-2:] == ["message_delta", "message_stop"], types
    assert types.count("message_delta") == 1 and types.count("message_stop") == 1
    start = next(e for e in events if e["type"] == "message_start")["message"]
    assert start["content"] == [] and "output_tokens" in start["usage"] and "input_tokens" in start["usage"]
    next_index, open_index = 0, None
    for event in events:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None, "blocks never interleave"
            assert event["index"] == next_index
            if event["content_block"]["type"] == "text":
                assert event["content_block"]["text"] == ""
            open_index, next_index = next_index, next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        elif kind in ("message_delta", "message_stop"):
            assert open_index is None
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use", "refusal")
    assert isinstance(delta["usage"]["output_tokens"], int)


def sse_events(response: httpx.Response) -> list[dict]:
    """The events of a raw SSE body; each ``event:`` line must name its data's type."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert name == data["type"], (name, data)
            events.append(data)
            name = None
    return events


def sdk_events(stream) -> list[dict]:
    return [event.model_dump() for event in stream]


def received_with(mock, marker: str):
    """The mock's record of the request whose messages hold ``marker``."""
    for record in reversed(mock.received):
        if record.body and marker in json.dumps(record.body.get("messages")):
            return record
    raise AssertionError(f"the mock got no request with {marker!r}")


def usage_event(gw: RunningGateway, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in gw.usage_events():
            if event["properties"].get("request_id") == request_id:
                return event["properties"]
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {request_id}")


def _headers(gw: RunningGateway, headers: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.token()}", "anthropic-version": "2023-06-01", **headers}


def post(gw: RunningGateway, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/ai/v1/{path}", json=body, headers=_headers(gw, headers), timeout=20)


def post_stream(gw: RunningGateway, path: str, body: dict, **headers: str):
    """A context manager: the streamed response of a raw POST."""
    return httpx.stream("POST", f"{gw.url}/ai/v1/{path}", json=body, headers=_headers(gw, headers), timeout=20)


# --- text ------------------------------------------------------------------------------------------


def test_create_text(gateway, local_mock) -> None:
    marker = uuid.uuid4().hex[:8]
    message = claude(gateway).messages.create(model=MODEL, max_tokens=100, system="You are terse.",
                                              messages=_user(f"hello {marker}"))

    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == f"{REPLY_PREFIX}hello {marker}"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.model == MODEL
    reported = received_with(local_mock, marker).usage
    assert message.usage.input_tokens == reported["prompt_tokens"]
    assert message.usage.output_tokens == reported["completion_tokens"] == 5
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    assert message._request_id == message.id.removeprefix("msg_")


def test_cached_tokens_are_left_out_of_input_tokens(gateway, local_mock) -> None:
    marker = uuid.uuid4().hex[:8]
    message = claude(gateway).messages.create(model=MODEL, max_tokens=100, messages=_user(f"{marker} #cached=2"))

    reported = received_with(local_mock, marker).usage
    assert message.usage.cache_read_input_tokens == 2
    assert message.usage.input_tokens == reported["prompt_tokens"] - 2


def test_request_as_translated_for_the_upstream(gateway, local_mock) -> None:
    marker = uuid.uuid4().hex[:8]
    claude(gateway).messages.create(
        model=MODEL, max_tokens=50, metadata={"user_id": "someone"},
        # Sampling knobs left out of the SDK's 2.x signature, sent as older clients and Claude Code do.
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5},
        stop_sequences=["zzz"], system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": f"look {marker}"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                          "content": [{"type": "text", "text": "no network"}]},
                                         {"type": "text", "text": "try again"}]}],
        tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": True})

    body = received_with(local_mock, marker).body
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["stop"] == ["zzz"] and body["user"] == "someone"
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    assert "top_k" not in body and "thinking" not in body and "metadata" not in body
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": TOOLS[0]["input_schema"]}}
    system, user, assistant, tool, after = body["messages"]
    assert system == {"role": "system", "content": "One.\n\nTwo."}
    assert user["content"] == [{"type": "text", "text": f"look {marker}"},
                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    assert assistant["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no network"}
    assert after == {"role": "user", "content": "try again"}


def test_long_user_ids_are_hashed(gateway, local_mock) -> None:
    marker = uuid.uuid4().hex[:8]
    long_id = "user_" + "a" * 64 + "_account_" + str(uuid.uuid4()) + "_session_" + str(uuid.uuid4())
    claude(gateway).messages.create(model=MODEL, max_tokens=5, messages=_user(marker), metadata={"user_id": long_id})
    assert received_with(local_mock, marker).body["user"] == hashlib.sha256(long_id.encode()).hexdigest()


def test_x_api_key_header(gateway) -> None:
    client = anthropic.Anthropic(base_url=f"{gateway.url}/ai", api_key=None, auth_token=None, max_retries=0,
                                 default_headers={"X-Api-Key": gateway.token()})
    message = client.messages.create(model=MODEL, max_tokens=20, messages=_user("keyed"))
    assert message.content[0].text == f"{REPLY_PREFIX}keyed"

    response = post(gateway, "messages", {"model": MODEL, "max_tokens": 20, "messages": _user("raw")},
                    Authorization="", **{"x-api-key": gateway.token()})
    assert response.status_code == 200, response.text


def test_stream_text(gateway) -> None:
    client = claude(gateway)
    with client.messages.stream(model=MODEL, max_tokens=100, messages=_user("#chunks=6")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens > 0

    events = sdk_events(client.messages.create(model=MODEL, max_tokens=100, messages=_user("#chunks=3"), stream=True))
    check_events(events)
    assert [e["type"] for e in events if e["type"] == "content_block_start"] == ["content_block_start"]


def test_stream_raw_bytes_name_every_event(gateway) -> None:
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": _user("#chunks=2")}
    # The SDKs ask for JSON even when streaming: the body's `stream` decides.
    with post_stream(gateway, "messages", body, Accept="application/json") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"]
        events = sse_events(response)
    check_events(events)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_max_tokens_and_stop_sequences(gateway, stream: bool) -> None:
    client = claude(gateway)

    def answer(text: str, **kwargs):
        if not stream:
            return client.messages.create(model=MODEL, messages=_user(text), **kwargs)
        with client.messages.stream(model=MODEL, messages=_user(text), **kwargs) as s:
            return s.get_final_message()

    cut = answer("#chunks=10", max_tokens=3)
    assert cut.content[0].text == "tok0 tok1 tok2 " and cut.stop_reason == "max_tokens"
    stopped = answer("alpha beta gamma delta", max_tokens=100, stop_sequences=["gamma"])
    # Chat does not say that a stop sequence matched, so the turn ends as a plain end_turn.
    assert stopped.content[0].text == f"{REPLY_PREFIX}alpha beta " and stopped.stop_reason == "end_turn"


# --- tools -----------------------------------------------------------------------------------------


def _check_tool_uses(message) -> list:
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert [u.input for u in uses] == [{"city": CITIES[0]}, {"city": CITIES[1]}]
    assert len({u.id for u in uses}) == 2 and all(u.id for u in uses)
    assert message.stop_reason == "tool_use"
    return uses


def _results_turn(question: list[dict], message) -> list[dict]:
    uses = [block for block in message.content if block.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"{u.name} ok {i}"} for i, u in enumerate(uses)]
    return [*question, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {"role": "user", "content": results}]


def _round_trip(client: anthropic.Anthropic, model: str, stream: bool) -> None:
    question = _user("weather and time please #tools=2")

    def ask(messages):
        if not stream:
            return client.messages.create(model=model, max_tokens=200, tools=TOOLS, messages=messages)
        with client.messages.stream(model=model, max_tokens=200, tools=TOOLS, messages=messages) as s:
            return s.get_final_message()

    first = ask(question)
    _check_tool_uses(first)
    second = ask(_results_turn(question, first))
    assert second.content[0].text == EXPECTED_RESULTS and second.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tools_round_trip(gateway, stream: bool) -> None:
    _round_trip(claude(gateway), MODEL, stream)


def test_tool_stream_events(gateway) -> None:
    events = sdk_events(claude(gateway).messages.create(
        model=MODEL, max_tokens=200, tools=TOOLS, stream=True, tool_choice={"type": "any"},
        messages=_user("weather and time please #tools=2")))

    check_events(events)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use", "tool_use"]
    assert all(s["content_block"]["input"] == {} for s in starts)
    for start, city in zip(starts, CITIES):
        pieces = [e["delta"]["partial_json"] for e in events
                  if e["type"] == "content_block_delta" and e["index"] == start["index"]]
        assert len(pieces) > 1, "tool input streams in pieces"
        assert json.loads("".join(pieces)) == {"city": city}
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"


def test_named_tool_choice(gateway, local_mock) -> None:
    marker = uuid.uuid4().hex[:8]
    claude(gateway).messages.create(model=MODEL, max_tokens=20, tools=TOOLS, messages=_user(marker),
                                    tool_choice={"type": "tool", "name": "get_time"})
    assert received_with(local_mock, marker).body["tool_choice"] == {"type": "function",
                                                                     "function": {"name": "get_time"}}


# --- every provider --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_provider_text(cloud_gateway, case: Case) -> None:
    client = claude(cloud_gateway)
    message = client.messages.create(model=case.chat_model, max_tokens=100, system="You are terse.",
                                      messages=_user("hello there"))
    assert message.content[0].text == f"{REPLY_PREFIX}hello there" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0

    with client.messages.stream(model=case.chat_model, max_tokens=100, messages=_user("#chunks=4")) as stream:
        events = sdk_events(stream)
        final = stream.get_final_message()
    check_events(events)
    assert final.content[0].text == "tok0 tok1 tok2 tok3 " and final.usage.output_tokens == 4


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_provider_tools_round_trip(cloud_gateway, case: Case, stream: bool) -> None:
    _round_trip(claude(cloud_gateway), case.chat_model, stream)


# --- count_tokens ----------------------------------------------------------------------------------


def test_count_tokens_never_undercounts(gateway, local_mock) -> None:
    client = claude(gateway)
    marker = uuid.uuid4().hex[:8]
    request = {"model": MODEL, "system": "You are a careful assistant. " * 20, "tools": TOOLS,
               "messages": [{"role": "user", "content": f"{marker} please look at the weather in Oslo"},
                            {"role": "assistant", "content": "Sure, which day do you mean exactly?"},
                            {"role": "user", "content": "Tomorrow morning, and also the day after."}]}

    counted = client.messages.count_tokens(**request).input_tokens
    client.messages.create(max_tokens=50, **request)

    assert counted >= received_with(local_mock, marker).usage["prompt_tokens"]
    # System and tools count: dropping them lowers the count.
    bare = client.messages.count_tokens(model=MODEL, messages=request["messages"]).input_tokens
    assert bare < counted


def test_count_tokens_with_beta_query_and_headers(gateway) -> None:
    response = post(gateway, "messages/count_tokens?beta=true",
                    {"model": "claude-3-5-haiku-20241022", "messages": _user("hi")},
                    **{"anthropic-beta": "claude-code-20250219,token-counting-2024-11-01"})
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0


def test_count_tokens_unknown_model(gateway) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude(gateway).messages.count_tokens(model="no-such-model", messages=_user("hi"))


# --- models ----------------------------------------------------------------------------------------


def test_models_list_parses_in_the_anthropic_sdk(gateway) -> None:
    client = claude(gateway)
    page = client.models.list()
    models = {m.id: m for m in page.data}

    assert "mock-local" in models and "reasoning/cheapest" in models
    assert all(m.type == "model" and m.display_name for m in page.data)
    assert models["mock-local"].created_at.year >= 2024
    assert page.has_more is False and page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    assert client.models.retrieve("mock-local").id == "mock-local"
    # And an OpenAI client reads the same list.
    assert "mock-local" in {m.id for m in gateway.client().models.list().data}

    keyed = httpx.get(f"{gateway.url}/ai/v1/models", headers={"x-api-key": gateway.token()})
    assert keyed.status_code == 200


# --- model names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claude-3-5-haiku-20241022", "claude-3-5-haiku-latest", "claude-haiku-3-5"])
def test_claude_model_names_are_normalised(gateway, name: str) -> None:
    message = claude(gateway).messages.create(model=name, max_tokens=20, messages=_user("named"))
    assert message.content[0].text == f"{REPLY_PREFIX}named"
    assert message.model == name


# --- errors ----------------------------------------------------------------------------------------


def _anthropic_error(response: httpx.Response) -> dict:
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return body["error"]


def test_unknown_model_is_not_found(gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude(gateway).messages.create(model="claude-nonexistent-9", max_tokens=10, messages=_user("x"))
    assert info.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_429_is_a_rate_limit_error(gateway, stream: bool) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        claude(gateway).messages.create(model=MODEL, max_tokens=10, messages=_user("#status=429"), stream=stream)
    assert info.value.status_code == 429
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_missing_max_tokens_is_a_400_in_anthropic_shape(gateway) -> None:
    response = post(gateway, "messages", {"model": MODEL, "messages": _user("x")})
    assert response.status_code == 400
    error = _anthropic_error(response)
    assert error["type"] == "invalid_request_error" and "max_tokens" in error["message"]

    with pytest.raises(anthropic.BadRequestError):
        claude(gateway).post("/v1/messages", cast_to=object, body={"model": MODEL, "messages": _user("x")})


@pytest.mark.parametrize("body, words", [
    ({"max_tokens": 5, "messages": _user("x"), "stop_sequences": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"max_tokens": 5, "messages": _user("x"), "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "server tools"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file",
                                                                                               "file_id": "f"}}]}]},
     "image"),
])
def test_untranslatable_requests_are_400(gateway, body: dict, words: str) -> None:
    response = post(gateway, "messages", {"model": MODEL, **body})
    assert response.status_code == 400, response.text
    assert words in _anthropic_error(response)["message"]


def test_missing_credentials_is_an_authentication_error(gateway) -> None:
    response = httpx.post(f"{gateway.url}/ai/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": _user("x")})
    assert response.status_code == 401
    assert _anthropic_error(response)["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        claude(gateway, token="not-a-jwt").messages.create(model=MODEL, max_tokens=5, messages=_user("x"))


def test_no_worker_is_overloaded(gateway) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        claude(gateway).messages.create(model="unserved-model", max_tokens=5, messages=_user("x"))
    assert info.value.status_code == 503
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_error_mid_stream_is_an_error_event(gateway) -> None:
    with post_stream(gateway, "messages", {"model": MODEL, "max_tokens": 50, "stream": True,
                                           "messages": _user("#chunks=6 #midstream_error")}) as response:
        assert response.status_code == 200
        events = sse_events(response)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "error"
    assert "message_stop" not in kinds and "message_delta" not in kinds
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "".join(f"tok{i} " for i in range(MIDSTREAM_ERROR_AFTER))
    assert events[-1]["error"]["type"] and events[-1]["error"]["message"]

    with pytest.raises(anthropic.APIStatusError):
        with claude(gateway).messages.stream(model=MODEL, max_tokens=50,
                                             messages=_user("#chunks=6 #midstream_error")) as stream:
            stream.get_final_message()


# --- usage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_usage_records_the_messages_surface(gateway, stream: bool) -> None:
    client = claude(gateway, token=gateway.token("user_messages"))
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=_user("#chunks=3")) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model=MODEL, max_tokens=50, messages=_user("meter me"))

    props = usage_event(gateway, message.id.removeprefix("msg_"))
    assert props["surface"] == "messages" and props["user_id"] == "user_messages"
    assert props["model_id"] == MODEL and props["tokens_out"] == message.usage.output_tokens
    assert props["tokens_in"] == message.usage.input_tokens


# --- Claude Code -----------------------------------------------------------------------------------


def _claude_code_request() -> dict:
    tools = [{"name": f"Tool{i}", "description": f"Does thing {i}. " * 10,
              "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                               "required": ["path"], "additionalProperties": False,
                               "$schema": "http://json-schema.org/draft-07/schema#"}}
             for i in range(20)]
    return {
        "model": "claude-3-5-haiku-20241022", "max_tokens": 32000, "stream": True, "temperature": 1,
        "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                    "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "You are an interactive CLI tool that helps users. " * 40,
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Context here.</system-reminder>"},
            {"type": "text", "text": "list the files #chunks=5", "cache_control": {"type": "ephemeral"}}]}],
        "tools": tools, "metadata": {"user_id": "user_abc_account_def_session_ghi"},
        "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
    }


def test_claude_code_shaped_request_streams(gateway) -> None:
    headers = {"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                                 "fine-grained-tool-streaming-2025-05-14",
               "x-app": "cli", "User-Agent": "claude-cli/2.1.69 (external, cli)",
               "X-Claude-Code-Session-Id": str(uuid.uuid4())}
    with post_stream(gateway, "messages?beta=true", _claude_code_request(), **headers) as response:
        assert response.status_code == 200, response.read()
        events = sse_events(response)

    check_events(events)
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == \
        "tok0 tok1 tok2 tok3 tok4 "
    start = events[0]["message"]
    assert start["usage"]["input_tokens"] > 0, "an estimate until the real count arrives"
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["usage"]["output_tokens"] == 5

    client = claude(gateway)
    request = {k: v for k, v in _claude_code_request().items()
               if k not in ("stream", "thinking", "context_management", "temperature")}
    with client.beta.messages.stream(betas=["claude-code-20250219"], extra_body={"temperature": 1},
                                     **request) as stream:
        assert stream.get_final_message().content[0].text == "tok0 tok1 tok2 tok3 tok4 "


@pytest.fixture(scope="module")
def ping_gateway(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gw = RunningGateway(tmp_path_factory.mktemp("messages-ping"), redis_url, f"rtest-{uuid.uuid4().hex[:8]}:",
                        openrouter_mock.url, local_mock.url, env={"REACTOR_MESSAGES_PING_S": str(PING_S)})
    gw.start()
    yield gw
    gw.stop()


def test_ping_during_a_slow_upstream(ping_gateway) -> None:
    started = time.monotonic()
    with post_stream(ping_gateway, "messages", {"model": MODEL, "max_tokens": 50, "stream": True,
                                                "messages": _user("#chunks=2 #delay=1500")}) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert time.monotonic() - started < 15

    check_events(events)
    kinds = [e["type"] for e in events]
    # The head goes out before the first token, and pings fill the silences.
    assert kinds[0] == "message_start" and kinds[1] == "ping"
    assert kinds.count("ping") >= 4
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "tok0 tok1 "


# --- the stream translator on its own: upstream shapes the mocks do not produce ---------------------


def _chunk(**delta) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def _call(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    head = {"id": call_id, "type": "function"} if call_id else {}
    return {"index": index, **head, "function": {"arguments": arguments, **({"name": name} if name else {})}}


def _translate(chunks: list[dict], finish: str | None = "tool_calls") -> list[dict]:
    translator = StreamTranslator("msg_test", "m", 7)
    events = translator.start()
    for chunk in chunks:
        events += translator.feed(chunk)
    if finish:
        events += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events += translator.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    return events + translator.finish()


def _inputs(events: list[dict]) -> dict[str, dict]:
    out = {}
    for start in (e for e in events if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"):
        pieces = [e["delta"]["partial_json"] for e in events
                  if e["type"] == "content_block_delta" and e["index"] == start["index"]]
        out[start["content_block"]["id"]] = json.loads("".join(pieces)) if pieces else {}
    return out


def test_translator_holds_interleaved_parallel_calls() -> None:
    events = _translate([
        _chunk(content="Checking."),
        _chunk(tool_calls=[_call(0, "", "call_a", "get_weather")]),
        _chunk(tool_calls=[_call(1, '{"city":', "call_b", "get_time")]),
        _chunk(tool_calls=[_call(0, '{"city":')]),
        _chunk(tool_calls=[_call(1, '"Paris"}')]),
        _chunk(tool_calls=[_call(0, '"Oslo"}')]),
    ])

    check_events(events)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert _inputs(events) == {"call_a": {"city": "Oslo"}, "call_b": {"city": "Paris"}}
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 9, "output_tokens": 4, "cache_read_input_tokens": 0,
                              "cache_creation_input_tokens": 0}


def test_translator_edge_cases() -> None:
    # A call with no arguments, text after a call, and an upstream that says `stop` for calls.
    events = _translate([_chunk(tool_calls=[_call(0, "", "call_a", "list_files")]), _chunk(content="Done.")],
                        finish="stop")
    check_events(events)
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == ["tool_use", "text"]
    assert _inputs(events) == {"call_a": {}}
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"

    # Nothing at all, and a stream cut by the length limit.
    empty = _translate([], finish=None)
    check_events(empty)
    assert not [e for e in empty if e["type"].startswith("content_block")]
    cut = _translate([_chunk(content="tok0 ")], finish="length")
    assert next(e for e in cut if e["type"] == "message_delta")["delta"]["stop_reason"] == "max_tokens"


def test_model_candidates() -> None:
    assert model_candidates("claude-sonnet-4-5-20250929") == [
        "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "claude-4-5-sonnet"]
    assert model_candidates("claude-3-5-haiku-latest") == ["claude-3-5-haiku-latest", "claude-3-5-haiku",
                                                           "claude-haiku-3-5"]
    assert model_candidates("claude-sonnet-4.5") == ["claude-sonnet-4.5", "claude-sonnet-4-5", "claude-4-5-sonnet"]
    assert model_candidates("gpt-4o-mini") == ["gpt-4o-mini"]
