"""One contract, every provider: the official ``openai`` SDK against a gateway serving each provider's mock.

Every mock renders the same scripted answers (``tests/mocks/script.py``), so each test here runs
unchanged over OpenRouter, a generic OpenAI-compatible upstream, Amazon Bedrock and Azure Foundry
(both of its request styles): chat, streams with and without usage, stop sequences, the
``length`` finish, a full tool round trip with parallel calls (plain, streamed, and through the
SDK's stream helper), embeddings, each error mapping and the usage recorded for the bill.
"""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from .cloud import CASES, EXTRA_EMBED_CASES, PRICE_CACHED, PRICE_IN, PRICE_OUT, Case
from .gateway_proc import RunningGateway
from .mocks.script import CITIES, REPLY_PREFIX, TOOL_RESULT_PREFIX

IDS = [c.chat_model for c in CASES]


@pytest.fixture(scope="module")
def gw(cloud_gateway) -> RunningGateway:
    return cloud_gateway


@pytest.fixture(scope="module")
def client(gw) -> openai.OpenAI:
    return gw.client()


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]


def _user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# --- chat ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_chat(client, case: Case) -> None:
    reply = client.chat.completions.create(model=case.chat_model, messages=_user("hello there"))

    choice = reply.choices[0]
    assert choice.message.content == REPLY_PREFIX + "hello there"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.model == case.chat_model
    assert reply.object == "chat.completion"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_with_usage(client, case: Case) -> None:
    plain = client.chat.completions.create(model=case.chat_model, messages=_user("hello there"))
    chunks = list(client.chat.completions.create(model=case.chat_model, messages=_user("hello there"), stream=True,
                                                 stream_options={"include_usage": True}))

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == REPLY_PREFIX + "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {case.chat_model}
    # Exactly one usage chunk, last, with no choices; every other chunk says usage null.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 5


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stream_without_usage(client, case: Case) -> None:
    chunks = list(client.chat.completions.create(model=case.chat_model, messages=_user("#chunks=4"), stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 "
    assert all(c.choices for c in chunks), "no usage chunk when the client did not ask for one"
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stop_sequence(client, case: Case, stream: bool) -> None:
    text, finish = _answer(client, case, "alpha beta gamma delta", stream, stop=["gamma"])

    assert text == REPLY_PREFIX + "alpha beta "
    assert finish == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_tokens_finishes_with_length(client, case: Case, stream: bool) -> None:
    text, finish = _answer(client, case, "#chunks=10", stream, max_tokens=3)

    assert text == "tok0 tok1 tok2 "
    assert finish == "length"


def _answer(client, case: Case, text: str, stream: bool, **kwargs) -> tuple[str, str]:
    if not stream:
        reply = client.chat.completions.create(model=case.chat_model, messages=_user(text), **kwargs)
        return reply.choices[0].message.content or "", reply.choices[0].finish_reason
    chunks = list(client.chat.completions.create(model=case.chat_model, messages=_user(text), stream=True, **kwargs))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), finishes[0]


# --- tools -----------------------------------------------------------------------------------------


def _check_calls(calls) -> None:
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": CITIES[0]}, {"city": CITIES[1]}]
    assert all(c.type == "function" and c.id for c in calls)
    assert len({c.id for c in calls}) == 2


def _results_turn(question: list[dict], calls) -> list[dict]:
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls]}
    results = [{"role": "tool", "tool_call_id": c.id, "content": f"{c.function.name} ok {i}"}
               for i, c in enumerate(calls)]
    return [*question, assistant, *results]


