#!/usr/bin/env python3
"""What our queue hop costs: enqueue → job start, measured against a real Redis.

The producer (this process) builds a ``shared.wire.Job`` and hands it to
``shared.queue.Enqueuer`` (the front door's path), stamping ``Job.enqueued_at`` just before the call. A worker in a
separate process (its own event loop, as in production) records ``time.time()`` the moment
its job function starts and reports ``start - enqueued_at`` back on a Redis list.

Workers measured:

  gateway  ``workers.worker.run_worker_process``, the entry point of ``reactor worker``
           (WakeableWorker, its pub/sub listener and heartbeat, poll_delay 0.5 s), with the
           job body (``JobRunner``) replaced by a recorder: the queue path is production's,
           only the provider call is missing.
  stock    a plain ``arq.worker.Worker`` on the same queue with arq's defaults (poll_delay
           0.5 s, max_jobs 10, no wake-up), for comparison.

Cases: ``seq`` sends one job at a time (the next after the previous one started); ``burst``
sends 50 at once (``asyncio.gather`` of 50 ``Enqueuer.enqueue`` calls) and waits until all started.
Arrivals are spread over a random gap so they do not line up with a poll timer.

Idle load: with the worker idle, Redis's ``total_commands_processed`` is read before and
after a window (our own INFO call is subtracted). That counter covers every client of the
Redis, so the worker's own commands are also counted on a MONITOR feed, by our key prefix.

Prints a JSON object (also saved under bench/results/) and a Markdown table.
Every Redis key this run creates is deleted on exit; the worker's process group is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from shared.keys import Keys
from shared.queue import Enqueuer, job_deserializer, job_serializer
from shared.wire import Job, Target, job_decoder

HERE = Path(__file__).resolve().parent
PROVIDER = "openrouter"
TARGET = Target("gpt-4o-mini", PROVIDER, "openai/gpt-4o-mini")
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'
# The job key outlives any wait below; the worker skips nothing.
JOB_EXPIRES_S = 30.0


def started_key(keys: Keys) -> str:
    """The list a worker pushes ``(request_id, enqueued_at, started_at)`` onto."""
    return f"{keys.prefix}bench:started"


def ready_key(keys: Keys) -> str:
    return f"{keys.prefix}bench:ready"


# ------------------------------------------------------------------------------------------
# The worker side (runs in a child process: ``queue_latency.py worker ...``)


async def _report_start(redis: Redis, keys: Keys, payload: bytes) -> None:
    started = time.time()
    job = job_decoder.decode(payload)
    await redis.rpush(started_key(keys), msgspec.msgpack.encode((job.request_id, job.enqueued_at, started)))


def _gateway_settings(redis_url: str, prefix: str, poll_delay: float):
    from shared.config import load_settings

    folder = tempfile.mkdtemp(prefix="reactor-ql-")
    path = Path(folder) / "reactor.toml"
    path.write_text(
        "[gateway]\n"
        f'data_dir = "{folder}/data"\n'
        f'key_prefix = "{prefix}"\n'
        f"poll_delay = {poll_delay}\n"
        "[gateway.providers.openrouter]\n"
        'base_url = "http://127.0.0.1:9/v1"\n'
    )
    env = {"REDIS_URL": redis_url, "OPENROUTER_API_KEY": "sk-unused"}
    return load_settings(path, env)


async def run_gateway_worker(redis_url: str, prefix: str, poll_delay: float) -> None:
    """``reactor worker`` as it ships, with the job body swapped for a start recorder."""
    import workers.worker as worker_module
    from shared.overlay import FixedRegistry, registry_for

    keys = Keys(prefix)

    class StartRecorder:
        # Built by WorkerProcess.run in JobRunner's place: JobRunner(settings, registry, redis, providers, usage,
        # replies).
        def __init__(self, settings, registry, redis, *args, **kwargs) -> None:
            self.redis = redis

        def cancel(self, request_id: str) -> None:
            pass

        async def run(self, payload: bytes) -> None:
            await _report_start(self.redis, keys, payload)

    assert hasattr(worker_module, "JobRunner"), "workers.worker no longer builds a JobRunner; update the bench"
    worker_module.JobRunner = StartRecorder
    settings = _gateway_settings(redis_url, prefix, poll_delay)
    registry = await registry_for(settings)
    await worker_module.run_worker_process(settings, FixedRegistry(registry), [PROVIDER])


async def run_stock_worker(redis_url: str, prefix: str, poll_delay: float) -> None:
    """A plain arq worker: arq's defaults, except our queue, serializer and no kept results."""
    from arq.connections import RedisSettings, create_pool
    from arq.worker import Worker, func

    keys = Keys(prefix)
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=job_serializer,
                             job_deserializer=job_deserializer)

    async def chat(ctx: dict, payload: bytes) -> None:
        await _report_start(ctx["redis"], keys, payload)

    worker = Worker(functions=[func(chat, name="chat")], queue_name=keys.queue(PROVIDER), redis_pool=pool,
                    poll_delay=poll_delay, keep_result=0, job_serializer=job_serializer,
                    job_deserializer=job_deserializer, handle_signals=False, log_results=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await pool.set(ready_key(keys), b"1", ex=600)
    main = asyncio.create_task(worker.main())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    await worker.close()


def worker_entry(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="queue_latency.py worker")
    p.add_argument("kind", choices=["gateway", "stock"])
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--poll-delay", type=float, default=0.5)
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = run_gateway_worker if a.kind == "gateway" else run_stock_worker
    _run(runner(a.redis_url, a.prefix, a.poll_delay))
    return 0


def _run(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ------------------------------------------------------------------------------------------
# The producer side


def pct(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile, as loadgen.py computes it."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def summary_ms(latencies_s: list[float], lost: int) -> dict:
    s = sorted(v * 1000.0 for v in latencies_s)
    out = {"n": len(s), "lost": lost}
    if s:
        out.update({"p50": round(pct(s, 50), 3), "p90": round(pct(s, 90), 3), "p99": round(pct(s, 99), 3),
                    "mean": round(sum(s) / len(s), 3), "min": round(s[0], 3), "max": round(s[-1], 3)})
    return out


class WorkerChild:
    """One worker process in its own session, stopped by process group."""

    def __init__(self, kind: str, redis_url: str, prefix: str, poll_delay: float, log_path: Path) -> None:
        self.kind = kind
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", kind, "--redis-url", redis_url,
               "--prefix", prefix, "--poll-delay", str(poll_delay)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


async def wait_ready(redis: Redis, keys: Keys, child: WorkerChild, timeout: float = 30.0) -> float:
    """Until the worker is subscribed (gateway: its heartbeat) or about to poll (stock)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not child.alive():
            raise RuntimeError(f"{child.kind} worker exited (rc={child.proc.returncode}); see {child.log_path}")
        if child.kind == "gateway":
            # The heartbeat starts after the worker subscribed to its notify channel.
            found = await redis.zcard(keys.workers(PROVIDER))
        else:
            found = await redis.exists(ready_key(keys))
        if found:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.kind} worker not ready after {timeout:.0f}s; see {child.log_path}")


class Producer:
    """Enqueues jobs the way the front door does and collects their start latencies."""

    def __init__(self, redis: Redis, keys: Keys, run_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.run_id = run_id
        self._n = 0
        self.enqueuer = Enqueuer(redis, keys)

    def job(self) -> Job:
        self._n += 1
        return Job(request_id=f"{self.run_id}-{self._n}", kind="chat", reply_channel=self.keys.reply_channel("bench"),
                   user_id="bench", targets=[TARGET], alias=None, body=BODY, stream=True)

    async def send(self, job: Job) -> None:
        job.enqueued_at = time.time()
        # No admission limit here: the bench measures the queue hop, not backpressure.
        assert await self.enqueuer.enqueue(job, PROVIDER, JOB_EXPIRES_S, limit=2**31)

    async def collect(self, ids: set[str], timeout: float) -> tuple[list[tuple[float, float]], int]:
        """``(enqueued_at, started_at)`` of ``ids`` as they arrive; the rest count as lost after ``timeout``."""
        got: list[tuple[float, float]] = []
        deadline = time.monotonic() + timeout
        while ids and (left := deadline - time.monotonic()) > 0:
            item = await self.redis.blpop([started_key(self.keys)], timeout=max(0.01, min(left, 1.0)))
            if item is None:
                continue
            request_id, enqueued_at, started_at = msgspec.msgpack.decode(item[1])
            if request_id in ids:
                ids.discard(request_id)
                got.append((enqueued_at, started_at))
        return got, len(ids)

    async def sequential(self, count: int, gap_s: float, timeout: float) -> dict:
        lat: list[float] = []
        lost = 0
        for _ in range(count):
            await asyncio.sleep(random.uniform(0, gap_s))
            job = self.job()
            await self.send(job)
            got, missing = await self.collect({job.request_id}, timeout)
            lat += [start - enq for enq, start in got]
            lost += missing
        return summary_ms(lat, lost)

    async def bursts(self, count: int, size: int, gap_s: float, timeout: float) -> dict:
        lat: list[float] = []
        spacing: list[float] = []
        lost = 0
        for _ in range(count):
            await asyncio.sleep(random.uniform(0, gap_s))
            jobs = [self.job() for _ in range(size)]
            await asyncio.gather(*(self.send(job) for job in jobs))
            got, missing = await self.collect({job.request_id for job in jobs}, timeout)
            lat += [start - enq for enq, start in got]
            lost += missing
            starts = sorted(start for _, start in got)
            if len(starts) > 1:
                spacing.append((starts[-1] - starts[0]) / (len(starts) - 1))
        out = summary_ms(lat, lost)
        # How fast the worker starts queued jobs one after another: arq starts them one by one.
        out["start_spacing_ms"] = round(1000.0 * sum(spacing) / len(spacing), 3) if spacing else None
        return out


async def _commands_processed(redis: Redis) -> tuple[int, dict[str, int]]:
    stats = await redis.info("stats")
    cmdstats = await redis.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in cmdstats.items() if isinstance(v, dict)}
    return int(stats["total_commands_processed"]), calls


async def idle_load(redis: Redis, keys: Keys, window_s: float) -> dict:
    """Commands per second while the worker is idle: Redis-wide, and the worker's own."""
    ours: dict[str, int] = {}
    monitor_ready = asyncio.Event()

    async def watch() -> None:
        async with redis.monitor() as m:
            monitor_ready.set()
            async for cmd in m.listen():
                if keys.prefix in cmd.get("command", ""):
                    name = cmd["command"].split(" ", 1)[0].lower()
                    ours[name] = ours.get(name, 0) + 1

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(monitor_ready.wait(), 5)
    await asyncio.sleep(0.2)
    ours.clear()
    total0, calls0 = await _commands_processed(redis)
    t0 = time.monotonic()
    await asyncio.sleep(window_s)
    total1, calls1 = await _commands_processed(redis)
    elapsed = time.monotonic() - t0
    # Read before the second INFO calls could show up: the window is the sleep.
    ours_window = dict(ours)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    # The counter is bumped after a command runs: the window holds our first two INFO calls
    # (stats, commandstats) but not the last two.
    redis_wide = total1 - total0 - 2
    by_cmd = {c: calls1.get(c, 0) - calls0.get(c, 0) for c in calls1}
    by_cmd["info"] = by_cmd.get("info", 0) - 2
    return {
        "window_s": round(elapsed, 2),
        "worker_cmds_per_s": round(sum(ours_window.values()) / elapsed, 2),
        "worker_cmds": ours_window,
        "redis_wide_cmds_per_s": round(redis_wide / elapsed, 2),
        "redis_wide_top": dict(sorted(((c, n) for c, n in by_cmd.items() if n > 0), key=lambda kv: -kv[1])[:6]),
    }


async def delete_prefixed(redis: Redis, prefix: str, run_id: str) -> int:
    deleted = 0
    for pattern in (f"{prefix}*", f"arq:*{run_id}*"):
        batch = [k async for k in redis.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(batch), 500):
            deleted += await redis.delete(*batch[i:i + 500])
    return deleted


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def measure(a: argparse.Namespace, run_dir: Path) -> dict:
    run_id = "benchql" + uuid.uuid4().hex[:8]
    prefix = f"{run_id}:"
    keys = Keys(prefix)
    redis = Redis.from_url(a.redis_url, max_connections=512)
    results: dict = {"run_id": run_id, "workers": {}}
    child: WorkerChild | None = None
    # SIGTERM/SIGHUP cancel the run, so the finally below still stops the worker and deletes keys.
    main_task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    try:
        plan = [("gateway", a.poll_delay, a.seq, a.bursts)]
        if a.stock_seq or a.stock_bursts:
            plan.append(("stock", a.stock_poll_delay, a.stock_seq, a.stock_bursts))
        for kind, poll_delay, n_seq, n_bursts in plan:
            producer = Producer(redis, keys, run_id)
            child = WorkerChild(kind, a.redis_url, prefix, poll_delay, run_dir / f"worker-{kind}.log")
            row: dict = {"poll_delay_s": poll_delay, "loadavg_before": loadavg()}
            row["ready_s"] = round(await wait_ready(redis, keys, child), 2)
            # Warm both sides (connections, imports) before anything is recorded.
            await producer.sequential(5, 0.01, timeout=poll_delay + 5)
            await asyncio.sleep(1.0)
            row["idle"] = await idle_load(redis, keys, a.idle_window)
            # Phase arrivals uniformly against a poll timer: a wake-up worker does not care,
            # a polling one would otherwise always be caught just after (or before) a poll.
            gap = max(a.gap_ms / 1000.0, poll_delay if kind == "stock" else 0.0)
            timeout = poll_delay + a.job_timeout
            if n_seq:
                row["seq"] = await producer.sequential(n_seq, gap, timeout)
                print(f"  {kind:8s} seq x{n_seq}: {row['seq']}", file=sys.stderr, flush=True)
            if n_bursts:
                row["burst"] = await producer.bursts(n_bursts, a.burst_size, gap, timeout)
                row["burst"]["size"] = a.burst_size
                print(f"  {kind:8s} {n_bursts} bursts x{a.burst_size}: {row['burst']}", file=sys.stderr, flush=True)
            row["loadavg_after"] = loadavg()
            results["workers"][kind] = row
            child.stop()
            child = None
            await redis.delete(started_key(keys))
    finally:
        if child is not None:
            child.stop()
        results["keys_deleted"] = await delete_prefixed(redis, prefix, run_id)
        await redis.aclose()
    return results


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def table(results: dict) -> str:
    hdr = ["worker", "poll_delay", "seq p50 / p99 ms (n)", "50-at-once p50 / p99 ms (n)", "max ms seq / burst",
           "ms between starts in a burst", "idle cmds/s (worker)", "idle cmds/s (Redis-wide)"]
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join("---" for _ in hdr) + "|"]
    names = {"gateway": "gateway (WakeableWorker + wake-up)", "stock": "stock arq Worker"}
    for kind, r in results["workers"].items():
        seq, burst = r.get("seq") or {}, r.get("burst") or {}
        cell = lambda s: (f"{fmt(s.get('p50'))} / {fmt(s.get('p99'))} ({s.get('n')}"  # noqa: E731
                          + (f", {s['lost']} lost" if s.get("lost") else "") + ")") if s else "-"
        out.append("| " + " | ".join([
            names.get(kind, kind), f"{r['poll_delay_s']} s", cell(seq), cell(burst),
            f"{fmt(seq.get('max'))} / {fmt(burst.get('max'))}", fmt(burst.get("start_spacing_ms")),
            fmt(r["idle"]["worker_cmds_per_s"]), fmt(r["idle"]["redis_wide_cmds_per_s"]),
        ]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_entry(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--seq", type=int, default=300, help="sequential jobs for the gateway worker")
    p.add_argument("--bursts", type=int, default=20, help="bursts for the gateway worker")
    p.add_argument("--burst-size", type=int, default=50)
    p.add_argument("--poll-delay", type=float, default=0.5, help="the gateway worker's poll_delay")
    p.add_argument("--stock-seq", type=int, default=20, help="sequential jobs for the stock worker (0 skips)")
    p.add_argument("--stock-bursts", type=int, default=6, help="bursts for the stock worker (0 skips)")
    p.add_argument("--stock-poll-delay", type=float, default=0.5)
    p.add_argument("--gap-ms", type=float, default=20.0,
                   help="random pause before each job/burst, uniform in [0, gap] (stock: at least poll_delay)")
    p.add_argument("--idle-window", type=float, default=5.0, help="seconds of idle Redis load measured")
    p.add_argument("--job-timeout", type=float, default=10.0, help="seconds after which a job counts as lost")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    a = p.parse_args(argv)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"queue_latency-{stamp}-"))
    meta = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "loadavg_before": loadavg(), "logs": str(run_dir),
            "args": {k: v for k, v in vars(a).items() if k != "out_dir"}}
    print(f"# queue_latency {meta['date']}  loadavg before: {meta['loadavg_before']}  logs: {run_dir}",
          file=sys.stderr, flush=True)
    results = _run(measure(a, run_dir))
    meta["loadavg_after"] = loadavg()
    doc = {"meta": meta, **results}
    md = (f"date {meta['date']} | {meta['cpus']} CPUs | loadavg before {meta['loadavg_before']} "
          f"after {meta['loadavg_after']}\n\n{table(results)}\n")
    print(json.dumps(doc, indent=1))
    print()
    print(md)
    base = out_dir / f"queue_latency-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    base.with_suffix(".md").write_text(md)
    print(f"saved {base}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
