"""Load against one front door and one worker: 500 concurrent streams, then a burst of 5,000
non-streamed requests. Nothing may fail beyond the documented backpressure (429, 503 with
``Retry-After``), and both processes' memory must come back near where it started.

The upstream is the mock in a process of its own, so the pytest process only drives the load
(async clients: one event loop, not thousands of threads).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections import Counter

import aiohttp
import pytest

from .gateway_proc import RunningGateway

STREAMS = 500
STREAM_CHUNKS, STREAM_DELAY_MS = 5, 100
BURST = 5_000
LOAD_TIMEOUT = 90
# Backpressure the README documents: the pool is full (503 overloaded), no worker took the job in
# time (503 no_worker_available), or the upstream rate-limited (429).
BACKPRESSURE = {(503, "overloaded"), (503, "no_worker_available"), (429, "rate_limit_exceeded")}
# The worker's upstream connections: the mock is one Python process, and must not be what breaks.
WORKER_CONCURRENCY = 500
# RSS after the load may exceed the warmed-up baseline by this much. CPython keeps freed memory in
# its arenas and the C allocator keeps freed pages mapped, so RSS never falls back exactly; a leak
# of a few KiB per request would show as tens of MiB after 5,500 requests, far past fragmentation.
RSS_MARGIN_MIB = 48
SETTLE_S = 3.0


@pytest.fixture
def gw(tmp_path, redis_url, openrouter_mock, process_upstream):
    gateway = RunningGateway(tmp_path / "gw", redis_url, f"rload-{uuid.uuid4().hex[:8]}:", openrouter_mock.url,
                             process_upstream,
                             # One user drives all the load: the whole pool is theirs to fill.
                             f"worker_concurrency = {WORKER_CONCURRENCY}\nqueue_user_share = 1",
                             worker_providers=("local",))
    gateway.start()
    yield gateway
    gateway.stop()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    body = {"model": "mock-local", "stream": True,
            "messages": [{"role": "user", "content": f"#chunks={STREAM_CHUNKS} #delay={STREAM_DELAY_MS}"}]}
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            return str(response.status)
        chunks = 0
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return "ok" if chunks == STREAM_CHUNKS else f"{chunks} of {STREAM_CHUNKS} chunks"
            event = json.loads(payload)
            if "error" in event:
                return f"error event: {event['error'].get('code')}"
            chunks += sum(1 for c in event.get("choices", []) if c.get("delta", {}).get("content"))
    return "cut without [DONE]"


async def one_request(session: aiohttp.ClientSession, url: str, headers: dict[str, str], i: int) -> str:
    body = {"model": "mock-local", "messages": [{"role": "user", "content": f"burst {i}"}]}
    async with session.post(url, json=body, headers=headers) as response:
        payload = await response.json(content_type=None)
        if response.status == 200:
            return "ok" if payload["choices"][0]["message"]["content"].endswith(f"burst {i}") else "wrong answer"
        return f"{response.status} {payload.get('error', {}).get('code')}"


def test_500_streams_and_a_burst_of_5000_requests(gw) -> None:
    url = f"{gw.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {gw.token('user_load')}"}
    pids = {"api": gw.api.pid, "worker": gw.worker.pid}
    allowed = {"ok", *(f"{status} {code}" for status, code in BACKPRESSURE)}

    async def drive(streams: int, requests: int) -> Counter:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            jobs = [one_stream(session, url, headers) for _ in range(streams)]
            jobs += [one_request(session, url, headers, i) for i in range(requests)]
            results = await asyncio.gather(*jobs, return_exceptions=True)
        return Counter(r if isinstance(r, str) else f"{type(r).__name__}: {r}" for r in results)

    def round_of_load() -> tuple[Counter, Counter, dict[str, float]]:
        started = time.monotonic()
        streams = asyncio.run(asyncio.wait_for(drive(STREAMS, 0), LOAD_TIMEOUT))
        print(f"{STREAMS} streams: {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        burst = asyncio.run(asyncio.wait_for(drive(0, BURST), LOAD_TIMEOUT))
        print(f"{BURST} requests: {time.monotonic() - started:.1f} s")
        loaded = {name: rss_mib(pid) for name, pid in pids.items()}
        assert set(streams) == {"ok"}, f"{streams}\n{gw.logs()}"
        assert set(burst) <= allowed and burst["ok"] > 0, f"{burst}\n{gw.logs()}"
        gc.collect()
        time.sleep(SETTLE_S)
        return streams, burst, loaded

    cold = {name: rss_mib(pid) for name, pid in pids.items()}
    # The first round at full size grows what is meant to stay: the Redis pool (up to 512
    # connections), the upstream pool, uvicorn's and the allocator's buffers. Its level is the baseline.
    round_of_load()
    baseline = {name: rss_mib(pid) for name, pid in pids.items()}
    _, burst, loaded = round_of_load()
    after = {name: rss_mib(pid) for name, pid in pids.items()}
    report = {name: f"cold {cold[name]:.0f}, baseline {baseline[name]:.0f}, loaded {loaded[name]:.0f}, "
                    f"after {after[name]:.0f} MiB" for name in pids}
    print(f"RSS: {report}; burst: {dict(burst)}")
    for name in pids:
        assert after[name] <= baseline[name] + RSS_MARGIN_MIB, report
