"""Redis going away, coming back and not answering: requests fail cleanly (503, never a hang)
while it is gone, and the gateway (front door and workers) recovers by itself once it is back."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid

import httpx
import openai
import pytest
import redis

from api.embedded_redis import find_redis_server

from .gateway_proc import RunningGateway, free_port


class PrivateRedis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis():
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, openai.APIError):
            pass
        time.sleep(0.1)
    return False


def test_redis_restart(tmp_path, private_redis, openrouter_mock, local_mock):
    gw = RunningGateway(tmp_path / "gw", private_redis.url, f"rfault-{uuid.uuid4().hex[:6]}:", openrouter_mock.url,
                        local_mock.url)
    gw.start()
    try:
        client = gw.client()
        assert client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "a"}])
        private_redis.stop()
        assert wait_until(lambda: httpx.get(f"{gw.base_url}/health", timeout=3).status_code == 503, 5)
        body = httpx.get(f"{gw.base_url}/health", timeout=3).json()
        assert body["redis"] is False
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "b"}])
        assert info.value.status_code == 503
        private_redis.start()
        # Healthy once the front door has Redis and its reply channel back and the worker is seen again.
        assert wait_until(lambda: httpx.get(f"{gw.base_url}/health", timeout=3).status_code == 200, 20), gw.logs()
        try:
            answer = client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": "back"}])
            chunks = list(client.chat.completions.create(model="mock-local", stream=True,
                                                         messages=[{"role": "user", "content": "#chunks=3"}]))
        except openai.APIError as exc:
            raise AssertionError(f"after the restart: {exc!r}\n{gw.logs()}") from exc
        assert answer.choices[0].message.content == "Hello from mock: back"
        assert chunks[-1].choices[0].finish_reason == "stop"
    finally:
        gw.stop()


def test_redis_dies_mid_stream_usage_is_spooled_then_recorded_once(tmp_path, private_redis, openrouter_mock,
                                                                   local_mock):
    gw = RunningGateway(tmp_path / "gw", private_redis.url, f"rfault-{uuid.uuid4().hex[:6]}:", openrouter_mock.url,
                        local_mock.url)
    gw.start()
    try:
        stream = gw.client("user_spool").chat.completions.create(
            model="mock-local", stream=True, messages=[{"role": "user", "content": "#chunks=100 #delay=40 spool"}])
        got = 0
        with pytest.raises(openai.APIError):
            for chunk in stream:
                got += 1
                request_id = chunk.id.removeprefix("chatcmpl-")
                if got == 3:
                    private_redis.stop()
        # The worker cannot publish any more, so it stops the upstream call instead of running it out.
        assert local_mock.wait_for(lambda rs: any(r.disconnected and "spool" in str(r.body) for r in rs), timeout=5)
        private_redis.start()
        events = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not events:
            try:
                events = [e for e in gw.usage_events() if e["properties"]["request_id"] == request_id]
            except redis.ConnectionError:
                pass
            time.sleep(0.2)
        assert len(events) == 1, gw.logs()
        assert events[0]["properties"]["user_id"] == "user_spool"
        assert events[0]["properties"]["tokens_out"] >= 1
        time.sleep(1)
        assert len([e for e in gw.usage_events() if e["properties"]["request_id"] == request_id]) == 1
    finally:
        gw.stop()


class RedisProxy:
    """A TCP proxy between the gateway and a Redis that can be told to stop answering.

    ``blackhole()`` holds every byte in both directions (connections stay open, nothing answers:
    a partition or a frozen host); ``refuse()`` closes every connection and every new one at
    once (Redis gone); ``heal()`` lets traffic flow again, held bytes first. ``sever()`` holds
    the connections open now for good while new ones work: connections that died silently.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._severed: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def start(self) -> "RedisProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pump(reader, up_writer, writer), self._pump(up_reader, writer, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    client: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if client in self._severed:
                    await asyncio.Event().wait()  # held until the proxy stops
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _call(self, fn) -> None:
        self._loop.call_soon_threadsafe(fn)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(5)

    def blackhole(self) -> None:
        self._call(lambda: self._flowing.clear())

    def refuse(self) -> None:
        def close_all() -> None:
            self._refusing = True
            for w in list(self._writers):
                w.transport.abort()
        self._call(close_all)

    def sever(self) -> None:
        self._call(lambda: self._severed.update(self._writers))

    def heal(self) -> None:
        def heal() -> None:
            self._refusing = False
            self._flowing.set()
        self._call(heal)

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def redis_proxy(private_redis):
    proxy = RedisProxy(private_redis.port).start()
    yield proxy
    proxy.stop()


