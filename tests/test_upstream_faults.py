"""Broken upstreams and clients that leave, against a running gateway.

Each case drives the real front door and worker (``RunningGateway``) with the official ``openai``
SDK against the OpenAI-compatible mock, broken by ``#fault=NAME`` (``tests/mocks/openai.py``), and
checks three things: what the client sees (status and code, or the final error event of a
stream), that it ends within the configured timeouts, and what usage is recorded.
"""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from .gateway_proc import RunningGateway

# Short, so a hang is found quickly; the gateway's read watchdog looks every READ_TIMEOUT/4 s.
READ_TIMEOUT = 1.0
# What a bounded failure may take beyond its timeout: the worker's report, the hop through Redis.
SLACK = 3.0
# A case that fails at once (no timeout involved) still ends within this.
PROMPT_FAILURE = 5.0
CLIENT_TIMEOUT = 15.0
USAGE_WAIT = 5.0
# How long a second, duplicate usage record would take to show up.
DUPLICATE_WAIT = 0.5


@pytest.fixture(scope="module")
def gw(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gateway = RunningGateway(tmp_path_factory.mktemp("faults"), redis_url, f"rfault-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url, "sse_keepalive = 30",
                             worker_providers=("local",))
    config = gateway.config.read_text()
    assert "read_timeout = 4\n" in config
    gateway.config.write_text(config.replace("read_timeout = 4\n", f"read_timeout = {READ_TIMEOUT}\n"))
    gateway.start()
    yield gateway
    gateway.stop()


def usage_of(gw: RunningGateway, request_id: str, *, expect: bool = True) -> list[dict]:
    """The usage events of ``request_id``: waited for when one is expected, then a moment more so a
    duplicate would show."""
    deadline = time.monotonic() + (USAGE_WAIT if expect else DUPLICATE_WAIT)
    while time.monotonic() < deadline:
        if expect and any(e["properties"]["request_id"] == request_id for e in gw.usage_events()):
            break
        time.sleep(0.05)
    time.sleep(DUPLICATE_WAIT)
    return [e["properties"] for e in gw.usage_events() if e["properties"]["request_id"] == request_id]


def prompt(directives: str) -> tuple[str, str]:
    """A prompt with a marker of its own (to find its record in the mock) and the directives."""
    marker = f"case-{uuid.uuid4().hex[:10]}"
    return marker, f"{marker} {directives}"


def record_of(mock, marker: str):
    assert mock.wait_for(lambda rs: any(marker in str(r.body) for r in rs), timeout=5)
    return next(r for r in reversed(mock.received) if marker in str(r.body))


def create(gw: RunningGateway, text: str, stream: bool):
    return gw.client("user_faults", timeout=CLIENT_TIMEOUT).chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": text}], stream=stream)


def fails_before_the_answer(gw: RunningGateway, text: str, stream: bool) -> tuple[openai.APIStatusError, float]:
    """The HTTP error the SDK raises (for a stream: before its first token), and how long it took."""
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        result = create(gw, text, stream)
        if stream:
            list(result)
    return info.value, time.monotonic() - started


def fails_mid_stream(gw: RunningGateway, text: str) -> tuple[openai.APIError, list, float]:
    """The final error event of a stream (the SDK raises ``APIError`` on it), the chunks before it,
    and how long it took."""
    started = time.monotonic()
    chunks = []
    with pytest.raises(openai.APIError) as info:
        for chunk in create(gw, text, True):
            chunks.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError), "the stream should have started"
    return info.value, chunks, time.monotonic() - started


