"""The front door's state for the app's lifetime, and the steps every route shares:
authenticate, read the body, submit a job and wait for a worker to take it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from shared.config import Settings
from shared.errors import GatewayError, NoWorker, Overloaded, PayloadTooLarge, Unavailable
from shared.fleet import pool_slots, silence_timeout
from shared.keys import Keys
from shared.queue import Enqueuer
from shared.registry import Registry
from shared.usage import Tokens, UsageRecorder, build_usage, estimate_tokens, prompt_chars, replay_spool_forever
from shared.wire import Cancel, Job

from .auth import Identity, Verifier, bearer_token
from .replies import ReplyRouter, ReplyStream


# Seconds a client told "overloaded" or "no worker" is asked to wait before trying again.
RETRY_AFTER_S = 1


class PoolCapacity:
    """How many jobs each provider pool may hold: its live workers' slots plus ``backlog``.

    Read from Redis at most once per ``max_age`` seconds (concurrent readers share one read),
    and again at once before a pool is declared workerless, so a worker that just started is
    not refused.
    """

    def __init__(self, redis: Redis, keys: Keys, providers: list[str], heartbeat: float, backlog: int) -> None:
        self._redis, self._keys, self._providers = redis, keys, providers
        self._heartbeat, self._backlog = heartbeat, backlog
        self.max_age = heartbeat / 2
        self._slots: dict[str, int] = {}
        self._read_at = -1e9
        self._reading: asyncio.Future[None] | None = None

    async def limit(self, provider: str) -> int:
        """The most jobs ``provider``'s pool may hold.

        :raises NoWorker: no live worker serves it.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self._read_at > self.max_age:
            await self._refresh()
        slots = self._slots.get(provider, 0)
        if slots == 0 and loop.time() - self._read_at > 0.1:
            await self._refresh()
            slots = self._slots.get(provider, 0)
        if slots == 0:
            raise NoWorker(f"No worker serves the provider {provider!r} right now; try again shortly.",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return slots + self._backlog

    async def _refresh(self) -> None:
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
        reading = self._reading
        try:
            await asyncio.shield(reading)
        finally:
            if self._reading is reading and reading.done():
                self._reading = None

    async def _read(self) -> None:
        self._slots = await pool_slots(self._redis, self._keys, self._providers, self._heartbeat)
        self._read_at = asyncio.get_running_loop().time()


class Gateway:
    """Everything a request handler needs.

    :param settings: the gateway settings.
    :param registry: the registry restricted to enabled providers.
    :param redis: the process's pool.
    :param verifier: checks bearer tokens.
    """

    def __init__(self, settings: Settings, registry: Registry, redis: Redis, verifier: Verifier) -> None:
        self.settings = settings
        self.registry = registry
        self.redis = redis
        self.verifier = verifier
        self.keys = Keys(settings.key_prefix)
        self.process_id = uuid.uuid4().hex[:12]
        # Past the deadline even a live worker's request ends (the worker's own request_timeout
        # should end it first).
        silence = silence_timeout(settings.heartbeat_interval)
        self.replies = ReplyRouter(redis, self.keys.reply_channel(self.process_id),
                                   heartbeat=settings.heartbeat_interval, silence_timeout=silence,
                                   deadline=settings.queue_timeout + settings.request_timeout + 2 * silence)
        self.enqueuer = Enqueuer(redis, self.keys)
        self.capacity = PoolCapacity(redis, self.keys, list(settings.enabled_providers), settings.heartbeat_interval,
                                     settings.queue_backlog)
        self.usage = UsageRecorder(redis, self.keys, settings.usage_retention_days, settings.usage_spool)
        self._background: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.replies.start()
        self.spawn(replay_spool_forever(self.usage))

    async def stop(self) -> None:
        await self.replies.stop()
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=2)
            for task in pending:
                task.cancel()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` detached from the request, e.g. a cancel sent while the request is torn down."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def authenticate(self, request: Request) -> Identity:
        return await self.verifier.verify(bearer_token(request.headers.get("authorization")))

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def round_robin_turn(self, alias: str) -> int:
        try:
            return int(await self.redis.incr(self.keys.round_robin(alias)))
        except (RedisError, OSError):
            raise Unavailable("Redis is unreachable.") from None

    async def submit(self, job: Job) -> ReplyStream:
        """Enqueue ``job`` for its first target's provider and wait until a worker starts it.

        :raises NoWorker: no live worker serves the provider, or none took the job within ``queue_timeout``.
        :raises Overloaded: the pool's workers are all busy and its backlog is full.
        :raises Unavailable: Redis is unreachable.
        """
        if not self.replies.ready:
            raise Unavailable("The gateway is reconnecting to Redis; try again shortly.")
        provider = job.targets[0].provider
        try:
            limit = await self.capacity.limit(provider)
        except (RedisError, OSError):
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        stream = self.replies.open(job.request_id, start_timeout=self.settings.queue_timeout)
        try:
            admitted = await self.enqueuer.enqueue(job, provider, self.settings.queue_timeout, limit)
            if admitted:
                await stream.next()
        except (RedisError, OSError):
            # redis-py raises its ConnectionError mostly, but a socket reset mid-command can
            # surface as the OS's; either way it is Redis being away, never a 500.
            stream.close()
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        except (GatewayError, asyncio.CancelledError):
            self.abandon(stream)
            raise
        if not admitted:
            stream.close()  # nothing was queued, so there is nothing to cancel
            raise Overloaded(f"Every worker of the provider {provider!r} is busy; try again shortly.",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
        return stream

    def abandon(self, stream: ReplyStream) -> None:
        """Stop waiting for a request's replies and tell the workers to drop it.

        The cancel is sent detached, so it goes out even while the request itself is being torn down.
        """
        stream.close()
        self.spawn(self.cancel(stream.request_id))

    async def meter_lost_worker(self, job: Job, out_chars: int, started: float) -> None:
        """Meter a stream whose worker died before metering it: what the client was sent, estimated.

        The worker may yet record it (it was only slow); the request-id claim keeps whichever
        record comes first, so the request is never counted twice.
        """
        target = job.targets[0]
        body = msgspec.json.decode(job.body)
        tokens = Tokens(estimate_tokens(prompt_chars(body)), estimate_tokens(out_chars), estimated=True)
        props = build_usage(request_id=job.request_id, user_id=job.user_id, alias=job.alias,
                            model_id=target.model_id, provider=target.provider, tokens=tokens,
                            model=self.registry.models.get(target.model_id), started=started, status="worker_lost")
        try:
            await self.usage.record(props)
        except (RedisError, OSError):
            pass  # logged by the recorder

    async def cancel(self, request_id: str) -> None:
        """Tell every worker to drop ``request_id``: abort its upstream call, or skip it if queued."""
        try:
            await self.redis.publish(self.keys.cancel_channel, msgspec.msgpack.encode(Cancel(request_id)))
        except (RedisError, OSError):
            pass  # the job's own timeouts end it
