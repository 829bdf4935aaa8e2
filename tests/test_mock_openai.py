"""Tests of the OpenAI-compatible mock itself: raw wire format over httpx, and fidelity via the openai SDK.

The gateway's tests trust this mock to speak OpenAI's (and OpenRouter's) wire exactly and to render
the shared plan of ``tests.mocks.script`` faithfully, so both are pinned here.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.mocks.openai import DEFAULT_API_KEY, MockUpstream, Received
from tests.mocks.script import TOOL_RESULT_PREFIX, BadRequest, embedding_vector, parse_directives

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
# Reads that should never take long; a hang shows up as a timeout rather than a stuck suite.
TIMEOUT = httpx.Timeout(5.0)
SHORT_READ = httpx.Timeout(5.0, read=0.3)
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def openai_mock() -> Iterator[MockUpstream]:
    with MockUpstream() as mock:
        yield mock


@pytest.fixture(scope="module")
def openrouter_mock() -> Iterator[MockUpstream]:
    with MockUpstream(flavour="openrouter") as mock:
        yield mock


@pytest.fixture(autouse=True)
def _fresh_records(openai_mock: MockUpstream, openrouter_mock: MockUpstream) -> None:
    openai_mock.reset()
    openrouter_mock.reset()


@pytest.fixture(params=["openai", "openrouter"])
def mock(request: pytest.FixtureRequest) -> MockUpstream:
    return request.getfixturevalue(f"{request.param}_mock")


def chat(text: str | list[dict[str, Any]], model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def post(mock: MockUpstream, path: str, body: dict[str, Any], headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(mock.url + path, json=body, headers=headers, timeout=TIMEOUT)


def stream_lines(mock: MockUpstream, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    with httpx.stream(
        "POST", mock.url + "/chat/completions", json={**body, "stream": True}, headers=AUTH, timeout=TIMEOUT
    ) as response:
        return response, list(response.iter_lines())


def data_events(lines: list[str]) -> list[Any]:
    """The SSE data payloads, JSON-decoded except the literal [DONE]."""
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def contents(events: list[Any]) -> list[str]:
    return [
        e["choices"][0]["delta"]["content"]
        for e in events
        if isinstance(e, dict) and e.get("choices") and "content" in e["choices"][0]["delta"]
    ]


def sdk(mock: MockUpstream, api_key: str = DEFAULT_API_KEY) -> openai.OpenAI:
    # No retries: 429 and 5xx would otherwise be retried with Retry-After: 1 and slow the suite.
    return openai.OpenAI(base_url=mock.url, api_key=api_key, max_retries=0, timeout=5.0)


# -- lifecycle and recording ---------------------------------------------------------------------


def test_url_is_loopback_with_v1_and_port_accepts_connections(openai_mock: MockUpstream) -> None:
    assert openai_mock.url == f"http://127.0.0.1:{openai_mock.port}/v1"
    with socket.create_connection(("127.0.0.1", openai_mock.port), timeout=1):
        pass


def test_stop_frees_the_port() -> None:
    mock = MockUpstream().start()
    assert httpx.get(mock.url + "/models", headers=AUTH, timeout=TIMEOUT).status_code == 200
    mock.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(mock.url + "/models", headers=AUTH, timeout=TIMEOUT)


def test_records_requests_in_order_and_reset_clears(openai_mock: MockUpstream) -> None:
    post(openai_mock, "/chat/completions", chat("first"))
    post(openai_mock, "/embeddings", {"model": "e", "input": "second"})
    httpx.get(openai_mock.url + "/models", headers={**AUTH, "X-Trace": "t1"}, timeout=TIMEOUT)
    got = openai_mock.received
    assert [(r.method, r.path) for r in got] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
    ]
    assert got[0].body == chat("first")
    assert got[0].headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert got[2].headers["x-trace"] == "t1" and got[2].body is None
    assert all(r.completed and not r.disconnected for r in got[:2])
    openai_mock.reset()
    assert openai_mock.received == []


def test_stop_ends_hanging_requests_quietly() -> None:
    mock = MockUpstream().start()
    outcome: dict[str, Any] = {}

    def hang_non_stream() -> None:
        outcome["non_stream"] = httpx.post(mock.url + "/chat/completions", json=chat("#hang"), headers=AUTH, timeout=5)

    def hang_stream() -> None:
        _, outcome["lines"] = stream_lines(mock, chat("#hang"))

    threads = [threading.Thread(target=hang_non_stream), threading.Thread(target=hang_stream)]
    for thread in threads:
        thread.start()
    assert mock.wait_for(lambda r: len(r) == 2 and any(x.chunks_sent == 1 for x in r))
    started = time.monotonic()
    mock.stop()
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(timeout=5)
    assert outcome["non_stream"].status_code == 503
    assert "[DONE]" not in data_events(outcome["lines"])
    assert not any(r.disconnected or r.completed for r in mock.received)


def test_wait_for_is_bounded_and_tolerates_empty_list(openai_mock: MockUpstream) -> None:
    started = time.monotonic()
    assert openai_mock.wait_for(lambda r: r[-1].completed, timeout=0.2) is False
    assert 0.2 <= time.monotonic() - started < 1.0


def test_standalone_entry_point() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--port", str(port), "--flavour", "openrouter", "--api-key", "k1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mocks.openai", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 8
        while True:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/models", headers={"Authorization": "Bearer k1"}, timeout=1
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "standalone mock never came up"
                time.sleep(0.05)
        assert response.status_code == 200
        assert response.json()["data"][0]["id"] == "openai/gpt-4o-mini"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# -- routes and auth -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/v1", "/api/v1"])
def test_routes_with_and_without_prefix(openai_mock: MockUpstream, prefix: str) -> None:
    base = f"http://127.0.0.1:{openai_mock.port}{prefix}"
    assert httpx.post(base + "/chat/completions", json=chat("x"), headers=AUTH).status_code == 200
    assert httpx.post(base + "/embeddings", json={"model": "e", "input": "x"}, headers=AUTH).status_code == 200
    assert httpx.get(base + "/models", headers=AUTH).status_code == 200


def test_models_shapes(openai_mock: MockUpstream, openrouter_mock: MockUpstream) -> None:
    listing = httpx.get(openai_mock.url + "/models", headers=AUTH).json()
    assert listing["object"] == "list"
    assert {"id": "gpt-4o-mini", "object": "model", "created": 1715367049, "owned_by": "mock"} in listing["data"]
    routed = httpx.get(openrouter_mock.url + "/models", headers=AUTH).json()["data"][0]
    assert routed["id"] == "openai/gpt-4o-mini" and isinstance(routed["pricing"]["prompt"], str)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-mock-upstream"}])
def test_auth_openai_shape(openai_mock: MockUpstream, headers: dict[str, str]) -> None:
    for response in (
        post(openai_mock, "/chat/completions", chat("x"), headers=headers),
        httpx.get(openai_mock.url + "/models", headers=headers),
    ):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert error["param"] is None
    assert openai_mock.received[0].body == chat("x")


def test_auth_openrouter_shape(openrouter_mock: MockUpstream) -> None:
    response = post(openrouter_mock, "/chat/completions", chat("x"), headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401


def test_custom_api_key() -> None:
    with MockUpstream(api_key="sk-other") as mock:
        assert post(mock, "/chat/completions", chat("x")).status_code == 401
        ok = post(mock, "/chat/completions", chat("x"), headers={"Authorization": "Bearer sk-other"})
        assert ok.status_code == 200


def test_malformed_body_is_400(openai_mock: MockUpstream) -> None:
    response = httpx.post(openai_mock.url + "/chat/completions", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert post(openai_mock, "/chat/completions", {"model": "m"}).status_code == 400


# -- directives ----------------------------------------------------------------------------------


def test_parse_directives() -> None:
    found, rest = parse_directives("say  #delay=20 hi #hang #cached=3 #unknown there#tools")
    assert found == {"delay": 20, "hang": None, "cached": 3}
    assert rest == "say hi #unknown there#tools"
    with pytest.raises(BadRequest):
        parse_directives("#chunks=abc")


def test_non_stream_default_reply_and_usage(openai_mock: MockUpstream) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "  What is"}, {"type": "text", "text": "up?"}]},
        ],
    }
    response = post(openai_mock, "/chat/completions", body)
    assert response.status_code == 200
    out = response.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-mock")
    assert out["model"] == "gpt-4o-mini" and out["system_fingerprint"]
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from mock: What is up?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # prompt: 2 + 3 words, + 3 per message; completion: 6 words.
    expected = {
        "prompt_tokens": 11,
        "completion_tokens": 6,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert out["usage"] == expected
    assert openai_mock.received[-1].usage == expected


def test_stream_without_include_usage(openai_mock: MockUpstream) -> None:
    response, lines = stream_lines(openai_mock, chat("one two", model="m1"))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert contents(chunks[1:]) == ["Hello ", "from ", "mock: ", "one ", "two"]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], "chat.completion.chunk", chunks[0]["created"], "m1")
    }
    # Every event is `data: ...` followed by one blank line.
    assert lines == [x for e in lines[::2] for x in (e, "")]
    record = openai_mock.received[-1]
    assert record.stream and record.completed and record.chunks_sent == 5 and not record.disconnected


def test_stream_with_include_usage(openai_mock: MockUpstream) -> None:
    _, lines = stream_lines(openai_mock, chat("hi #chunks=3 #cached=2", stream_options={"include_usage": True}))
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    *normal, usage_chunk = events[:-1]
    assert all(c["usage"] is None for c in normal)
    assert contents(normal[1:]) == ["tok0 ", "tok1 ", "tok2 "]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 3,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert openai_mock.received[-1].usage == usage_chunk["usage"]


def test_chunks_zero(openai_mock: MockUpstream) -> None:
    _, lines = stream_lines(openai_mock, chat("#chunks=0"))
    assert contents(data_events(lines)[1:-1]) == []
    assert openai_mock.wait_for(lambda r: r[-1].completed, timeout=2)


def test_delay_stream_and_non_stream(openai_mock: MockUpstream) -> None:
    started = time.monotonic()
    post(openai_mock, "/chat/completions", chat("#delay=150"))
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    _, lines = stream_lines(openai_mock, chat("#delay=60 #chunks=3"))
    # Role chunk plus three content chunks, each preceded by the delay.
    assert time.monotonic() - started >= 0.24
    assert contents(data_events(lines)[1:-1]) == ["tok0 ", "tok1 ", "tok2 "]


def test_client_disconnect_mid_stream_is_recorded_promptly(mock: MockUpstream) -> None:
    with httpx.stream(
        "POST", mock.url + "/chat/completions", json=chat("#delay=30 #chunks=50", stream=True), headers=AUTH
    ) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
        closed_at = time.monotonic()
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=2)
    assert time.monotonic() - closed_at < 0.3
    record = mock.received[-1]
    assert not record.completed and 2 <= record.chunks_sent < 10


def test_hang_stream_then_hang_up(mock: MockUpstream) -> None:
    with httpx.Client(timeout=SHORT_READ) as client:
        body = chat("go #hang", stream=True)
        with client.stream("POST", mock.url + "/chat/completions", json=body, headers=AUTH) as response:
            got: list[str] = []
            with pytest.raises(httpx.ReadTimeout):
                for line in response.iter_lines():
                    got.append(line)
    events = data_events(got)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert contents(events[1:]) == ["Hello "]
    assert mock.wait_for(lambda r: r[-1].disconnected, timeout=2)
    record = mock.received[-1]
    assert record.chunks_sent == 1 and not record.completed
    # The usage it would have reported had it finished.
    assert record.usage is not None and record.usage["completion_tokens"] == 4


def test_hang_non_stream_then_hang_up(openai_mock: MockUpstream) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(openai_mock.url + "/chat/completions", json=chat("#hang"), headers=AUTH, timeout=SHORT_READ)
    assert openai_mock.wait_for(lambda r: r[-1].disconnected, timeout=2)
    assert not openai_mock.received[-1].completed


def test_hang_up_during_non_stream_delay(openai_mock: MockUpstream) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(openai_mock.url + "/chat/completions", json=chat("#delay=3000"), headers=AUTH, timeout=SHORT_READ)
    assert openai_mock.wait_for(lambda r: r[-1].disconnected, timeout=1)


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
        (404, "invalid_request_error", None),
        (429, "invalid_request_error", "rate_limit_exceeded"),
        (500, "server_error", None),
        (503, "server_error", None),
    ],
)
def test_status_openai(openai_mock: MockUpstream, status: int, kind: str, code: str | None) -> None:
    for stream in (False, True):
        response = post(openai_mock, "/chat/completions", chat(f"x #status={status}", stream=stream))
        assert response.status_code == status
        error = response.json()["error"]
        assert error["type"] == kind and error["code"] == code and error["param"] is None
        assert error["message"].startswith(f"mock error {status}")
        assert response.headers.get("retry-after") == ("1" if status in (429, 503) else None)
    if status == 401:
        assert "Incorrect API key provided: sk-mock-upstream" in error["message"]


@pytest.mark.parametrize("status", [400, 401, 402, 429, 502, 503])
def test_status_openrouter(openrouter_mock: MockUpstream, status: int) -> None:
    response = post(openrouter_mock, "/chat/completions", chat(f"#status={status}"))
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["message"].startswith(f"mock error {status}")
    assert error["metadata"] == {"provider_name": "MockAI", "raw": "upstream said no"}
    assert response.headers.get("retry-after") == ("1" if status in (429, 503) else None)


def test_status_out_of_range_is_400(openai_mock: MockUpstream) -> None:
    assert post(openai_mock, "/chat/completions", chat("#status=200")).status_code == 400


def test_midstream_error(mock: MockUpstream) -> None:
    _, lines = stream_lines(mock, chat("a b c d #midstream_error", stream_options={"include_usage": True}))
    events = data_events(lines)
    assert "[DONE]" not in events
    assert contents(events[1:-1]) == ["Hello ", "from "]
    last = events[-1]
    assert last["object"] == "chat.completion.chunk" and last["id"] == events[0]["id"]
    assert last["error"] == {"code": "server_error", "message": "Provider disconnected unexpectedly"}
    assert last["choices"][0]["delta"] == {"content": ""}
    assert last["choices"][0]["finish_reason"] == "error"
    assert all(e.get("usage") is None for e in events)
    record = mock.received[-1]
    assert record.chunks_sent == 2 and record.completed and not record.disconnected


def test_error_in_200(mock: MockUpstream) -> None:
    response = post(mock, "/chat/completions", chat("#error_in_200"))
    assert response.status_code == 200
    assert response.json() == {"error": {"code": 502, "message": "upstream model failed"}}


def test_no_usage(mock: MockUpstream) -> None:
    out = post(mock, "/chat/completions", chat("#no_usage")).json()
    assert "usage" not in out
    assert mock.received[-1].usage is not None and mock.received[-1].usage["completion_tokens"] == 3
    _, lines = stream_lines(mock, chat("#no_usage", stream_options={"include_usage": True}))
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and e.get("usage") is None for e in events[:-1])
    assert mock.received[-1].usage["total_tokens"] == 4 + 3


TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


def test_tools_stream(mock: MockUpstream) -> None:
    _, lines = stream_lines(mock, chat("weather? #tools", tools=TOOLS, stream_options={"include_usage": True}))
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[1:-1] if e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "call_mock0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = calls[1:]
    assert len(fragments) >= 3
    assert all(set(f) == {"index", "function"} and f["index"] == 0 for f in fragments)
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {"city": "Oslo"}
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-2]["usage"]["completion_tokens"] == 7


def test_tools_non_stream(openai_mock: MockUpstream) -> None:
    out = post(openai_mock, "/chat/completions", chat("#tools", tools=TOOLS[1:])).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_mock0", "type": "function", "function": {"name": "other", "arguments": '{"city": "Oslo"}'}}
    ]
    assert out["usage"]["completion_tokens"] == 7


def test_tools_without_tools_is_400(openai_mock: MockUpstream) -> None:
    assert post(openai_mock, "/chat/completions", chat("#tools")).status_code == 400


def test_echo_body(openai_mock: MockUpstream) -> None:
    body = chat("#echo_body", temperature=0.2, user="u1")
    out = post(openai_mock, "/chat/completions", body).json()
    assert json.loads(out["choices"][0]["message"]["content"]) == body


def test_directives_only_from_last_user_message(openai_mock: MockUpstream) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "#status=500"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "again #chunks=2"}, {"type": "image_url"}]},
            {"role": "assistant", "content": "#status=500"},
        ],
    }
    out = post(openai_mock, "/chat/completions", body).json()
    assert out["choices"][0]["message"]["content"] == "tok0 tok1 "
    assert out["usage"]["prompt_tokens"] == 1 + 1 + 2 + 1 + 3 * 4


def finish_reasons(events: list[Any]) -> list[str]:
    return [e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
            and e["choices"][0]["finish_reason"]]


@pytest.mark.parametrize("stop", ["STOP", ["zz", "d", "STOP"]])
def test_stop_sequence_cuts_the_text(mock: MockUpstream, stop: str | list[str]) -> None:
    # The earliest match wins, wherever it is in the list.
    out = post(mock, "/chat/completions", chat("a b STOP c d", stop=stop)).json()
    assert out["choices"][0]["message"]["content"] == "Hello from mock: a b "
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 5
    _, lines = stream_lines(mock, chat("a b STOP c d", stop=stop))
    events = data_events(lines)
    assert "".join(contents(events)) == "Hello from mock: a b "
    assert finish_reasons(events) == ["stop"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_to_exactly_n_deltas_and_finishes_length(mock: MockUpstream, field: str) -> None:
    _, lines = stream_lines(mock, chat("#chunks=10", stream_options={"include_usage": True}, **{field: 3}))
    events = data_events(lines)
    assert contents(events[1:]) == ["tok0 ", "tok1 ", "tok2 "]
    assert finish_reasons(events) == ["length"]
    assert events[-2]["usage"]["completion_tokens"] == 3
    assert mock.received[-1].chunks_sent == 3
    out = post(mock, "/chat/completions", chat("#chunks=10", **{field: 3})).json()
    assert out["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert out["choices"][0]["finish_reason"] == "length"


def test_max_tokens_above_the_answer_changes_nothing(openai_mock: MockUpstream) -> None:
    out = post(openai_mock, "/chat/completions", chat("#chunks=3", max_tokens=3)).json()
    assert out["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("bad", [0, -1, "many", True])
def test_bad_max_tokens_is_400(openai_mock: MockUpstream, bad: Any) -> None:
    assert post(openai_mock, "/chat/completions", chat("x", max_tokens=bad)).status_code == 400


def test_parallel_tools_non_stream(mock: MockUpstream) -> None:
    out = post(mock, "/chat/completions", chat("#tools=2", tools=TOOLS)).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_mock0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_mock1", "type": "function", "function": {"name": "other", "arguments": '{"city": "Paris"}'}},
    ]
    assert out["usage"]["completion_tokens"] == 14


def test_parallel_tools_stream(mock: MockUpstream) -> None:
    _, lines = stream_lines(mock, chat("#tools=3", tools=TOOLS, stream_options={"include_usage": True}))
    events = data_events(lines)
    calls = [c for e in events[1:-1] if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls", [])]
    heads = [c for c in calls if "id" in c]
    assert heads == [
        {"index": i, "id": f"call_mock{i}", "type": "function", "function": {"name": name, "arguments": ""}}
        for i, name in enumerate(["get_weather", "other", "get_weather"])
    ]
    fragments = [c for c in calls if "id" not in c]
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments)
    # Each call is opened, then streamed in full, before the next one starts.
    assert [c["index"] for c in calls] == sorted(c["index"] for c in calls)
    assembled = {
        i: json.loads("".join(f["function"]["arguments"] for f in fragments if f["index"] == i)) for i in range(3)
    }
    assert assembled == {0: {"city": "Oslo"}, 1: {"city": "Paris"}, 2: {"city": "Lima"}}
    assert finish_reasons(events) == ["tool_calls"]
    assert events[-2]["usage"]["completion_tokens"] == 21
    assert mock.received[-1].chunks_sent == len(calls)


def test_tool_results_are_answered(mock: MockUpstream) -> None:
    messages = [
        {"role": "user", "content": "weather? #tools=2"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_mock0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            {"id": "call_mock1", "type": "function", "function": {"name": "other", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_mock0", "content": '{"temp_c": 4}'},
        {"role": "tool", "tool_call_id": "call_mock1", "content": [{"type": "text", "text": "sunny"}]},
    ]
    body = {"model": "m", "messages": messages, "tools": TOOLS}
    out = post(mock, "/chat/completions", body).json()
    assert out["choices"][0]["message"] == {
        "role": "assistant", "content": TOOL_RESULT_PREFIX + '{"temp_c": 4}; sunny', "refusal": None
    }
    assert out["choices"][0]["finish_reason"] == "stop"
    _, lines = stream_lines(mock, body)
    events = data_events(lines)
    assert "".join(contents(events)) == 'Tool results: {"temp_c": 4}; sunny'
    assert finish_reasons(events) == ["stop"]
    # Once the user speaks again, the directives count again.
    again = post(mock, "/chat/completions", {**body, "messages": [*messages, {"role": "user", "content": "#chunks=1"}]})
    assert again.json()["choices"][0]["message"]["content"] == "tok0 "


# -- OpenRouter specifics ------------------------------------------------------------------------


def test_openrouter_stream_extras(openrouter_mock: MockUpstream) -> None:
    response, lines = stream_lines(openrouter_mock, chat("x y", model="openai/gpt-4o"))
    assert lines[0] == ": OPENROUTER PROCESSING"
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert sum(line.startswith(":") for line in lines[first_data:]) >= 1
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["id"].startswith("gen-") and response.headers["x-generation-id"] == chunks[0]["id"]
    assert all(c["provider"] == "MockAI" and c["model"] == "openai/gpt-4o" for c in chunks)
    assert all(c["choices"][0]["native_finish_reason"] == c["choices"][0]["finish_reason"] for c in chunks[:-1])
    # No include_usage asked for, yet OpenRouter sends the usage chunk anyway, with a cost.
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 5 + 5 and usage["usage"]["cost"] > 0


def test_openrouter_non_stream_extras(openrouter_mock: MockUpstream) -> None:
    out = post(openrouter_mock, "/chat/completions", chat("x")).json()
    assert out["id"].startswith("gen-") and out["provider"] == "MockAI"
    assert out["choices"][0]["native_finish_reason"] == "stop"
    assert out["usage"]["cost"] == pytest.approx(out["usage"]["total_tokens"] * 1e-6)


# -- embeddings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "inputs", "tokens"),
    [
        ("hello big world", ["hello big world"], 3),
        (["a b", "c"], ["a b", "c"], 3),
        ([1, 2, 3], [[1, 2, 3]], 3),
        ([[1, 2], [3]], [[1, 2], [3]], 3),
    ],
)
def test_embeddings_float(mock: MockUpstream, given: Any, inputs: list[Any], tokens: int) -> None:
    out = post(mock, "/embeddings", {"model": "text-embedding-3-small", "input": given}).json()
    assert out["object"] == "list" and out["model"] == "text-embedding-3-small"
    assert [d["index"] for d in out["data"]] == list(range(len(inputs)))
    for item, datum in zip(inputs, out["data"], strict=True):
        assert datum["object"] == "embedding"
        assert len(datum["embedding"]) == 8
        assert math.isclose(math.sqrt(sum(v * v for v in datum["embedding"])), 1.0, rel_tol=1e-9)
        assert datum["embedding"] == embedding_vector(item, 8)
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] == tokens
    assert mock.received[-1].usage == out["usage"]


def test_embeddings_differ_per_input_and_repeat(openai_mock: MockUpstream) -> None:
    first = post(openai_mock, "/embeddings", {"model": "e", "input": ["a", "b", "a"]}).json()["data"]
    assert first[0]["embedding"] == first[2]["embedding"] != first[1]["embedding"]


def test_embeddings_base64_and_dimensions(openai_mock: MockUpstream) -> None:
    out = post(openai_mock, "/embeddings", {"model": "e", "input": "hi", "dimensions": 5, "encoding_format": "base64"})
    encoded = out.json()["data"][0]["embedding"]
    decoded = struct.unpack("<5f", base64.b64decode(encoded))
    assert decoded == pytest.approx(embedding_vector("hi", 5), abs=1e-6)


@pytest.mark.parametrize("bad", [{"input": []}, {"input": [1, "a"]}, {"input": "x", "dimensions": 0}, {"input": 3}])
def test_embeddings_bad_input(openai_mock: MockUpstream, bad: dict[str, Any]) -> None:
    assert post(openai_mock, "/embeddings", {"model": "e", **bad}).status_code == 400


def test_embeddings_status_directive(openrouter_mock: MockUpstream) -> None:
    response = post(openrouter_mock, "/embeddings", {"model": "e", "input": "x #status=429"})
    assert response.status_code == 429 and response.json()["error"]["code"] == 429


# -- the official SDK against the mock -----------------------------------------------------------


def test_sdk_non_stream(mock: MockUpstream) -> None:
    completion = sdk(mock).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "Hello from mock: ping"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 4 + 4
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_sdk_stream_with_usage(mock: MockUpstream) -> None:
    stream = sdk(mock).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b #cached=1"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from mock: a b"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1
    assert all(c.usage is None for c in chunks[:-1])
    assert mock.wait_for(lambda r: r[-1].completed, timeout=2)  # the mock notes it after the last write


def test_sdk_tool_stream_reassembled(mock: MockUpstream) -> None:
    stream = sdk(mock).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#tools"}], tools=TOOLS, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                slot["name"] += (call.function.name or "") if call.function else ""
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
    assert finish == "tool_calls"
    assert calls == {0: {"id": "call_mock0", "name": "get_weather", "arguments": '{"city": "Oslo"}'}}


STRICT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    for name in ("get_weather", "get_time")
]


def test_sdk_stream_helper_assembles_parallel_tool_calls(mock: MockUpstream) -> None:
    done: list[tuple[int, str, Any]] = []
    with sdk(mock).chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#tools=2"}], tools=STRICT_TOOLS
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.index, event.name, event.parsed_arguments))
        final = stream.get_final_completion()
    assert done == [(0, "get_weather", {"city": "Oslo"}), (1, "get_time", {"city": "Paris"})]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_mock0", "get_weather", '{"city": "Oslo"}'),
        ("call_mock1", "get_time", '{"city": "Paris"}'),
    ]
    assert [c.function.parsed_arguments for c in calls] == [{"city": "Oslo"}, {"city": "Paris"}]


def test_sdk_stream_helper_text_with_limit(mock: MockUpstream) -> None:
    with sdk(mock).chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#chunks=5"}], max_completion_tokens=2
    ) as stream:
        # The role chunk carries content "" (as OpenAI's does), which the helper reports as a delta too.
        deltas = [event.delta for event in stream if event.type == "content.delta" and event.delta]
        # The helper refuses to hand over a cut answer as final, but it has assembled it.
        with pytest.raises(openai.LengthFinishReasonError) as caught:
            stream.get_final_completion()
    assert deltas == ["tok0 ", "tok1 "]
    choice = caught.value.completion.choices[0]
    assert choice.message.content == "tok0 tok1 " and choice.finish_reason == "length"


def test_sdk_embeddings_float_and_default_base64(openai_mock: MockUpstream) -> None:
    client = sdk(openai_mock)
    floats = client.embeddings.create(model="e", input=["x y"], encoding_format="float")
    assert floats.data[0].embedding == embedding_vector("x y", 8)
    default = client.embeddings.create(model="e", input=["x y"], dimensions=4)
    # The SDK asks for base64 when the caller does not choose, then decodes it itself.
    assert openai_mock.received[-1].body["encoding_format"] == "base64"
    assert default.data[0].embedding == pytest.approx(embedding_vector("x y", 4), abs=1e-6)
    assert default.usage.prompt_tokens == 2


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_sdk_error_classes(openai_mock: MockUpstream, status: int, exception: type[openai.APIStatusError]) -> None:
    with pytest.raises(exception) as caught:
        sdk(openai_mock).chat.completions.create(model="m", messages=[{"role": "user", "content": f"#status={status}"}])
    assert caught.value.status_code == status
    assert f"mock error {status}" in caught.value.message


def test_sdk_bad_key(openai_mock: MockUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(openai_mock, api_key="sk-bad").models.list()
    assert [m.id for m in sdk(openai_mock).models.list()][0] == "gpt-4o-mini"


def test_sdk_midstream_error_raises(mock: MockUpstream) -> None:
    stream = sdk(mock).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "#midstream_error"}], stream=True
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="Provider disconnected unexpectedly"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Hello from "


def test_sdk_openrouter_402(openrouter_mock: MockUpstream) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(openrouter_mock).chat.completions.create(model="m", messages=[{"role": "user", "content": "#status=402"}])
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == 402


def test_received_is_a_struct() -> None:
    record = Received(method="GET", path="/", headers={}, body=None)
    assert (record.stream, record.chunks_sent, record.completed, record.disconnected, record.usage) == (
        False,
        0,
        False,
        False,
        None,
    )
