"""The worker process: one arq worker per provider queue, woken by pub/sub.

arq polls its queue every ``poll_delay`` (0.5 s by default), which would set the gateway's
latency. Here each worker's loop also waits on an event that a pub/sub message on
``<queue>:notify`` sets right after every enqueue, so a job starts within a round trip or
two while an idle worker still costs Redis only one poll per ``poll_delay``.
The same subscription carries cancels from the front door.

That fast path claims and runs jobs itself, so arq's ``on_job_start``/``on_job_end`` never fire
for them; the process's job hooks are the :class:`JobRunner`'s instead, which every job passes
through (:class:`JobCounters` turns them into the worker's metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import deserialize_job_raw
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from shared.config import Settings
from shared.errors import GatewayError
from shared.extensions import Extension, build_extensions
from shared.fleet import PoolCapacity
from shared.health import RouteHealth
from shared.keys import Keys
from shared.metrics import WorkerMetrics
from shared.queue import JOB_FUNCTIONS, Enqueuer, job_deserializer, job_lifetime, job_serializer, owner_decoder
from shared.reconnect import Reconnect
from shared.tracing import Tracing
from shared.redis_client import LISTEN_POLL_S, PubSubLiveness, open_redis
from shared.overlay import FixedRegistry, RegistrySource
from shared.usage import UsageRecorder, replay_spool_forever
from shared.wire import Cancel, Job

from .jobs import Handoff, JobOutcome, JobRunner
from .providers import build_provider
from .providers.http import Timeouts, UpstreamHTTP
from .publisher import ReplyHub

logger = logging.getLogger("reactor.worker")
_cancel_decoder = msgspec.msgpack.Decoder(Cancel)
# Pings at start-up before the worker gives up on its Redis (with backoff: 10 to 20 s in all).
START_TRIES = 8


# Finds and claims the due jobs of a queue in one round trip: each due id not yet taken by
# another worker gets its in-progress key, its retry count goes up, and its payload comes
# back with it. arq does this per job (WATCH/MULTI, then a pipeline), about five round trips
# and a few hundred microseconds of client work each, which made the 50th job of a burst
# wait ~30 ms. Keys are arq's own, so arq's tooling still reads the queue.
#
# A claimed job stays in the queue until it ends (so a dead worker's job is found again), but
# its score moves to when its in-progress key expires: it is no longer due, so polls skip it.
# Without that, every poll re-read every running job (thousands, with slow streams) and the
# oldest running ones filled the batch ahead of the new ones. A job another worker holds is
# moved the same way, to when that worker's claim lapses.
_CLAIM = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
local claimed = {}
for _, id in ipairs(due) do
  if redis.call('SET', ARGV[3] .. id, '1', 'NX', 'PX', ttl) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, id)
    local payload = redis.call('GET', ARGV[4] .. id) or ''
    local try = redis.call('INCR', ARGV[5] .. id)
    redis.call('EXPIRE', ARGV[5] .. id, 88400)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = payload
    claimed[#claimed + 1] = try
  else
    local left = redis.call('PTTL', ARGV[3] .. id)
    redis.call('ZADD', KEYS[1], 'XX', now + math.max(left, 1), id)
  end
end
return claimed
"""


# Clears ended jobs: out of the queue first, then their keys, atomically, so no poll can claim
# one again in between; and out of their user's share of the pool (shared/queue.py). One command
# for the whole batch. KEYS: the queue, then per id its user's job set (the queue again when the
# user is unknown: removing the id from it twice is harmless). ARGV: the in-progress, job and
# retry key prefixes, then the ids.
_END = """
for i = 4, #ARGV do
  local id = ARGV[i]
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. id, ARGV[2] .. id, ARGV[3] .. id)
  local owner = KEYS[i - 2]
  if owner then
    redis.call('ZREM', owner, id)
  end
end
return #ARGV - 3
"""