EXPECTED_RESULTS = TOOL_RESULT_PREFIX + "get_weather ok 0; get_time ok 1"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tools_round_trip(client, case: Case) -> None:
    question = _user("weather and time please #tools=2")
    first = client.chat.completions.create(model=case.chat_model, messages=question, tools=TOOLS)

    assert first.choices[0].finish_reason == "tool_calls"
    _check_calls(first.choices[0].message.tool_calls)

    second = client.chat.completions.create(model=case.chat_model, tools=TOOLS,
                                            messages=_results_turn(question, first.choices[0].message.tool_calls))

    assert second.choices[0].message.content == EXPECTED_RESULTS
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tools_round_trip_streamed(client, case: Case) -> None:
    question = _user("weather and time please #tools=2")
    chunks = list(client.chat.completions.create(model=case.chat_model, messages=question, tools=TOOLS, stream=True,
                                                 tool_choice="required"))

    # Deltas as the contract says: the first per call carries index, id, type and name; the rest
    # only index and argument pieces; indexes count from 0.
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    heads = [d for d in deltas if d.id]
    assert [d.index for d in heads] == [0, 1]
    assert all(d.function.name and d.type == "function" for d in heads)
    assert all(d.function.name is None for d in deltas if not d.id)
    arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{"city": CITIES[0]}, {"city": CITIES[1]}]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]

    with client.chat.completions.stream(model=case.chat_model, messages=question, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    _check_calls(calls)

    with client.chat.completions.stream(model=case.chat_model, messages=_results_turn(question, calls),
                                        tools=TOOLS) as stream:
        answer = stream.get_final_completion()
    assert answer.choices[0].message.content == EXPECTED_RESULTS


# --- embeddings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES + EXTRA_EMBED_CASES, ids=[c.embed_model for c in CASES + EXTRA_EMBED_CASES])
def test_embeddings(client, case: Case) -> None:
    floats = client.embeddings.create(model=case.embed_model, input=["first text", "second one here"],
                                      encoding_format="float")
    default = client.embeddings.create(model=case.embed_model, input=["first text", "second one here"])

    assert [d.index for d in floats.data] == [0, 1]
    assert floats.model == case.embed_model
    for item in floats.data:
        assert math.isclose(math.sqrt(sum(v * v for v in item.embedding)), 1.0, rel_tol=1e-3)
    # The SDK asked for base64 and decoded it: the same vectors, to float32 precision.
    for a, b in zip(floats.data, default.data):
        assert len(a.embedding) == len(b.embedding)
        assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(a.embedding, b.embedding))
    assert floats.usage.prompt_tokens == 5
    assert floats.usage.total_tokens == 5


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_embeddings_base64_on_the_wire(gw, case: Case) -> None:
    response = httpx.post(f"{gw.base_url}/embeddings", headers={"Authorization": f"Bearer {gw.token()}"},
                          json={"model": case.embed_model, "input": "one two", "encoding_format": "base64",
                                "dimensions": 4}, timeout=20)

    assert response.status_code == 200, response.text
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    vector = struct.unpack("<4f", raw)
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rate_limit_is_a_429_with_retry_after(client, case: Case) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=case.chat_model, messages=_user("#status=429"))

    assert info.value.status_code == 429
    assert info.value.body["code"] == "rate_limit_exceeded"
    if case.provider != "bedrock":  # Bedrock says nothing of when to retry; the others' hint is passed on
        assert info.value.response.headers.get("retry-after")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_upstream_refusal_is_a_400(client, case: Case) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=case.chat_model, messages=_user("#status=400"))

    assert f"Upstream {case.provider}" in info.value.body["message"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_upstream_outage_is_a_5xx(client, case: Case) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=case.chat_model, messages=_user("#status=503"))

    assert info.value.status_code in (502, 503)
    assert info.value.body["type"] == "provider_error"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_error_inside_a_stream_ends_it_with_an_error_event(client, case: Case) -> None:
    received = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model=case.chat_model, messages=_user("#chunks=6 #midstream_error"),
                                                    stream=True):
            received.append(chunk)

    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices).startswith("tok0 ")


# --- metering --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_usage_recorded_with_tokens_and_cost(gw, client, case: Case) -> None:
    reply = client.chat.completions.create(model=case.chat_model, messages=_user("count me in #cached=2"))
    request_id = reply.id.removeprefix("chatcmpl-")

    event = _wait_for_usage(gw, request_id)
    props = event["properties"]
    assert props["provider"] == case.provider
    assert props["model_id"] == case.chat_model
    assert props["tokens_in"] == reply.usage.prompt_tokens
    assert props["tokens_out"] == reply.usage.completion_tokens
    assert props["cached_tokens"] == 2
    assert props["estimated"] is False
    expected = ((reply.usage.prompt_tokens - 2) * PRICE_IN + 2 * PRICE_CACHED
                + reply.usage.completion_tokens * PRICE_OUT) / 1_000_000
    assert math.isclose(props["cost_usd"], expected, rel_tol=1e-6)


def _wait_for_usage(gw: RunningGateway, request_id: str, timeout: float = 5.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in gw.usage_events():
            if event["properties"].get("request_id") == request_id:
                return event
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {request_id}")
