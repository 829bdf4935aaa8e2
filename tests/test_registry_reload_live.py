"""The registry reloads in running processes: a changed overlay is served within seconds by the
front door and priced by the worker, SIGHUP reloads at once, and a broken file is kept out."""

from __future__ import annotations

import os
import signal
import time
import uuid

import httpx

from .gateway_proc import OVERLAY, RunningGateway


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    return False


def test_overlay_change_sighup_and_a_broken_file(tmp_path, redis_url, openrouter_mock, local_mock) -> None:
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        local_mock.url)
    gw.start()
    try:
        headers = {"Authorization": f"Bearer {gw.token()}"}

        def health() -> dict:
            return httpx.get(f"{gw.base_url}/health", timeout=3).json()

        def model_ids() -> set[str]:
            return {m["id"] for m in httpx.get(f"{gw.base_url}/models", headers=headers, timeout=3).json()["data"]}

        assert "mock-reloaded" not in model_ids()
        version = health()["registry"]["version"]

        # A new model, and a new price for an existing one: both front door and worker pick it up.
        overlay = gw.workdir / "ai-models.toml"
        overlay.write_text(OVERLAY.replace("input_price_per_mtok = 1.0", "input_price_per_mtok = 100.0") + '''
[models."mock-reloaded"]
capabilities = ["chat", "streaming"]
routes = [{ provider = "local", model = "mock/reloaded" }]
''')
        assert _wait(lambda: "mock-reloaded" in model_ids()), gw.logs()
        assert health()["registry"]["version"] > version
        reply = httpx.post(f"{gw.base_url}/chat/completions", headers=headers, timeout=20,
                           json={"model": "mock-reloaded", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.json()["model"] == "mock-reloaded"

        def priced() -> bool:
            answer = httpx.post(f"{gw.base_url}/chat/completions", headers=headers, timeout=20,
                                json={"model": "mock-local", "messages": [{"role": "user", "content": "price me"}]})
            request_id = answer.json()["id"].removeprefix("chatcmpl-")
            time.sleep(0.2)
            props = next(e["properties"] for e in gw.usage_events() if e["properties"]["request_id"] == request_id)
            return props["cost_usd"] == round((props["tokens_in"] * 100.0 + props["tokens_out"] * 2.0) / 1e6, 10)

        assert _wait(priced), "the worker still prices with the old registry"

        # A broken file: the last good registry stays, and health says why.
        overlay.write_text('[models."mock-local"]\ninput_price_per_mtok = "free"\n')
        assert _wait(lambda: health()["registry"]["last_error"] is not None)
        assert "input_price_per_mtok" in health()["registry"]["last_error"]
        assert "mock-reloaded" in model_ids()

        # SIGHUP reloads at once (the file is fixed first; the poll would also find it, later).
        overlay.write_text(OVERLAY)
        os.kill(gw.api.pid, signal.SIGHUP)
        assert _wait(lambda: health()["registry"]["last_error"] is None and "mock-reloaded" not in model_ids(), 5)
        assert gw.api.poll() is None
    finally:
        gw.stop()
