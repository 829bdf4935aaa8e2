#!/usr/bin/env python3
"""The shared load generator's requests and measurement, with a marked measured window.

Each request is the shared generator's (``../shared/bench/loadgen.py``: it imports ``one``,
``Stats`` and ``summary``), plus embeddings, which the shared generator lacks: ``POST
/embeddings`` driven the same way (closed loop, one keep-alive pool of C connections, a body
checked for ``"data"``).

What differs is the window. A case is a warm-up at the same concurrency, then the measured window,
which ends at ``--duration`` seconds or at ``--count`` completed requests, whichever comes first.
A request counts when it completes inside the window (requests in flight at its start or end are
not counted), and the driver prints ``#measure-start`` and ``#measure-end`` on stdout the moment
the window opens and closes, so the caller can read each process's CPU over exactly the window
whose requests are counted. After the window the requests in flight finish (bounded by the
request timeout) and are dropped, then one JSON object is printed, as the shared generator's.

``--spread SECONDS`` (streams) starts slot i at i × SECONDS / C instead of all at once, so
arrivals are steady rather than lockstep waves, and the warm-up lasts at least SECONDS plus one
stream (``--stream-s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str((Path(__file__).resolve().parent.parent / ".." / "shared" / "bench").resolve()))
import loadgen  # noqa: E402  (the shared generator: same request, same measurement)

EMBED_MODEL = "text-embedding-3-small"
EMBED_INPUT = "The quick brown fox jumps over the lazy dog."
# The window closes on the hour even if some request is stuck; then this much more for stragglers.
DRAIN_GRACE_S = 5.0


async def one_embedding(session, url, body, headers, st, timeout) -> None:
    """One embeddings request, recorded like the shared generator's non-stream request."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as r:
            data = await r.read()
            if r.status != 200:
                st.err("HTTP %d: %s" % (r.status, data[:150].decode("utf-8", "replace")))
                return
            if not data.startswith(b"{") or b'"data"' not in data:
                st.err("bad body: %r" % data[:100])
                return
            st.lat.append((time.perf_counter() - t0) * 1000.0)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - count every failure
        st.err("%s: %s" % (type(e).__name__, e))


def merge(into: loadgen.Stats, one: loadgen.Stats) -> None:
    into.lat += one.lat
    into.ttft += one.ttft
    into.chunks += one.chunks
    into.errors += one.errors
    into.incomplete += one.incomplete
    for k, v in one.err_samples.items():
        into.err_samples[k] = into.err_samples.get(k, 0) + v


def mark(what: str) -> None:
    sys.stdout.write(f"#measure-{what} {time.time():.6f}\n")
    sys.stdout.flush()


async def run(a: argparse.Namespace) -> dict:
    embeddings = a.mode == "embeddings"
    stream = a.mode == "stream"
    headers = {"Content-Type": "application/json"}
    if a.token:
        headers["Authorization"] = "Bearer " + a.token
    if embeddings:
        url = a.url.rstrip("/") + "/embeddings"
        body = json.dumps({"model": a.model or EMBED_MODEL, "input": EMBED_INPUT,
                           "encoding_format": "base64"}).encode()
    else:
        url = a.url.rstrip("/") + "/chat/completions"
        req = {"model": a.model or "gpt-4o-mini", "max_tokens": a.max_tokens,
               "messages": [{"role": "user", "content": a.prompt}]}
        if stream:
            req["stream"] = True
            req["stream_options"] = {"include_usage": True}
        body = json.dumps(req).encode()
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    connector = aiohttp.TCPConnector(limit=a.concurrency, limit_per_host=a.concurrency)
    st = loadgen.Stats()
    t0 = time.perf_counter()
    warm = max(a.warmup, a.spread + a.stream_s) if a.spread else a.warmup
    t_measure = t0 + warm
    t_end = t_measure + a.duration
    window = {"open": False, "closed": False, "start": None, "end": None}
    done_in_window = 0

    def close_window() -> None:
        if not window["closed"]:
            window["closed"], window["end"] = True, time.perf_counter()
            mark("end")

    async def opener() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        window["open"], window["start"] = True, time.perf_counter()
        mark("start")
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        close_window()

    async def slot(i: int) -> None:
        nonlocal done_in_window
        if a.spread:
            await asyncio.sleep(i * a.spread / a.concurrency)
        while not window["closed"]:
            s = loadgen.Stats()
            if embeddings:
                await one_embedding(session, url, body, headers, s, timeout)
            else:
                await loadgen.one(session, url, body, headers, stream, s, True, timeout)
            if window["open"] and not window["closed"]:
                merge(st, s)
                done_in_window += 1
                if a.count and done_in_window >= a.count:
                    close_window()

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        clock = asyncio.ensure_future(opener())
        tasks = [asyncio.ensure_future(slot(i)) for i in range(a.concurrency)]
        hard = (t_end - time.perf_counter()) + a.timeout + DRAIN_GRACE_S
        _, pending = await asyncio.wait(tasks, timeout=hard)
        for task in (*pending, clock):
            task.cancel()
        await asyncio.gather(*pending, clock, return_exceptions=True)
        if pending:
            st.err("hard deadline hit: %d slots cancelled" % len(pending))
    close_window()
    elapsed = (window["end"] - window["start"]) if window["start"] else 0.0
    out = {"label": a.label, "url": url, "mode": a.mode, "stream": stream, "concurrency": a.concurrency,
           "spread_s": a.spread, "warmup_s": round(warm, 3), "duration_s": round(elapsed, 3),
           "ok": len(st.lat), "errors": st.errors, "completed_in_window": done_in_window,
           "rps": round(len(st.lat) / elapsed, 2) if elapsed > 0 else 0.0,
           "latency_ms": loadgen.summary(st.lat)}
    if stream:
        out["ttft_ms"] = loadgen.summary(st.ttft)
        out["chunks"] = ({"mean": round(sum(st.chunks) / len(st.chunks), 2), "min": min(st.chunks),
                          "max": max(st.chunks)} if st.chunks else None)
        out["incomplete"] = st.incomplete
    if st.err_samples:
        out["error_samples"] = dict(sorted(st.err_samples.items(), key=lambda kv: -kv[1])[:5])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:4000/v1")
    p.add_argument("--token", default="")
    p.add_argument("--model", default="")
    p.add_argument("--mode", choices=("chat", "stream", "embeddings"), default="chat")
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds at most")
    p.add_argument("--count", "-n", type=int, default=0, help="measured requests at most (0: duration only)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--spread", type=float, default=0.0, help="streams: spread the slots' first starts (s)")
    p.add_argument("--stream-s", type=float, default=0.0, help="about how long one stream lasts (s)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Say hello in one short sentence.")
    p.add_argument("--label", default="")
    a = p.parse_args()
    if not 0 < a.duration <= 3600:
        p.error("--duration must be in (0, 3600]")
    a.concurrency = max(1, a.concurrency)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(a))), flush=True)


if __name__ == "__main__":
    main()
