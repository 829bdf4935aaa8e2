#!/usr/bin/env python3
"""The shared load generator with its streams' starts spread out: steady arrivals, not waves.

``../shared/bench/loadgen.py`` starts all C streams at once, and since every stream of the mock
lasts the same, they stay in lockstep: requests arrive in waves of C. Real clients do not
synchronise like that. This runs the same requests, measured the same way (it imports the shared
module's ``one`` and ``Stats``), but stream slot i starts i × ``--spread`` / C seconds in, so
arrivals are even; the warm-up lasts at least ``--spread`` plus one stream, so the measured
window sees the steady state. Same options and the same JSON out as the shared generator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str((Path(__file__).resolve().parent.parent / ".." / "shared" / "bench").resolve()))
import loadgen  # noqa: E402  (the shared generator: same request, same measurement)


async def run(a: argparse.Namespace) -> dict:
    url = a.url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + a.token}
    body = json.dumps({"model": a.model, "max_tokens": a.max_tokens, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": a.prompt}]}).encode()
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    connector = aiohttp.TCPConnector(limit=a.concurrency, limit_per_host=a.concurrency)
    warm, st = loadgen.Stats(), loadgen.Stats()
    t0 = time.perf_counter()
    t_measure = t0 + max(a.warmup, a.spread + a.stream_s)
    t_end = t_measure + a.duration

    async def slot(i: int) -> None:
        await asyncio.sleep(i * a.spread / a.concurrency)
        while time.perf_counter() < t_end:
            started = time.perf_counter()
            record = started >= t_measure
            await loadgen.one(session, url, body, headers, True, st if record else warm, record, timeout)

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        tasks = [asyncio.ensure_future(slot(i)) for i in range(a.concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=(t_end - t0) + a.timeout + 5)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            st.err("hard deadline hit: %d slots cancelled" % len(pending))
    elapsed = a.duration
    out = {"label": a.label, "url": url, "model": a.model, "stream": True, "concurrency": a.concurrency,
           "spread_s": a.spread, "duration_s": elapsed, "ok": len(st.lat), "errors": st.errors,
           "rps": round(len(st.lat) / elapsed, 2), "latency_ms": loadgen.summary(st.lat),
           "ttft_ms": loadgen.summary(st.ttft), "incomplete": st.incomplete,
           "chunks": ({"mean": round(sum(st.chunks) / len(st.chunks), 2), "min": min(st.chunks),
                       "max": max(st.chunks)} if st.chunks else None)}
    if st.err_samples:
        out["error_samples"] = dict(sorted(st.err_samples.items(), key=lambda kv: -kv[1])[:5])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--stream", action="store_true", help="accepted for the shared generator's command line; always on")
    p.add_argument("--concurrency", "-c", type=int, default=100)
    p.add_argument("--duration", "-d", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--spread", type=float, default=2.0, help="seconds over which the slots' first starts spread")
    p.add_argument("--stream-s", type=float, default=2.5, help="about how long one stream lasts")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Say hello in one short sentence.")
    p.add_argument("--label", default="")
    a = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(a))))


if __name__ == "__main__":
    main()
