#!/usr/bin/env python3
"""Which HTTP client should a worker use for upstream streams? Measured, not guessed.

Starts ``../shared/bench/mock_upstream.py`` with spaced chunks (the shape of real LLM traffic:
a token every ``--chunk-delay-ms``), then, for each candidate client in a process of its own,
holds C concurrent streams in a closed loop for ``--duration`` seconds and reads them the way
a provider does: line by line, each ``data:`` event decoded as JSON. Reported per candidate
and concurrency: streams/s, chunks/s, the client process's CPU per chunk (user + system, over
the measured window only), and stream latency and time to first chunk p50/p99.

Candidates (``--clients``):

- ``httpx``: httpx 0.28 on httpcore 1.0 (what the worker used first).
- ``httpx2``: httpx2, a maintained fork with its own connection pool (httpcore2).
- ``httpx-aiohttp``: the httpx API over an aiohttp transport (``httpx_aiohttp``): httpx's
  ``Auth`` flow and response API, aiohttp's C HTTP parser and connection pool.
- ``aiohttp``: aiohttp alone, reading ``response.content`` line by line.

    bench/run.sh --clients                                # 32, 500, 1000 streams, all clients
    bench/run.sh --clients --conc 500 --clients-list aiohttp,httpx-aiohttp --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_BENCH = (HERE.parent / ".." / "shared" / "bench").resolve()
CLIENTS = ("httpx", "httpx2", "httpx-aiohttp", "aiohttp")
BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": "hi"}]}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-mock-upstream"}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)


# ------------------------------------------------------------------------------------------
# One candidate, in its own process


def _httpx_factory(module, conc: int, transport=None):
    limits = module.Limits(max_connections=conc * 2, max_keepalive_connections=conc * 2)
    timeout = module.Timeout(30.0)
    return module.AsyncClient(limits=limits, timeout=timeout, transport=transport)


async def _read_httpx(client, url: str, on_chunk) -> None:
    async with client.stream("POST", url, content=BODY, headers=HEADERS) as response:
        response.raise_for_status()
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload == "[DONE]":
                    async for _ in lines:  # to the end, so the connection is reused
                        pass
                    return
                if payload:
                    on_chunk(payload)


async def _read_aiohttp(session, url: str, on_chunk) -> None:
    async with session.post(url, data=BODY, headers=HEADERS) as response:
        response.raise_for_status()
        async for raw in response.content:
            if raw.startswith(b"data:"):
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    return
                if payload:
                    on_chunk(payload)


async def run_candidate(name: str, url: str, conc: int, duration: float, warmup: float) -> dict:
    import msgspec

    decode = msgspec.json.decode
    if name == "aiohttp":
        import aiohttp

        client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc * 2),
                                       timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False)
        read = _read_aiohttp
    elif name == "httpx-aiohttp":
        import aiohttp
        import httpx
        from httpx_aiohttp import AiohttpTransport

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc * 2),
                                        timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False)
        client = _httpx_factory(httpx, conc, AiohttpTransport(client=session))
        read = _read_httpx
    else:
        module = __import__(name)
        client = _httpx_factory(module, conc)
        read = _read_httpx

    stats = {"chunks": 0, "ok": 0, "errors": 0, "lat": [], "ttft": [], "samples": {}}
    recording = False

    async def one() -> None:
        t0 = time.perf_counter()
        first: list[float] = []

        def on_chunk(payload) -> None:
            decode(payload)
            if not first:
                first.append(time.perf_counter())
            if recording:
                stats["chunks"] += 1

        try:
            await read(client, url, on_chunk)
        except Exception as exc:  # counted, not raised: the run goes on
            if recording:
                stats["errors"] += 1
                key = f"{type(exc).__name__}: {exc}"[:120]
                stats["samples"][key] = stats["samples"].get(key, 0) + 1
            return
        if recording:
            stats["ok"] += 1
            stats["lat"].append((time.perf_counter() - t0) * 1000)
            if first:
                stats["ttft"].append((first[0] - t0) * 1000)

    end = time.monotonic() + warmup + duration

    async def loop_forever() -> None:
        while time.monotonic() < end:
            await one()

    tasks = [asyncio.create_task(loop_forever()) for _ in range(conc)]
    await asyncio.sleep(warmup)
    recording = True
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.sleep(duration)
    cpu1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    recording = False
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    close = getattr(client, "aclose", None) or client.close
    await close()
    cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    elapsed = t1 - t0
    return {
        "client": name, "concurrency": conc, "streams_per_s": round(stats["ok"] / elapsed, 1),
        "chunks_per_s": round(stats["chunks"] / elapsed, 1), "errors": stats["errors"],
        "cpu_cores": round(cpu_s / elapsed, 3),
        "cpu_us_per_chunk": round(cpu_s / stats["chunks"] * 1e6, 1) if stats["chunks"] else None,
        "latency_ms": {"p50": pct(stats["lat"], 50), "p99": pct(stats["lat"], 99)},
        "ttft_ms": {"p50": pct(stats["ttft"], 50), "p99": pct(stats["ttft"], 99)},
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "error_samples": stats["samples"],
    }


def child_main(argv: list[str]) -> None:
    name, url, conc, duration, warmup = argv[0], argv[1], int(argv[2]), float(argv[3]), float(argv[4])
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run_candidate(name, url, conc, duration, warmup))))


# ------------------------------------------------------------------------------------------
# The driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients-list", default=",".join(CLIENTS))
    p.add_argument("--conc", default="32,500,1000", help="comma-separated concurrencies")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-delay-ms", type=float, default=100.0)
    p.add_argument("--out", default=str(HERE / "results" / f"upstream_clients-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    a = p.parse_args()

    port = free_port()
    mock = subprocess.Popen([sys.executable, str(SHARED_BENCH / "mock_upstream.py"), "--port", str(port),
                             "--chunks", str(a.chunks), "--chunk-delay-ms", str(a.chunk_delay_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the mock upstream did not start")
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(f"{'client':<14} {'conc':>5} {'streams/s':>9} {'chunks/s':>9} {'err':>5} {'cores':>6} "
              f"{'µs/chunk':>8} {'p50 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'ttft99':>7} {'RSS MB':>7}")
        for conc in (int(c) for c in a.conc.split(",")):
            for name in a.clients_list.split(","):
                cp = subprocess.run([sys.executable, __file__, "--child", name, url, str(conc), str(a.duration),
                                     str(a.warmup)], capture_output=True, text=True,
                                    timeout=a.duration + a.warmup + 120)
                if cp.returncode != 0:
                    print(f"{name} c={conc} failed: {cp.stderr[-400:]}")
                    continue
                r = json.loads(cp.stdout.strip().splitlines()[-1])
                r["chunk_delay_ms"] = a.chunk_delay_ms
                results.append(r)
                print(f"{name:<14} {conc:>5} {r['streams_per_s']:>9} {r['chunks_per_s']:>9} {r['errors']:>5} "
                      f"{r['cpu_cores']:>6} {r['cpu_us_per_chunk']!s:>8} {r['latency_ms']['p50']!s:>8} "
                      f"{r['latency_ms']['p99']!s:>8} {r['ttft_ms']['p50']!s:>7} {r['ttft_ms']['p99']!s:>7} "
                      f"{r['rss_mb']:>7}", flush=True)
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(10)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"results: {a.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
