"""The Analytics feed against a mock Analytics that fails, stalls, goes away and comes back: every
event arrives at least once (deduplicated on its request id, it is exactly the stream), an event is
acknowledged only after a 2xx, a killed forwarder's batch is taken over by the next one, and the
stream is trimmed only below what every consumer group has been handed and acknowledged.

Events are written by the real ``UsageRecorder`` into the real Redis; forwarders run in-process
(``run_forwarder``) or as ``reactor analytics forward`` subprocesses, which the tests kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import uvicorn
from redis.asyncio import Redis as AsyncRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.analytics import ForwarderConfig, run_forwarder
from shared.keys import Keys
from shared.usage import Tokens, UsageRecorder, build_usage

from .gateway_proc import REPO

START_TIMEOUT = 10.0
# The longest any test waits for the feed to catch up.
SETTLE_TIMEOUT = 30.0
# Subprocess forwarders retry fast and look at pending entries often, so the tests stay short.
FAST = ["--max-backoff", "0.2", "--trim-interval", "0.2"]
POLL_S = 0.05


class MockAnalytics:
    """An Analytics endpoint (``POST /events``, a JSON array of events) on a thread.

    ``fail_with`` answers every batch with that status; ``delay`` stalls each answer; while
    ``gate`` is clear, batches are held open. A batch is *accepted* only when it is answered 2xx.
    :meth:`stop` and :meth:`start` take it away and bring it back on the same port.
    """

    def __init__(self) -> None:
        self.fail_with: int | None = None
        self.delay = 0.0
        self.gate = threading.Event()
        self.gate.set()
        self.refuse_held = False
        self.arrived: list[list[dict]] = []  # every batch, as it came in
        self.accepted: list[list[dict]] = []  # the batches answered 2xx
        self.answers: list[int] = []
        self._lock = threading.Lock()
        self._port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.app = Starlette(routes=[Route("/events", self._events, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/events"

    async def _events(self, request: Request) -> JSONResponse:
        batch = json.loads(await request.body())
        with self._lock:
            self.arrived.append(batch)
        while not self.gate.is_set():
            await asyncio.sleep(POLL_S)
        if self.delay:
            await asyncio.sleep(self.delay)
        status = 503 if self.refuse_held else (self.fail_with or 200)
        with self._lock:
            self.answers.append(status)
            if status < 300:
                self.accepted.append(batch)
        return JSONResponse({"received": len(batch)}, status_code=status)

    def start(self) -> "MockAnalytics":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        self._socket = sock
        self._server = uvicorn.Server(uvicorn.Config(self.app, http="h11", loop="asyncio", lifespan="off",
                                                     log_level="warning", access_log=False,
                                                     timeout_graceful_shutdown=0.5))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "mock Analytics did not start"
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [event["properties"]["request_id"] for batch in self.accepted for event in batch]

    def failures(self) -> int:
        with self._lock:
            return sum(1 for status in self.answers if status >= 300)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(POLL_S)


@pytest.fixture
def mock():
    server = MockAnalytics().start()
    yield server
    server.stop()


class Feed:
    """One test's stream (its own key prefix) in the real Redis, and its forwarder subprocesses."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.keys = Keys(f"rtest-{uuid.uuid4().hex[:8]}:")
        self.stream = self.keys.usage_events
        self.group = self.keys.analytics_group
        self.redis = redis.Redis.from_url(redis_url)
        self.workdir = workdir
        self.config = workdir / "reactor.toml"
        self.config.write_text(f'[gateway]\nkey_prefix = "{self.keys.prefix}"\ndata_dir = "./data"\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("REACTOR_", "OPENROUTER_"))}
        self.env.update(REDIS_URL=redis_url, PYTHONPATH=str(REPO))
        self.procs: list[subprocess.Popen] = []

    def record(self, count: int, user: str = "feed_user") -> list[str]:
        """Meter ``count`` requests with the real recorder; their request ids."""

        async def main() -> list[str]:
            client = AsyncRedis.from_url(self.redis_url)
            recorder = UsageRecorder(client, self.keys, retention_days=1)
            ids = []
            for i in range(count):
                request_id = uuid.uuid4().hex
                await recorder.record(build_usage(
                    request_id=request_id, user_id=user, alias=None, model_id="mock-local", provider="local",
                    tokens=Tokens(10 + i, 5), model=None, started=time.time(), status="ok"))
                ids.append(request_id)
            await client.aclose()
            return ids

        return asyncio.run(main())

    def stream_ids(self) -> list[bytes]:
        return [entry_id for entry_id, _ in self.redis.xrange(self.stream)]

    def stream_request_ids(self) -> list[str]:
        return [json.loads(fields[b"data"])["properties"]["request_id"] for _, fields in self.redis.xrange(self.stream)]

    def pending(self) -> int:
        return self.redis.xpending(self.stream, self.group)["pending"]

    def pending_of(self, consumer: str) -> list[bytes]:
        return [p["message_id"] for p in self.redis.xpending_range(self.stream, self.group, "-", "+", 1000, consumer)]

    def idle_ms(self, consumer: str) -> int:
        """How long the least idle of ``consumer``'s pending entries has been idle."""
        pending = self.redis.xpending_range(self.stream, self.group, "-", "+", 1000, consumer)
        return min(p["time_since_delivered"] for p in pending)

    def forward(self, url: str, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"forward-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "api.cli", "analytics", "forward", "--url", url,
                                 "--config", str(self.config), *args], cwd=self.workdir, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log")))

    def run_inline(self, config: ForwarderConfig, timeout: float = SETTLE_TIMEOUT):
        """``run_forwarder`` in this process, draining: returns once everything is delivered."""

        async def main():
            client = AsyncRedis.from_url(self.redis_url)
            try:
                return await asyncio.wait_for(run_forwarder(client, self.keys, config, drain=True), timeout)
            finally:
                await client.aclose()

        return asyncio.run(main())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for key in self.redis.scan_iter(match=f"{self.keys.prefix}*", count=1000):
            self.redis.delete(key)
        self.redis.close()


@pytest.fixture
def feed(redis_url, tmp_path):
    f = Feed(redis_url, tmp_path)
    yield f
    f.close()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a forwarder subprocess, which finishes cleanly."""
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0


def test_every_event_is_delivered_in_batches_and_the_delivered_part_trimmed(feed, mock):
    recorded = feed.record(25)
    assert feed.stream_request_ids() == recorded
    stats = feed.run_inline(ForwarderConfig(url=mock.url, batch_size=10, trim_interval_s=0.1))
    assert stats.delivered == 25 and stats.batches == 3 and stats.failures == 0
    assert sorted(mock.accepted_ids()) == sorted(recorded)
    assert [len(batch) for batch in mock.accepted] == [10, 10, 5]
    event = mock.accepted[0][0]
    assert event["event"] == "ai.usage" and event["properties"]["user_id"] == "feed_user"
    assert feed.pending() == 0
    # Everything delivered: only the last delivered entry is kept, as the group's mark.
    assert feed.stream_request_ids() == recorded[-1:]
    status = feed.redis.hgetall(feed.keys.analytics_status(feed.group))
    assert int(status[b"delivered"]) == 25


def test_acks_only_after_2xx_and_recovers_from_failures_timeouts_and_restarts(feed, mock):
    recorded = feed.record(12)
    first_five = feed.stream_ids()[:5]
    mock.fail_with = 500
    proc = feed.forward(mock.url, "--batch-size", "5", "--timeout", "0.5", "--consumer", "steady", *FAST)

    # Refused: the batch stays pending, nothing is trimmed, and the same batch is tried again.
    wait_until(lambda: mock.failures() >= 3, "the forwarder retried a refused batch")
    assert feed.pending_of("steady") == first_five
    assert len(feed.stream_ids()) == 12 and mock.accepted_ids() == []
    assert all([e["properties"]["request_id"] for e in batch] == recorded[:5] for batch in mock.arrived)

    # Too slow: the forwarder hangs up after its timeout and keeps the batch pending.
    mock.fail_with, mock.delay = None, 3.0
    tries = len(mock.arrived)
    wait_until(lambda: len(mock.arrived) >= tries + 2, "the forwarder timed out and tried again")
    assert feed.pending_of("steady") == first_five
    assert b"ReadTimeout" in feed.redis.hget(feed.keys.analytics_status(feed.group), "last_error")

    # Back to normal: everything goes through, and the delivered part of the stream is trimmed.
    mock.delay = 0.0
    wait_until(lambda: set(mock.accepted_ids()) == set(recorded) and feed.pending() == 0, "all 12 were delivered")
    wait_until(lambda: len(feed.stream_ids()) == 1, "the delivered events were trimmed")

    # Analytics goes away: new events wait in the stream, pending or unread, untrimmed.
    mock.stop()
    later = feed.record(7)
    wait_until(lambda: b"ConnectError" in (feed.redis.hget(feed.keys.analytics_status(feed.group), "last_error") or b"")
               and feed.pending() > 0, "the forwarder found Analytics gone")
    time.sleep(0.5)  # several trim intervals
    assert set(later) <= set(feed.stream_request_ids())
    assert not set(later) & set(mock.accepted_ids())

    # … and comes back on the same address.
    mock.start()
    wait_until(lambda: set(later) <= set(mock.accepted_ids()) and feed.pending() == 0, "the later 7 were delivered")
    assert set(mock.accepted_ids()) == set(recorded + later)
    stop(proc)
    assert "Delivered 19 events" in feed.logs()


def test_a_killed_forwarders_batch_is_taken_over_and_delivered(feed, mock):
    recorded = feed.record(12)
    mock.gate.clear()  # Analytics holds the first batch open
    first = feed.forward(mock.url, "--batch-size", "5", "--consumer", "doomed", *FAST)
    wait_until(lambda: len(mock.arrived) == 1, "the first batch reached Analytics", timeout=15)
    held = feed.pending_of("doomed")
    assert len(held) == 5 and feed.pending() == 5
    os.killpg(first.pid, signal.SIGKILL)  # mid-batch: posted, unanswered, unacknowledged
    first.wait(5)
    mock.refuse_held = True
    mock.gate.set()  # the dead forwarder's request is answered 503: it was never accepted
    wait_until(lambda: mock.failures() == 1, "the held batch was answered")
    mock.refuse_held = False
    assert mock.accepted_ids() == [] and feed.pending_of("doomed") == held
    wait_until(lambda: feed.idle_ms("doomed") >= 1000, "the dead forwarder's batch was idle a second")

    # The next forwarder takes over the dead one's batch once it has been idle a second.
    second = feed.forward(mock.url, "--batch-size", "5", "--consumer", "heir", "--reclaim-idle", "1", "--drain", *FAST)
    assert second.wait(SETTLE_TIMEOUT) == 0, feed.logs()
    assert sorted(set(mock.accepted_ids())) == sorted(recorded)
    assert mock.accepted[0] == mock.arrived[0]  # the batch the dead forwarder had posted, taken over first
    assert feed.pending() == 0 and feed.pending_of("doomed") == []
    assert "Delivered 12 events in 3 batches (5 taken over" in feed.logs()
    assert feed.stream_request_ids() == recorded[-1:]


def test_the_stream_is_trimmed_only_below_what_every_group_has_acknowledged(feed, mock):
    recorded = feed.record(10)
    ids = feed.stream_ids()
    # A second destination's group has been handed 6 events and acknowledged only the first 2.
    feed.redis.xgroup_create(feed.stream, "warehouse", id="0")
    feed.redis.xreadgroup("warehouse", "w1", {feed.stream: ">"}, count=6)
    feed.redis.xack(feed.stream, "warehouse", *ids[:2])

    stats = feed.run_inline(ForwarderConfig(url=mock.url, batch_size=4))
    assert stats.delivered == 10 and sorted(mock.accepted_ids()) == sorted(recorded)
    # All delivered to `analytics`, but `warehouse` still needs its oldest pending (the third) on.
    assert feed.stream_ids() == ids[2:]

    feed.redis.xack(feed.stream, "warehouse", *ids[2:6])  # nothing pending: it has read up to the sixth
    more = feed.record(2)
    feed.run_inline(ForwarderConfig(url=mock.url, batch_size=4))
    assert feed.stream_ids()[0] == ids[5]
    assert feed.stream_request_ids() == recorded[5:] + more
    assert sorted(set(mock.accepted_ids())) == sorted(recorded + more)


def test_a_malformed_entry_is_acknowledged_without_spoiling_its_batch(feed, mock):
    recorded = feed.record(2)
    feed.redis.xadd(feed.stream, {"event": "ai.usage", "data": b"{not json"})
    recorded += feed.record(1)
    stats = feed.run_inline(ForwarderConfig(url=mock.url, batch_size=10))
    assert stats.malformed == 1 and stats.delivered == 3
    assert mock.accepted_ids() == recorded and feed.pending() == 0