def content_of(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- before the first byte ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_no_response_head_is_a_504_within_the_read_timeout(gw, local_mock, stream: bool) -> None:
    marker, text = prompt("#fault=hang_head")
    error, took = fails_before_the_answer(gw, text, stream)
    assert (error.status_code, error.code) == (504, "upstream_timeout")
    assert took < READ_TIMEOUT + SLACK
    # The worker hung up on the upstream, and nothing the upstream never answered is metered.
    assert local_mock.wait_for(lambda rs: any(r.disconnected and marker in str(r.body) for r in rs), timeout=3)
    assert usage_of(gw, error.response.headers["x-request-id"], expect=False) == []


# -- mid-stream --------------------------------------------------------------------------------


def test_a_stream_that_stalls_ends_with_an_error_event_within_the_read_timeout(gw, local_mock) -> None:
    marker, text = prompt("#hang")  # one token, then silence
    error, chunks, took = fails_mid_stream(gw, text)
    assert error.code == "incomplete_response"
    assert "timed out" in error.message
    assert content_of(chunks) == "Hello "  # the one token before the stall arrived
    assert took < READ_TIMEOUT + SLACK
    assert local_mock.wait_for(lambda rs: any(r.disconnected and marker in str(r.body) for r in rs), timeout=3)
    [usage] = usage_of(gw, chunks[0].id.removeprefix("chatcmpl-"))
    assert usage["status"] == "incomplete" and usage["estimated"] is True and usage["tokens_out"] >= 1


@pytest.mark.parametrize("fault", ["truncate", "malformed", "close"])
def test_a_stream_broken_after_its_first_tokens_ends_with_an_error_event(gw, local_mock, fault: str) -> None:
    marker, text = prompt(f"#chunks=3 #delay=20 #fault={fault}")
    error, chunks, took = fails_mid_stream(gw, text)
    # What went out before the break reached the client; the end says the answer is cut.
    assert content_of(chunks) == "tok0 tok1 tok2 "
    assert error.code == "incomplete_response"
    assert took < PROMPT_FAILURE
    [usage] = usage_of(gw, chunks[0].id.removeprefix("chatcmpl-"))
    assert usage["status"] == "incomplete" and usage["tokens_out"] >= 3
    assert record_of(local_mock, marker).chunks_sent == 3


@pytest.mark.parametrize("fault,code", [("truncate", "bad_upstream_response"),
                                        ("malformed", "bad_upstream_response"),
                                        ("close", "provider_error")])
def test_a_stream_broken_before_its_first_token_is_an_http_error(gw, fault: str, code: str) -> None:
    _, text = prompt(f"#chunks=0 #fault={fault}")
    error, took = fails_before_the_answer(gw, text, True)
    assert (error.status_code, error.code) == (502, code)
    assert took < PROMPT_FAILURE


# -- a 200 that is not the answer --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_a_200_html_page_is_a_502_never_a_success(gw, stream: bool) -> None:
    _, text = prompt("#fault=html")
    error, took = fails_before_the_answer(gw, text, stream)
    assert (error.status_code, error.code) == (502, "bad_upstream_response")
    assert "text/html" in error.message
    assert took < PROMPT_FAILURE
    assert usage_of(gw, error.response.headers["x-request-id"], expect=False) == []


@pytest.mark.parametrize("fault,code", [("malformed", "bad_upstream_response"),
                                        ("truncate", "bad_upstream_response"),
                                        ("close", "provider_error")])
def test_a_non_stream_body_that_is_not_whole_json_is_a_502(gw, fault: str, code: str) -> None:
    _, text = prompt(f"#fault={fault}")
    error, took = fails_before_the_answer(gw, text, False)
    assert (error.status_code, error.code) == (502, code)
    assert took < PROMPT_FAILURE
    assert usage_of(gw, error.response.headers["x-request-id"], expect=False) == []


# -- slow but whole ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_an_answer_sent_one_byte_per_write_is_served_whole(gw, local_mock, stream: bool) -> None:
    marker, text = prompt("#chunks=4 #fault=bytewise")
    if stream:
        chunks = list(create(gw, text, True))
        content, request_id = content_of(chunks), chunks[0].id.removeprefix("chatcmpl-")
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        completion = create(gw, text, False)
        content, request_id = completion.choices[0].message.content, completion.id.removeprefix("chatcmpl-")
        assert completion.choices[0].finish_reason == "stop"
    assert content == "tok0 tok1 tok2 tok3 "
    reported = record_of(local_mock, marker).usage
    [usage] = usage_of(gw, request_id)
    assert usage["status"] == "ok" and usage["estimated"] is False
    assert (usage["tokens_in"], usage["tokens_out"]) == (reported["prompt_tokens"], reported["completion_tokens"])


# -- the client leaves -------------------------------------------------------------------------

SURFACES = {
    "chat": ("chat/completions", lambda text: {"model": "mock-local", "messages": [{"role": "user", "content": text}]}),
    "embeddings": ("embeddings", lambda text: {"model": "mock-embed", "input": text}),
    "responses": ("responses", lambda text: {"model": "mock-local", "input": text, "store": False}),
    "messages": ("messages", lambda text: {"model": "mock-local", "max_tokens": 64,
                                           "messages": [{"role": "user", "content": text}]}),
}
# How long the client waits before it hangs up; the upstream would take far longer.
HANG_UP_AFTER = 0.8


@pytest.mark.parametrize("surface", SURFACES)
def test_a_client_that_hangs_up_on_a_non_stream_request_cancels_it(gw, local_mock, surface: str) -> None:
    path, body = SURFACES[surface]
    user = f"user_leaves_{uuid.uuid4().hex[:8]}"
    marker, text = prompt("#delay=8000")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.base_url}/{path}", json=body(text), headers={"Authorization": f"Bearer {gw.token(user)}"},
                   timeout=httpx.Timeout(CLIENT_TIMEOUT, read=HANG_UP_AFTER))
    # httpx closed the connection on its timeout: the gateway must drop the upstream call at once.
    assert local_mock.wait_for(lambda rs: any(r.disconnected and marker in str(r.body) for r in rs), timeout=1.0)
    assert not record_of(local_mock, marker).completed
    deadline = time.monotonic() + USAGE_WAIT
    while time.monotonic() < deadline and not [e for e in gw.usage_events() if e["properties"]["user_id"] == user]:
        time.sleep(0.05)
    time.sleep(DUPLICATE_WAIT)
    [usage] = [e["properties"] for e in gw.usage_events() if e["properties"]["user_id"] == user]
    assert usage["status"] == "cancelled" and usage["estimated"] is True
    assert usage["tokens_in"] > 0 and usage["tokens_out"] == 0


