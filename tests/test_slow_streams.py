"""Real LLM traffic in small: hundreds of concurrent slow streams through one worker process.

The bench (``bench/run.sh --serve --cases s1000 --chunk-delay-ms 100``) measures the full size;
this bounded version runs in every test run and fails if any request errors or any stream that
started is cut. Its upstream is the mock in a process of its own, so the pytest process only
drives the load.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest

from .gateway_proc import RunningGateway

STREAMS = 300
CHUNKS, DELAY_MS = 10, 200   # a token every 200 ms: each stream lasts about 2.2 s, far past the silence timeout
ROUNDS = 2


@pytest.fixture
def gateway_for_load(tmp_path, redis_url, openrouter_mock, process_upstream):
    gw = RunningGateway(tmp_path / "gw", redis_url, f"rtest-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                        process_upstream)
    gw.start()
    yield gw
    gw.stop()


async def one_stream(session: aiohttp.ClientSession, url: str, token: str) -> tuple[str, int]:
    """('ok' | what went wrong, content chunks received)."""
    body = {"model": "mock-local", "stream": True,
            "messages": [{"role": "user", "content": f"go #chunks={CHUNKS} #delay={DELAY_MS}"}]}
    chunks = 0
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        if response.status != 200:
            return f"HTTP {response.status}: {(await response.text())[:200]}", 0
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return ("ok" if chunks == CHUNKS else f"{chunks} of {CHUNKS} chunks"), chunks
            event = json.loads(payload)
            if "error" in event:
                return f"error event after {chunks} chunks: {event['error']}", chunks
            if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                chunks += 1
    return f"cut after {chunks} chunks (no [DONE])", chunks


def test_hundreds_of_slow_streams_all_complete(gateway_for_load):
    gw = gateway_for_load
    url, token = f"{gw.base_url}/chat/completions", gw.token("user_load")

    async def run() -> list[str]:
        connector = aiohttp.TCPConnector(limit=STREAMS)
        timeout = aiohttp.ClientTimeout(total=60)
        outcomes = []
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for _ in range(ROUNDS):
                results = await asyncio.gather(*(one_stream(session, url, token) for _ in range(STREAMS)),
                                               return_exceptions=True)
                outcomes += [r[0] if isinstance(r, tuple) else f"{type(r).__name__}: {r}" for r in results]
        return outcomes

    started = time.monotonic()
    outcomes = asyncio.run(asyncio.wait_for(run(), 120))
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} failed, e.g. {sorted(set(failures))[:5]}\n{gw.logs()}"
    # Every stream metered once.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(gw.usage_events()) < STREAMS * ROUNDS:
        time.sleep(0.2)
    events = [e for e in gw.usage_events() if e["properties"]["user_id"] == "user_load"]
    assert len(events) == STREAMS * ROUNDS
    assert len({e["properties"]["request_id"] for e in events}) == STREAMS * ROUNDS
    assert time.monotonic() - started < 120
