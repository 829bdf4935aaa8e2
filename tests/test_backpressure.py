"""Backpressure: a full pool answers 503 with Retry-After at once, and takes work again once it has room."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from .gateway_proc import RunningGateway


@pytest.fixture
def small_gateway(tmp_path, redis_url, openrouter_mock, local_mock):
    """Two job slots per worker and a backlog of one: the fourth concurrent request is one too many."""
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra="worker_concurrency = 2\nqueue_backlog = 1\n"
                        # one user fills the pool here: no per-user share in the way
                        "queue_user_share = 1\n")
    gw.start()
    yield gw
    gw.stop()


def chat(gw: RunningGateway, content: str, timeout: float = 20) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", timeout=timeout,
                      headers={"Authorization": f"Bearer {gw.token()}"},
                      json={"model": "mock-local", "messages": [{"role": "user", "content": content}]})


def test_a_full_pool_is_503_at_once_then_serves_again(small_gateway):
    gw = small_gateway
    slow: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: slow.append(chat(gw, "#delay=1500"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    # Two run, one waits in the backlog: the pool holds three.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and gw.redis.zcard(f"{gw.prefix}queue:local") < 3:
        time.sleep(0.02)
    assert gw.redis.zcard(f"{gw.prefix}queue:local") == 3

    started = time.monotonic()
    refused = chat(gw, "one too many")
    assert time.monotonic() - started < 1  # not after queue_timeout
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert "'local'" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"

    for thread in threads:
        thread.join(20)
    # All three were served, the one in the backlog once a slot freed.
    assert [r.status_code for r in slow] == [200, 200, 200]
    assert chat(gw, "room again").json()["choices"][0]["message"]["content"] == "Hello from mock: room again"
    # The refused request was never queued, so it was never served or metered.
    assert not any(e["properties"]["status"] != "ok" for e in gw.usage_events())
    assert len(gw.usage_events()) == 4