# -- keep-alive comments while a stream waits for its first token ------------------------------

KEEPALIVE = 0.2
FIRST_TOKEN_DELAY_MS = 900


@pytest.fixture(scope="module")
def keepalive_gw(tmp_path_factory, redis_url, openrouter_mock, local_mock):
    gateway = RunningGateway(tmp_path_factory.mktemp("keepalive"), redis_url, f"rka-{uuid.uuid4().hex[:8]}:",
                             openrouter_mock.url, local_mock.url, f"sse_keepalive = {KEEPALIVE}",
                             worker_providers=("local",))
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_slow_first_token_gets_keepalive_comments_and_the_sdk_still_parses(keepalive_gw) -> None:
    gw = keepalive_gw
    text = f"#chunks=2 #delay={FIRST_TOKEN_DELAY_MS}"
    lines = []
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=CLIENT_TIMEOUT,
                      headers={"Authorization": f"Bearer {gw.token('user_keepalive')}"},
                      json={"model": "mock-local", "stream": True,
                            "messages": [{"role": "user", "content": text}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert first_data >= 1 and set(lines[:first_data]) == {": keep-alive"}
    # Only while waiting for the first token: none between the tokens.
    assert ": keep-alive" not in lines[first_data:]
    assert lines[-1] == "data: [DONE]"
    chunks = list(gw.client("user_keepalive").chat.completions.create(
        model="mock-local", messages=[{"role": "user", "content": text}], stream=True))
    assert content_of(chunks) == "tok0 tok1 "


def test_a_failure_before_the_first_keepalive_is_still_an_http_status(keepalive_gw) -> None:
    error, _ = fails_before_the_answer(keepalive_gw, "#status=429", True)
    assert (error.status_code, error.code) == (429, "rate_limit_exceeded")


def test_a_failure_after_a_keepalive_is_a_final_error_event(keepalive_gw) -> None:
    # The upstream answers 500 only after a few keep-alives went out with the 200 head.
    lines = []
    with httpx.stream("POST", f"{keepalive_gw.base_url}/chat/completions", timeout=CLIENT_TIMEOUT,
                      headers={"Authorization": f"Bearer {keepalive_gw.token('user_keepalive')}"},
                      json={"model": "mock-local", "stream": True,
                            "messages": [{"role": "user", "content": "#fault=html #delay=900"}]}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == ": keep-alive"
    assert lines[-1].startswith("data: ") and json_of(lines[-1])["error"]["code"] == "bad_upstream_response"


def json_of(line: str) -> dict:
    import json

    return json.loads(line.removeprefix("data: "))
