"""Prometheus metrics of the front door and of the workers.

Each side counts what only it sees. The front door sees the client: requests by surface, model,
provider, HTTP status and error code; the time to first token and the latency the client got; how
long jobs waited for a worker; requests in flight. When scraped it reads the fleet from Redis (live
workers, job slots, queued and running jobs per provider pool), so no request pays for that. A
worker sees the upstream: jobs started and finished, attempts, fallbacks, upstream errors, tokens
and cost (a non-streamed answer's usage never reaches the front door), and each route's own time
to first token.

Label values are the gateway's own (registry model ids, provider names, surfaces, error codes),
never a string a client sent, so no client can multiply the series. Error codes an upstream passes
through are capped by :class:`BoundedLabel`. A metric's label children are looked up once and kept
(:class:`Children`): an observation on the request path is a dict hit and a locked add.

Each side has a :class:`~prometheus_client.CollectorRegistry` of its own, nothing global. When
several processes serve one port (uvicorn's or gunicorn's ``--workers``), prometheus_client's
multiprocess mode adds them up: give every one of them ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory, emptied before they start) and hand that directory to :class:`GatewayMetrics`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .fleet import alive_since
from .keys import Keys

# Seconds, for whole requests: an embedding in milliseconds up to a long answer in minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Seconds to the first token: upstreams take 0.1 s to a few seconds, the gateway adds milliseconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds from enqueue to a worker's start: a few ms while the pool has free slots.
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# How long a scrape waits for Redis before it reports the fleet unread (reactor_fleet_read_ok 0).
FLEET_READ_TIMEOUT_S = 0.5
# Distinct upstream error codes kept as label values; any further one counts as "other".
MAX_ERROR_CODES = 64
# Where a worker's --metrics-port listens: every interface, for a Prometheus elsewhere.
WORKER_METRICS_HOST = "0.0.0.0"

_PLAIN_CODE = re.compile(r"[a-z0-9_.-]{1,64}")


class BoundedLabel:
    """Label values the gateway does not spell itself (an upstream's error codes): each kept as it
    is while fewer than ``limit`` distinct ones were seen and it looks like a code, else ``other``."""

    def __init__(self, limit: int = MAX_ERROR_CODES) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or not _PLAIN_CODE.fullmatch(value):
            return "other"
        self._seen.add(value)
        return value


class Children:
    """A labelled metric's children by their label values, each looked up in the metric once."""

    __slots__ = ("metric", "_children")

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self.metric = metric
        self._children: dict[tuple, Counter | Gauge | Histogram] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class FleetGauges(Collector):
    """Per provider pool, read from Redis when scraped: live workers, their job slots, jobs queued
    (due and not yet claimed) and jobs running (claimed: a running job's score is its claim's
    deadline, in the future). One pipeline per scrape, bounded by ``timeout``; a scrape that cannot
    read reports ``reactor_fleet_read_ok 0`` and no pool gauges rather than stale ones.
    """

    def __init__(self, timeout: float = FLEET_READ_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._source: tuple[Redis, Keys, list[str], float] | None = None
        self._pools: dict[str, tuple[int, int, int, int]] = {}
        self._ok: bool | None = None

    def attach(self, redis: Redis, keys: Keys, providers: list[str], heartbeat_interval: float) -> None:
        """Read these pools from now on (the front door calls this once its Redis pool is up)."""
        self._source = (redis, keys, providers, heartbeat_interval)

    def detach(self) -> None:
        self._source, self._ok, self._pools = None, None, {}

    async def refresh(self) -> None:
        if self._source is None:
            return
        try:
            self._pools = await asyncio.wait_for(self._read(*self._source), self.timeout)
            self._ok = True
        except (RedisError, OSError, TimeoutError):
            self._pools, self._ok = {}, False

    @staticmethod
    async def _read(redis: Redis, keys: Keys, providers: list[str],
                    heartbeat_interval: float) -> dict[str, tuple[int, int, int, int]]:
        now = time.time()
        now_ms = int(now * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for provider in providers:
                pipe.zrangebyscore(keys.workers(provider), alive_since(heartbeat_interval, now), "+inf")
                pipe.hgetall(keys.worker_slots(provider))
                pipe.zcount(keys.queue(provider), "-inf", now_ms)
                pipe.zcount(keys.queue(provider), f"({now_ms}", "+inf")
            answers = await pipe.execute()
        pools = {}
        for i, provider in enumerate(providers):
            live, slots, queued, running = answers[4 * i: 4 * i + 4]
            pools[provider] = (len(live), sum(int(slots.get(worker, 0)) for worker in live), int(queued), int(running))
        return pools

    def describe(self) -> list[Metric]:
        return []  # read at scrape time: nothing to declare up front

    def collect(self) -> Iterator[Metric]:
        if self._ok is None:
            return
        yield GaugeMetricFamily("reactor_fleet_read_ok", "1 when this scrape read the fleet from Redis.",
                                value=1 if self._ok else 0)
        families = [
            GaugeMetricFamily("reactor_live_workers", "Live workers per provider pool.", labels=["provider"]),
            GaugeMetricFamily("reactor_pool_slots", "Job slots of the live workers per provider pool.",
                              labels=["provider"]),
            GaugeMetricFamily("reactor_queue_depth", "Jobs waiting for a worker per provider pool.",
                              labels=["provider"]),
            GaugeMetricFamily("reactor_jobs_running", "Jobs a worker holds per provider pool.", labels=["provider"]),
        ]
        for provider, values in self._pools.items():
            for family, value in zip(families, values):
                family.add_metric([provider], value)
        yield from families


class GatewayMetrics:
    """The front door's metrics, rendered at ``GET /metrics``.

    :param multiprocess_dir: ``PROMETHEUS_MULTIPROC_DIR`` when several processes serve one port; the
        page then adds up every process's files there. None: this process's registry.
    :param fleet_timeout: how long a scrape waits for Redis's view of the fleet.
    """

    def __init__(self, multiprocess_dir: str | None = None, fleet_timeout: float = FLEET_READ_TIMEOUT_S) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry = CollectorRegistry()
        self.requests = Children(Counter(
            "reactor_requests", "Requests answered, by surface, the model and provider that served (or were "
            "chosen), HTTP status and error code (a stream that fails after its head keeps status 200).",
            ["surface", "model", "provider", "status", "code"], registry=registry))
        self.latency = Children(Histogram(
            "reactor_request_duration_seconds", "From a request's arrival to its last byte (a stream's end).",
            ["surface", "model", "provider"], buckets=LATENCY_BUCKETS, registry=registry))
        self.ttft = Children(Histogram(
            "reactor_time_to_first_token_seconds", "Streams: from a request's arrival to its first token "
            "leaving for the client.", ["surface", "model", "provider"], buckets=TTFT_BUCKETS, registry=registry))
        self.queue_wait = Children(Histogram(
            "reactor_queue_wait_seconds", "From enqueueing a job to its worker's start reply, by the provider "
            "pool it was queued on.", ["provider"], buckets=QUEUE_WAIT_BUCKETS, registry=registry))
        self.in_flight = Children(Gauge(
            "reactor_requests_in_flight", "Requests being answered now (open streams included).", ["surface"],
            multiprocess_mode="livesum", registry=registry))
        self.codes = BoundedLabel()
        self.fleet = FleetGauges(fleet_timeout)
        registry.register(self.fleet)

    def request_started(self, surface: str) -> None:
        """A request arrived; ``surface`` is what is known of it then (its path's)."""
        self.in_flight(surface).inc()

    def request_ended(self, surface: str, model: str, provider: str, status: int, code: str | None,
                      latency_s: float, ttft_s: float | None = None, queue_wait_s: float | None = None,
                      queue_provider: str = "", *, started_as: str | None = None) -> None:
        """One request is over.

        :param model: the registry id of the model that served, or was to; "" when none was chosen.
        :param code: the gateway's error code, if it failed (mid-stream failures included).
        :param ttft_s: streams only: seconds to the first token sent.
        :param queue_wait_s: seconds from enqueue to the worker's start, on ``queue_provider``'s pool.
        :param started_as: the surface :meth:`request_started` was told, when it differs.
        """
        self.in_flight(started_as or surface).dec()
        self.requests(surface, model, provider, status, self.codes(code)).inc()
        self.latency(surface, model, provider).observe(latency_s)
        if ttft_s is not None:
            self.ttft(surface, model, provider).observe(ttft_s)
        if queue_wait_s is not None:
            self.queue_wait(queue_provider).observe(queue_wait_s)

    async def render(self) -> tuple[bytes, str]:
        """The exposition page and its content type; reads the fleet from Redis first."""
        await self.fleet.refresh()
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self.fleet)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class WorkerMetrics:
    """A worker process's metrics, served by prometheus_client's own HTTP server (:meth:`serve`).

    Fed by the job runner's ``on_job_start``/``on_job_end`` hooks (``workers/worker.py``), which
    fire for every job, however the job was claimed.
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.started = Children(Counter(
            "reactor_worker_jobs_started", "Jobs this worker started, by the provider and model of the target "
            "it started with.", ["provider", "model"], registry=registry))
        self.finished = Children(Counter(
            "reactor_worker_jobs_finished", "Jobs this worker finished, by the provider and model that served "
            "last and the usage status (ok, error, incomplete, cancelled) or handoff (passed to another pool).",
            ["provider", "model", "status"], registry=registry))
        self.running = Gauge("reactor_worker_jobs_running", "Jobs running in this worker now.",
                             multiprocess_mode="livesum", registry=registry)
        self.attempts = Children(Counter(
            "reactor_worker_attempts", "Upstream attempts, by route and result (ok or error).",
            ["provider", "model", "result"], registry=registry))
        self.fallbacks = Children(Counter(
            "reactor_worker_fallbacks", "Failed attempts replaced by the next candidate, here or on another "
            "pool, by the route that failed.", ["provider", "model"], registry=registry))
        self.upstream_errors = Children(Counter(
            "reactor_worker_upstream_errors", "Failed attempts by provider, the gateway's error code and its "
            "HTTP status.", ["provider", "code", "status"], registry=registry))
        self.tokens = Children(Counter(
            "reactor_worker_tokens", "Tokens metered, by route and type (input or output; estimated ones "
            "included).", ["provider", "model", "type"], registry=registry))
        self.cost = Children(Counter(
            "reactor_worker_cost_usd", "Dollars metered at the registry's prices, by route.",
            ["provider", "model"], registry=registry))
        self.ttft = Children(Histogram(
            "reactor_worker_time_to_first_token_seconds", "The upstream's time to first token (a whole "
            "answer, when not streamed), per route, from the attempt's start.", ["provider", "model"],
            buckets=TTFT_BUCKETS, registry=registry))
        self.codes = BoundedLabel()

    def serve(self, port: int, host: str = WORKER_METRICS_HOST) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread, for the life of the process."""
        start_http_server(port, host, registry=self.registry)

    def job_started(self, provider: str, model: str) -> None:
        self.started(provider, model).inc()
        self.running.inc()

    def attempt(self, provider: str, model: str, *, error_code: str | None = None, error_status: int = 0,
                replaced: bool = False, ttft_s: float | None = None) -> None:
        """One upstream attempt: failed with ``error_code`` (and then ``replaced`` by another
        candidate, or not), or answered, its first token after ``ttft_s``."""
        if error_code is None:
            self.attempts(provider, model, "ok").inc()
            if ttft_s is not None:
                self.ttft(provider, model).observe(ttft_s)
            return
        self.attempts(provider, model, "error").inc()
        self.upstream_errors(provider, self.codes(error_code), error_status).inc()
        if replaced:
            self.fallbacks(provider, model).inc()

    def job_ended(self, provider: str, model: str, status: str, tokens_in: int = 0, tokens_out: int = 0,
                  cost_usd: float = 0.0) -> None:
        self.running.dec()
        self.finished(provider, model, status).inc()
        if tokens_in:
            self.tokens(provider, model, "input").inc(tokens_in)
        if tokens_out:
            self.tokens(provider, model, "output").inc(tokens_out)
        if cost_usd:
            self.cost(provider, model).inc(cost_usd)
