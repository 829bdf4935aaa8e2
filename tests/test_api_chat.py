"""The gateway end to end, driven with the official openai SDK: chat completions."""

from __future__ import annotations

import json

import httpx


def last(mock):
    assert mock.received, "the upstream saw no request"
    return mock.received[-1]


def test_non_stream_chat_through_openrouter(gateway, openrouter_mock):
    client = gateway.client("user_chat")
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}], max_tokens=64,
        extra_body={"custom_vendor_field": {"keep": True}},
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "Hello from mock: Hello there"
    assert completion.choices[0].finish_reason == "stop"
    received = last(openrouter_mock)
    assert received.body["model"] == "openai/gpt-4o-mini"
    assert received.body["max_tokens"] == 64
    assert received.body["custom_vendor_field"] == {"keep": True}  # unknown fields pass through
    assert received.headers["authorization"] == "Bearer sk-mock-upstream"
    assert completion.usage.prompt_tokens == received.usage["prompt_tokens"]
    assert completion.usage.completion_tokens == received.usage["completion_tokens"]
    # OpenRouter's extras never reach the client
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}])
    body = json.loads(raw.http_response.text)
    assert "provider" not in body and "native_finish_reason" not in body["choices"][0]
    assert "cost" not in body["usage"]
    assert raw.headers["x-request-id"] in body["id"]


def test_generic_openai_provider(gateway, local_mock):
    completion = gateway.client().chat.completions.create(
        model="mock-local", messages=[{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": [{"type": "text", "text": "parts work"}]}])
    assert completion.choices[0].message.content == "Hello from mock: parts work"
    assert completion.model == "mock-local"
    received = last(local_mock)
    assert received.body["model"] == "mock/local-model"
    assert received.headers["authorization"] == "Bearer sk-local-secret-key-0123"


def test_stream_without_usage(gateway, local_mock):
    stream = gateway.client().chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "#chunks=6"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(6))
    assert all(c.choices for c in chunks), "no usage chunk unless asked"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"mock-local"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the gateway always asks the upstream for usage, to meter it
    assert last(local_mock).body["stream_options"] == {"include_usage": True}


def test_stream_with_usage(gateway, openrouter_mock):
    stream = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#chunks=4 count"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    received = last(openrouter_mock)
    assert chunks[-1].usage.prompt_tokens == received.usage["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == 4


def test_sse_headers_and_wire_format(gateway):
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {gateway.token()}"},
                      json={"model": "mock-local", "messages": [{"role": "user", "content": "#chunks=3"}],
                            "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_tool_call_non_stream(gateway, local_mock):
    completion = gateway.client().chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "weather? #tools"}], tools=TOOLS,
        tool_choice="auto")
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert last(local_mock).body["tools"] == TOOLS


def test_tool_call_stream_reassembles(gateway):
    stream = gateway.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather? #tools"}], tools=TOOLS, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                if delta.function and delta.function.name:
                    entry["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_mock0" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}


def test_tool_round_trip_messages_are_forwarded(gateway, local_mock):
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
        {"role": "user", "content": "thanks"},
    ]
    gateway.client().chat.completions.create(model="mock-local", messages=messages, tools=TOOLS)
    assert last(local_mock).body["messages"] == messages


def test_alias_from_page_overlay(gateway, openrouter_mock):
    completion = gateway.client().chat.completions.create(
        model="reasoning/cheapest", messages=[{"role": "user", "content": "cheap please"}])
    # cheapest of gpt-4o-mini and claude-3-haiku by input+output price
    assert completion.model == "gpt-4o-mini"
    assert last(openrouter_mock).body["model"] == "openai/gpt-4o-mini"
    best = gateway.client().chat.completions.create(
        model="reasoning/best", messages=[{"role": "user", "content": "best please"}])
    assert best.model == "gpt-4"
