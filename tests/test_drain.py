"""SIGTERM drains: the front door says "draining" while it still serves, lets an open stream
finish, then stops; a worker finishes its running job before it goes."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx

from .gateway_proc import RunningGateway


def test_sigterm_drains_the_front_door_and_the_worker(tmp_path, redis_url, openrouter_mock, local_mock) -> None:
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url, extra="drain_seconds = 1.5\nshutdown_grace = 10")
    gw.start()
    try:
        client = gw.client(timeout=30)
        chunks: list = []
        errors: list = []

        def stream() -> None:
            try:
                for chunk in client.chat.completions.create(
                        model="mock-local", stream=True, messages=[{"role": "user", "content": "#chunks=30 #delay=100"}]):
                    chunks.append(chunk)
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
                errors.append(exc)

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 5
        while len(chunks) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(chunks) >= 3

        os.kill(gw.api.pid, signal.SIGTERM)
        os.kill(gw.worker.pid, signal.SIGTERM)
        time.sleep(0.3)
        health = httpx.get(f"{gw.base_url}/health", timeout=3)
        assert health.status_code == 503 and health.json()["status"] == "draining"

        reader.join(timeout=15)
        assert not errors, errors
        assert chunks[-1].choices[0].finish_reason == "stop" or chunks[-2].choices[0].finish_reason == "stop"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).count("tok") == 30
        # uvicorn re-raises the SIGTERM once it has shut down, so the process ends by that signal.
        assert gw.api.wait(timeout=15) in (0, -signal.SIGTERM)
        gw.worker.wait(timeout=15)
    finally:
        gw.stop()
