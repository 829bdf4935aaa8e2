"""A fleet as an operator runs it: two front doors and two worker pools on one Redis, with the
Analytics forwarder beside them.

A flood of one pool is refused at once with 503s while the other pool serves on; a worker told
to stop (SIGTERM) finishes its streams first; and every answered request is accounted for
exactly once, alike by the usage events, by `reactor ai usage`, by what the forwarder delivered
and by the front doors' metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from .gateway_proc import RunningGateway
from .test_analytics import MockAnalytics
from .test_cli_ai import client_env, reactor
from .test_metrics import value

# The local pool holds worker_concurrency + queue_backlog jobs; a flood of FLOOD asks for more.
SLOTS, BACKLOG, FLOOD = 3, 1, 12
# Long enough that no admitted flood request ends before the last one arrives.
FLOOD_DELAY_MS = 2500
SETTLE_S = 15.0
HTTP_TIMEOUT_S = 20.0


def wait_until(check, what: str, timeout: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


def chat(base_url: str, token: str, model: str, content: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=HTTP_TIMEOUT_S,
                      headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def fleet(tmp_path, redis_url, openrouter_mock, local_mock):
    gw = RunningGateway(tmp_path / "fleet", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra=f"worker_concurrency = {SLOTS}\nqueue_backlog = {BACKLOG}\n",
                        worker_providers=("openrouter",))
    analytics = MockAnalytics().start()
    forwarder = None
    try:
        gw.start()
        gw.extra_worker("local")  # the second pool
        wait_until(lambda: httpx.get(f"{gw.base_url}/health", timeout=2).json()["workers"].get("local"),
                   "the local pool has a live worker")
        gw.second_url = gw.extra_api()
        forwarder = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "analytics", "forward", "--url", analytics.url, "--config",
             str(gw.config)], cwd=gw.workdir, env=gw.env, stdout=open(gw.workdir / "forwarder.log", "ab"),
            stderr=subprocess.STDOUT, start_new_session=True)
        yield gw, analytics
    finally:
        if forwarder is not None and forwarder.poll() is None:
            os.killpg(forwarder.pid, signal.SIGTERM)
            forwarder.wait(10)
        gw.stop()
        analytics.stop()


def test_a_fleet_refuses_floods_at_once_drains_on_sigterm_and_accounts_for_every_request(fleet, tmp_path):
    gw, analytics = fleet
    doors = (gw.base_url, gw.second_url)
    served: list[str] = []  # request ids of the answered requests
    lock = threading.Lock()

    # 1. A flood of the local pool, over both front doors, one user each (no user's share is
    #    what refuses them here): the pool admits what it holds, the rest are 503 at once.
    flood: list[tuple[httpx.Response, float]] = []

    def flood_one(i: int) -> None:
        started = time.monotonic()
        response = chat(doors[i % 2], gw.token(f"flood_{i}"), "mock-local", f"flood {i} #delay={FLOOD_DELAY_MS}")
        with lock:
            flood.append((response, time.monotonic() - started))

    threads = [threading.Thread(target=flood_one, args=(i,)) for i in range(FLOOD)]
    for thread in threads:
        thread.start()
    # Meanwhile the other pool serves as if nothing happened.
    for i in range(3):
        other = chat(doors[i % 2], gw.token("steady"), "gpt-4o-mini", f"steady {i}")
        assert other.status_code == 200, other.text
        served.append(other.headers["x-request-id"])
    for thread in threads:
        thread.join(HTTP_TIMEOUT_S + 5)
    accepted = [r for r, _ in flood if r.status_code == 200]
    refused = [(r, took) for r, took in flood if r.status_code != 200]
    assert len(accepted) == SLOTS + BACKLOG, [r.text for r, _ in flood]
    assert len(refused) == FLOOD - SLOTS - BACKLOG
    for response, took in refused:
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
        assert response.headers["retry-after"]
        assert took < 2.0  # refused at once, not after queue_timeout
    served += [r.headers["x-request-id"] for r in accepted]

    # 2. SIGTERM to the openrouter worker while it streams: its streams still end whole.
    streams: list[list[str]] = [[] for _ in range(2)]

    def stream_one(i: int) -> None:
        body = {"model": "gpt-4o-mini", "stream": True,
                "messages": [{"role": "user", "content": f"drain {i} #chunks=6 #delay=250"}]}
        with httpx.stream("POST", f"{doors[i]}/chat/completions", json=body, timeout=HTTP_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {gw.token('drained')}"}) as response:
            assert response.status_code == 200
            with lock:
                served.append(response.headers["x-request-id"])
            for line in response.iter_lines():
                if line.startswith("data: "):
                    streams[i].append(line[6:])

    streamers = [threading.Thread(target=stream_one, args=(i,)) for i in range(2)]
    for thread in streamers:
        thread.start()
    wait_until(lambda: all(len(s) >= 2 for s in streams), "both streams are under way")
    os.killpg(gw.worker.pid, signal.SIGTERM)
    for thread in streamers:
        thread.join(HTTP_TIMEOUT_S)
    for events in streams:
        assert events[-1] == "[DONE]", events
        text = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for e in events[:-1])
        assert text == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert gw.worker.wait(SETTLE_S) == 0  # it left once its jobs were done

    # 3. Every answered request, once, everywhere; nothing for the refused ones. The forwarder
    #    trims the stream behind what it delivered, so the events are read from what Analytics got
    #    (at least once: deduplicated by request id, as Analytics is told to).
    wait_until(lambda: set(analytics.accepted_ids()) >= set(served), "the forwarder delivered every event")
    time.sleep(0.5)  # a double record, were there one, would have arrived by now
    delivered = {e["properties"]["request_id"]: e["properties"] for batch in analytics.accepted for e in batch}
    assert sorted(delivered) == sorted(served)
    events = list(delivered.values())
    assert all(e["status"] == "ok" for e in events)

    admin = subprocess.run([sys.executable, "-m", "api.cli", "auth", "token", "fleet_admin", "--admin", "--config",
                            str(gw.config)], env=gw.env, cwd=gw.workdir, capture_output=True, text=True, timeout=30)
    assert admin.returncode == 0, admin.stderr
    today = time.strftime("%Y-%m-%d", time.gmtime())
    result = reactor(client_env(gw.url, admin.stdout.strip(), tmp_path), "ai", "usage", "--by", "user", "--since",
                     today, "--until", today, "--json")
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    assert totals["requests"] == len(served)
    assert totals["tokens_in"] == sum(e["tokens_in"] for e in events)
    assert totals["tokens_out"] == sum(e["tokens_out"] for e in events)

    # The front doors' metrics saw the same: answers and refusals, summed over both replicas.
    pages = [httpx.get(door.removesuffix("/ai/v1") + "/metrics", timeout=5).text for door in doors]
    answered = sum(value(p, "reactor_requests_total", surface="chat", status="200") for p in pages)
    overloaded = sum(value(p, "reactor_requests_total", surface="chat", status="503", code="overloaded")
                     for p in pages)
    assert answered == len(served)
    assert overloaded == len(refused)
