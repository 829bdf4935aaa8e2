"""Metering: every served request leaves one usage event and counts once, also when the client
hangs up mid-stream."""

from __future__ import annotations

import time

import httpx
import pytest

EVENT_KEYS = {"model_id", "user_id", "tokens_in", "tokens_out"}


def events_for(gateway, request_id: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in gateway.usage_events() if e["properties"]["request_id"] == request_id]
        if found:
            return found
        time.sleep(0.05)
    return []


def request_id_of(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")


def test_usage_event_shape_and_counters(gateway, local_mock):
    user = "user_usage_1"
    completion = gateway.client(user).chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "meter me #cached=2"}])
    [event] = events_for(gateway, request_id_of(completion.id))
    assert event["event"] == "ai.usage"
    props = event["properties"]
    assert EVENT_KEYS <= set(props)
    reported = local_mock.received[-1].usage
    assert props["model_id"] == "mock-local" and props["user_id"] == user
    assert props["tokens_in"] == reported["prompt_tokens"]
    assert props["tokens_out"] == reported["completion_tokens"]
    assert props["provider"] == "local" and props["cached_tokens"] == 2
    assert props["estimated"] is False and props["status"] == "ok"
    # mock-local costs $1/M in, $0.5/M cached in, $2/M out
    expected = ((props["tokens_in"] - 2) * 1.0 + 2 * 0.5 + props["tokens_out"] * 2.0) / 1e6
    assert props["cost_usd"] == pytest.approx(expected)
    day = time.strftime("%Y-%m-%d", time.gmtime(props["timestamp"]))
    counters = gateway.redis.hgetall(f"{gateway.prefix}usage:{day}:{user}:mock-local")
    assert int(counters[b"requests"]) == 1
    assert int(counters[b"tokens_in"]) == props["tokens_in"]
    assert int(counters[b"tokens_out"]) == props["tokens_out"]


def test_stream_usage_is_metered_without_include_usage(gateway, local_mock):
    user = "user_usage_2"
    chunks = list(gateway.client(user).chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "#chunks=5"}], stream=True))
    [event] = events_for(gateway, request_id_of(chunks[0].id))
    assert event["properties"]["tokens_out"] == 5
    assert event["properties"]["tokens_in"] == local_mock.received[-1].usage["prompt_tokens"]


def test_missing_upstream_usage_is_estimated(gateway):
    completion = gateway.client("user_usage_3").chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": "no numbers here #no_usage"}])
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    [event] = events_for(gateway, request_id_of(completion.id))
    assert event["properties"]["estimated"] is True
    assert event["properties"]["tokens_out"] == completion.usage.completion_tokens


def test_embeddings_are_metered(gateway):
    response = httpx.post(f"{gateway.base_url}/embeddings", headers={"Authorization": f"Bearer {gateway.token('u_e')}"},
                          json={"model": "mock-embed", "input": ["one two", "three"]})
    [event] = events_for(gateway, response.headers["x-request-id"])
    assert event["properties"]["model_id"] == "mock-embed"
    assert event["properties"]["tokens_in"] == response.json()["usage"]["prompt_tokens"]
    assert event["properties"]["tokens_out"] == 0


def test_client_disconnect_cancels_upstream_and_meters_once(gateway, local_mock):
    user = "user_hangup"
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", timeout=10,
                      headers={"Authorization": f"Bearer {gateway.token(user)}"},
                      json={"model": "mock-local", "stream": True,
                            "messages": [{"role": "user", "content": "#chunks=200 #delay=50"}]}) as response:
        request_id = response.headers["x-request-id"]
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    hung_up = time.monotonic()
    # The upstream sees its connection closed promptly, long before the 10 s the stream would take.
    assert local_mock.wait_for(lambda rs: any(r.body and r.disconnected and "#chunks=200" in str(r.body) for r in rs),
                               timeout=3.0)
    assert time.monotonic() - hung_up < 3.0
    received = next(r for r in reversed(local_mock.received) if "#chunks=200" in str(r.body))
    assert 2 <= received.chunks_sent < 200  # the first data line is the role chunk
    events = events_for(gateway, request_id)
    time.sleep(0.5)  # a second, duplicate record would have landed by now
    events = events_for(gateway, request_id)
    assert len(events) == 1
    props = events[0]["properties"]
    assert props["status"] == "cancelled" and props["estimated"] is True
    assert props["tokens_out"] >= 1 and props["user_id"] == user