class WakeableWorker(Worker):
    """An arq worker whose poll loop also wakes on an :class:`asyncio.Event`, and which claims
    and finishes the jobs of a poll together.

    Only what the gateway uses of arq's job model is kept: no stored results, no aborts by
    key (cancels travel on pub/sub), retries bounded by the function's ``max_tries``.

    :param wake: set by the process's pub/sub listener when a job was enqueued, and when a
        job ends while the worker was full.
    :param user_jobs: a user id → the key of that user's jobs in this pool (``Keys.queue_user_jobs``).
    """

    def __init__(self, *args: Any, wake: asyncio.Event, user_jobs: Callable[[str], str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake
        self._user_jobs = user_jobs
        self._claim = self.pool.register_script(_CLAIM)
        self._end = self.pool.register_script(_END)
        # Ended job ids, each with its user's job set in this pool (the queue when unknown).
        self._ended: list[tuple[str, str]] = []
        self._flusher: asyncio.Task | None = None

    async def _poll_iteration(self) -> None:
        """Claim what is due, up to the free slots; one round trip however many jobs run."""
        free = self.max_jobs - self.job_counter
        if not self.allow_pick_jobs or free <= 0:
            return
        claimed = await self._claim(
            keys=[self.queue_name],
            args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), in_progress_key_prefix, job_key_prefix,
                  retry_key_prefix, free],
        )
        for i in range(0, len(claimed), 3):
            job_id = claimed[i].decode() if isinstance(claimed[i], bytes) else claimed[i]
            await self.sem.acquire()  # never waits: the batch fits in the free slots
            self.job_counter += 1
            task = self.loop.create_task(self._run_claimed(job_id, claimed[i + 1], int(claimed[i + 2])))
            task.add_done_callback(lambda _, job_id=job_id: self._job_done(job_id))
            self.tasks[job_id] = task

    def _job_done(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        self._release_sem_dec_counter_on_complete()

    async def _run_claimed(self, job_id: str, payload: bytes, job_try: int) -> None:
        owner = self.queue_name
        try:
            if not payload:
                # The front door gave up on it (its key expired) before a worker got to it. Its
                # user is unknown now: their share forgets it by itself (shared/queue.py).
                logger.info("job %s expired before it started", job_id)
                return
            function_name, args, kwargs, _, _ = deserialize_job_raw(payload, deserializer=self.job_deserializer)
            if self._user_jobs is not None and args and isinstance(args[0], bytes):
                with contextlib.suppress(msgspec.DecodeError):
                    owner = self._user_jobs(owner_decoder.decode(args[0]).user_id)
            function = self.functions.get(function_name)
            if function is None:
                logger.warning("job %s: no function %r", job_id, function_name)
                return
            max_tries = self.max_tries if function.max_tries is None else function.max_tries
            if job_try > max_tries:
                logger.warning("job %s: tried %d times already, dropped", job_id, job_try - 1)
                return
            timeout = self.job_timeout_s if function.timeout_s is None else function.timeout_s
            try:
                async with asyncio.timeout(timeout):
                    await function.coroutine(self.ctx, *args, **kwargs)
                self.jobs_complete += 1
            except TimeoutError:
                self.jobs_failed += 1
                logger.error("job %s timed out after %.0fs", job_id, timeout)
            except Exception:
                self.jobs_failed += 1
                logger.exception("job %s failed", job_id)
        finally:
            self._ended.append((job_id, owner))
            if self._flusher is None or self._flusher.done():
                self._flusher = self.loop.create_task(self._flush_ended())

    async def settle(self) -> None:
        """Wait until the ended jobs have been cleared from Redis (at shutdown)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush_ended(self) -> None:
        """Remove ended jobs from Redis, all that ended since the last flush in one script call."""
        await asyncio.sleep(0)  # let the jobs ending in this same loop turn join the batch
        while self._ended:
            ended, self._ended = self._ended, []
            try:
                await self._end(keys=[self.queue_name, *(owner for _, owner in ended)],
                                args=[in_progress_key_prefix, job_key_prefix, retry_key_prefix,
                                      *(job_id for job_id, _ in ended)])
            except (RedisError, OSError) as exc:
                # The in-progress keys expire by themselves; until then nobody re-runs these jobs.
                logger.warning("could not clear %d ended jobs: %r", len(ended), exc)

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        reconnect = Reconnect()
        while True:
            # Cleared before polling, so an enqueue during the poll still wakes the next wait.
            self.wake.clear()
            try:
                await self._poll_iteration()
                reconnect.succeeded()
            except (RedisError, OSError) as exc:
                # A Redis blip must not end the worker: jobs in flight carry on, polling resumes.
                delay = reconnect.next_delay()
                logger.warning("polling %s failed (%r); retrying in %.1fs", self.queue_name, exc, delay)
                await reconnect.wait(delay)
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), self.poll_delay_s)
            except TimeoutError:
                pass

    def _release_sem_dec_counter_on_complete(self) -> None:
        was_full = self.job_counter >= self.max_jobs
        super()._release_sem_dec_counter_on_complete()
        if was_full:
            self.wake.set()  # a slot is free again: look for jobs the full worker left queued


class JobCounters:
    """The job hooks that count each job into a :class:`WorkerMetrics`: pass :meth:`started` and
    :meth:`ended` as ``on_job_start`` and ``on_job_end``."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def started(self, job: Job) -> None:
        target = job.targets[job.attempt]
        self.metrics.job_started(target.provider, target.model_id)

    def ended(self, job: Job, outcome: JobOutcome) -> None:
        metrics = self.metrics
        last = len(outcome.attempts) - 1
        for i, attempt in enumerate(outcome.attempts):
            target, error = attempt.target, attempt.error
            if error is None:
                metrics.attempt(target.provider, target.model_id, ttft_s=attempt.first_token_s)
            else:
                metrics.attempt(target.provider, target.model_id, error_code=error.code, error_status=error.status,
                                replaced=i < last or outcome.status == "handoff")
        usage = outcome.usage
        metrics.job_ended(outcome.target.provider, outcome.target.model_id, outcome.status,
                          usage.tokens_in if usage else 0, usage.tokens_out if usage else 0,
                          usage.cost_usd if usage else 0.0)


async def _run_job(ctx: dict, payload: bytes) -> None:
    # One coroutine for every job kind: the payload says which, and the runner dispatches on it.
    await ctx["runner"].run(payload)


def provider_names(settings: Settings, providers: list[str] | None) -> list[str]:
    """The provider queues to serve: those asked for (all enabled ones when none), each checked.

    :raises GatewayError: a provider that is not enabled or has no credentials, said plainly.
    """
    enabled = settings.enabled_providers
    names = providers or list(enabled)
    for name in names:
        if name not in enabled:
            raise GatewayError(f"provider {name!r} is not enabled in {settings.source}")
        missing = enabled[name].missing_credentials()
        if missing:
            raise GatewayError(
                f"provider {name!r} has no credentials: {missing} "
                f"(or set enabled = false in [gateway.providers.{name}])"
            )
    return names


class WorkerProcess:
    """Runs the workers for some providers until told to stop.

    :param settings: the gateway settings.
    :param registry: the model registry (prices for metering), reloading or fixed.
    :param providers: names of the provider queues to serve; all enabled ones when empty.
    :param extensions: their after-usage hooks run once per request this process serves.
    :param on_job_start: called as each job starts (``JobRunner``'s hook, for every job).
    :param on_job_end: called with each job and how it ended.
    :param tracing: spans for every job and upstream attempt (``shared/tracing.py``); None for none.
    """

    def __init__(self, settings: Settings, registry: RegistrySource | FixedRegistry, providers: list[str] | None = None,
                 extensions: Sequence[Extension] = (), *, on_job_start: Callable[[Job], None] | None = None,
                 on_job_end: Callable[[Job, JobOutcome], None] | None = None, tracing: Tracing | None = None) -> None:
        names = provider_names(settings, providers)
        self.settings = settings
        self.registry = registry
        self.names = names
        self.extensions = list(extensions)
        self.on_job_start = on_job_start
        self.on_job_end = on_job_end
        self.tracing = tracing
        self.keys = Keys(settings.key_prefix)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, redis: ArqRedis) -> None:
        s = self.settings
        async with UpstreamHTTP(Timeouts(connect=s.connect_timeout, read=s.read_timeout),
                                max_response_bytes=s.max_upstream_response_bytes,
                                max_line_bytes=s.max_stream_line_bytes) as http:
            providers = {n: build_provider(s.providers[n], http, s.secrets()) for n in self.names}
            usage = UsageRecorder(redis, self.keys, s.usage_retention_days, s.usage_spool)
            hub = ReplyHub(redis, self.worker_id, s.heartbeat_interval)
            capacity = PoolCapacity(redis, self.keys, list(s.enabled_providers), s.heartbeat_interval,
                                    s.queue_backlog)
            runner = JobRunner(s, self.registry, redis, providers, usage, hub,
                               health=RouteHealth(redis, self.keys, s.routing),
                               handoff=Handoff(Enqueuer(redis, self.keys, job_lifetime(s)), capacity, s.queue_timeout,
                                               s.queue_user_share),
                               extensions=self.extensions, on_job_start=self.on_job_start,
                               on_job_end=self.on_job_end, tracing=self.tracing)
            wakes = {n: asyncio.Event() for n in self.names}
            workers = [
                WakeableWorker(
                    functions=[
                        func(_run_job, name=name, max_tries=1, timeout=s.request_timeout + 30)
                        for name in JOB_FUNCTIONS.values()
                    ],
                    queue_name=self.keys.queue(n),
                    redis_pool=redis,
                    handle_signals=False,
                    max_jobs=s.worker_concurrency,
                    keep_result=0,
                    poll_delay=s.poll_delay,
                    job_serializer=job_serializer,
                    job_deserializer=job_deserializer,
                    ctx={"runner": runner},
                    log_results=False,
                    wake=wakes[n],
                    user_jobs=lambda user_id, n=n: self.keys.queue_user_jobs(n, user_id),
                )
                for n in self.names
            ]
            subscribed = asyncio.Event()
            tasks = [asyncio.create_task(self._listen(redis, runner, wakes, subscribed), name="listener")]
            await asyncio.wait_for(subscribed.wait(), 10)
            tasks += [asyncio.create_task(w.main(), name=f"worker:{n}") for w, n in zip(workers, self.names)]
            tasks.append(asyncio.create_task(self._heartbeat(redis), name="heartbeat"))
            replies = asyncio.create_task(hub.run(), name="replies")
            tasks.append(asyncio.create_task(replay_spool_forever(usage), name="usage-spool"))
            logger.info("worker %s serving %s", self.worker_id, ", ".join(self.keys.queue(n) for n in self.names))
            stopper = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([*tasks, replies, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception():
                    logger.error("worker task %s died: %r", task.get_name(), task.exception())
            await self._shutdown(redis, workers, tasks, hub, replies)

    async def _listen(self, redis: ArqRedis, runner: JobRunner, wakes: dict[str, asyncio.Event],
                      subscribed: asyncio.Event) -> None:
        """Wake-ups and cancels, on one pub/sub connection; resubscribes after a Redis blip."""
        by_channel = {self.keys.queue_notify(n).encode(): wake for n, wake in wakes.items()}
        cancel_channel = self.keys.cancel_channel.encode()
        reconnect = Reconnect()
        while True:
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(*by_channel, cancel_channel)
                subscribed.set()
                reconnect.succeeded()
                # Jobs enqueued while we were not listening are found by this poll.
                for wake in wakes.values():
                    wake.set()
                live = PubSubLiveness(pubsub)
                while True:
                    # Never timeout=None: redis-py would read with the socket timeout and fail.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_S)
                    if message is None:
                        await live.quiet()
                        continue
                    live.heard()
                    channel = message["channel"]
                    if channel == cancel_channel:
                        try:
                            runner.cancel(_cancel_decoder.decode(message["data"]).request_id)
                        except msgspec.DecodeError:
                            logger.warning("ignored a malformed cancel message")
                    elif (wake := by_channel.get(channel)) is not None:
                        wake.set()
            except (RedisError, OSError) as exc:
                delay = reconnect.next_delay()
                logger.warning("worker pub/sub lost (%r); resubscribing in %.1fs", exc, delay)
                await reconnect.wait(delay)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def _heartbeat(self, redis: ArqRedis) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            now = time.time()
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for n in self.names:
                        pipe.zadd(self.keys.workers(n), {self.worker_id: now})
                        pipe.hset(self.keys.worker_slots(n), self.worker_id, self.settings.worker_concurrency)
                        # Workers that died without saying goodbye fall out after a while.
                        pipe.zrangebyscore(self.keys.workers(n), "-inf", now - 60 * interval)
                    answers = await pipe.execute()
                    gone = {n: answers[3 * i + 2] for i, n in enumerate(self.names) if answers[3 * i + 2]}
                if gone:
                    async with redis.pipeline(transaction=False) as pipe:
                        for n, ids in gone.items():
                            pipe.zrem(self.keys.workers(n), *ids)
                            pipe.hdel(self.keys.worker_slots(n), *ids)
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(interval)

    async def _shutdown(self, redis: ArqRedis, workers: list[WakeableWorker], tasks: list[asyncio.Task],
                        hub: ReplyHub, replies: asyncio.Task) -> None:
        # Stop taking jobs, let running ones finish for a while, then cancel what is left.
        for worker in workers:
            worker.allow_pick_jobs = False
        running = [t for w in workers for t in w.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=self.settings.shutdown_grace)
        for task in tasks:
            task.cancel()
        for worker in workers:
            for task in worker.tasks.values():
                task.cancel()
        await asyncio.gather(*tasks, *(t for w in workers for t in w.tasks.values()), return_exceptions=True)
        # The jobs are over: send what they left, then stop the sender.
        replies.cancel()
        await asyncio.gather(replies, return_exceptions=True)
        await hub.flush()
        await asyncio.gather(*(w.settle() for w in workers))
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for n in self.names:
                    pipe.zrem(self.keys.workers(n), self.worker_id)
                    pipe.hdel(self.keys.worker_slots(n), self.worker_id)
                await pipe.execute()
        except (RedisError, OSError):
            pass


async def _wait_for_redis(redis: ArqRedis, tries: int = START_TRIES) -> None:
    """Ping until Redis answers, ``tries`` times with backoff, so a worker started with (or just
    before) its Redis does not exit at once; then the last error is raised."""
    reconnect = Reconnect()
    for attempt in range(tries):
        try:
            await redis.ping()
            return
        except (RedisError, OSError) as exc:
            if attempt == tries - 1:
                raise
            delay = reconnect.next_delay()
            logger.warning("Redis not reachable yet (%r); trying again in %.1fs", exc, delay)
            await reconnect.wait(delay)


async def run_worker_process(settings: Settings, registry: RegistrySource | FixedRegistry,
                             providers: list[str] | None = None, metrics: WorkerMetrics | None = None,
                             tracing: Tracing | None = None) -> None:
    """Entry point of ``reactor worker``: runs until SIGINT or SIGTERM.

    :param metrics: counts every job when given (the CLI serves it on ``--metrics-port``).
    :param tracing: traces every job when given (the CLI's, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set).
    """
    from shared.runtime import tune_process

    provider_names(settings, providers)  # before connecting: a missing key is said first
    tune_process()
    # arq's pool class on the gateway's connection factory rather than arq's create_pool: the same
    # URL forms (Sentinel included) and socket timeouts as the front door.
    assert settings.redis_url is not None
    redis = open_redis(settings.redis_url, timeout=settings.redis_timeout, redis_class=ArqRedis,
                       client_kwargs={"job_serializer": job_serializer, "job_deserializer": job_deserializer})
    await _wait_for_redis(redis)
    counters = JobCounters(metrics) if metrics is not None else None
    process = WorkerProcess(settings, registry, providers, build_extensions(settings, redis),
                            on_job_start=counters.started if counters else None,
                            on_job_end=counters.ended if counters else None, tracing=tracing)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, process.stop)
    registry.install_sighup(loop)
    watcher = asyncio.create_task(registry.watch(), name="registry-watch")
    try:
        await process.run(redis)
    finally:
        watcher.cancel()
        for extension in process.extensions:
            await extension.close()
        await redis.aclose()
