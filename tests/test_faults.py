"""Redis going away and coming back: requests fail cleanly while it is gone, and the gateway
(front door and workers) recovers by itself once it is back."""

from __future__ import annotations

import subprocess
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