# The gateway's per-call Redis timeout in these tests; a request must end well within the client's.
FAULT_REDIS_TIMEOUT = 2
CLIENT_TIMEOUT = 15.0


def assert_openai_503(exc: openai.APIStatusError) -> None:
    assert exc.status_code == 503, exc
    error = exc.response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], error


def usage_by_request(gw: RunningGateway) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in gw.usage_events():
        rid = event["properties"]["request_id"]
        counts[rid] = counts.get(rid, 0) + 1
    return counts


def assert_metered_once(gw: RunningGateway, request_ids: list[str]) -> None:
    """Every one of ``request_ids`` has exactly one usage record (waiting up to 10 s for them)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(r in usage_by_request(gw) for r in request_ids):
        time.sleep(0.2)
    counts = usage_by_request(gw)
    assert all(counts.get(r) == 1 for r in request_ids), (request_ids, counts, gw.logs())


@pytest.fixture
def proxied_gw(tmp_path, private_redis, redis_proxy, openrouter_mock, local_mock):
    """A gateway whose every Redis connection goes through ``redis_proxy``, with a short redis_timeout."""
    gw = RunningGateway(tmp_path / "gw", private_redis.url, f"rproxy-{uuid.uuid4().hex[:6]}:", openrouter_mock.url,
                        local_mock.url, f"redis_timeout = {FAULT_REDIS_TIMEOUT}", env={"REDIS_URL": redis_proxy.url})
    gw.start()
    yield gw
    gw.stop()


class Asker:
    """Asks ``proxied_gw`` for chat completions and keeps the ids of those answered."""

    def __init__(self, gw: RunningGateway) -> None:
        self.client = gw.client(timeout=CLIENT_TIMEOUT)
        self.ok: list[str] = []

    def __call__(self, text: str) -> bool:
        answer = self.client.chat.completions.create(model="mock-local", messages=[{"role": "user", "content": text}])
        self.ok.append(answer.id.removeprefix("chatcmpl-"))
        return True


def test_redis_not_answering_gets_503_then_recovers(proxied_gw, redis_proxy):
    """A Redis that accepts connections but never answers: each request ends with a 503 in the
    OpenAI error shape (the client's own timeout, far longer, never fires), and once Redis answers
    again the gateway serves by itself; every request answered 200 is metered exactly once."""
    gw, ask = proxied_gw, Asker(proxied_gw)
    ask("before")
    redis_proxy.blackhole()
    for text in ("during-1", "during-2"):
        with pytest.raises(openai.APIStatusError) as info:
            ask(text)
        assert_openai_503(info.value)
    redis_proxy.heal()
    assert wait_until(lambda: ask("after"), 30), gw.logs()
    for _ in range(3):
        ask("after-more")
    assert_metered_once(gw, ask.ok)


def test_redis_refusing_gets_503_quickly(proxied_gw, redis_proxy):
    """Redis unreachable (every connection closed at once) when a request arrives: a 503 at once,
    and service again when it is back."""
    gw, ask = proxied_gw, Asker(proxied_gw)
    assert ask("a")
    redis_proxy.refuse()
    for text in ("b", "c"):
        with pytest.raises(openai.APIStatusError) as info:
            ask(text)
        assert_openai_503(info.value)
    redis_proxy.heal()
    assert wait_until(lambda: ask("back"), 30), gw.logs()


def test_silently_dead_redis_connections_are_replaced(proxied_gw, redis_proxy):
    """Every connection open at some moment stops carrying anything, without being closed (the
    host behind it vanished, or a firewall dropped its state), while new connections work. The
    subscriptions are found dead by their unanswered pings and made again, so the gateway serves
    by itself; without that, replies would be published where nobody listens any more."""
    gw, ask = proxied_gw, Asker(proxied_gw)
    ask("before")
    redis_proxy.sever()
    assert wait_until(lambda: ask("after"), 30), gw.logs()
    for _ in range(3):
        ask("after-more")
    assert_metered_once(gw, ask.ok)
