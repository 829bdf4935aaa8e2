"""The front door's state for the app's lifetime, and the steps every route shares:
authenticate, read the body, submit a job and wait for a worker to take it.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from shared.config import Settings
from shared.errors import GatewayError, NoWorker, PayloadTooLarge, Unavailable
from shared.fleet import RETRY_AFTER_S, PoolCapacity, silence_timeout
from shared.extensions import Extension
from shared.health import RouteHealth, RouteStats
from shared.keys import Keys
from shared.queue import Admission, Enqueuer, job_lifetime, queue_job_id
from shared.overlay import FixedRegistry, RegistrySource
from shared.registry import Model, Registry
from shared.tracing import Tracing
from shared.usage import (Tokens, UsageProperties, UsageRecorder, build_usage, estimate_tokens, prompt_chars,
                          replay_spool_forever, tokens_from_usage)
from shared.wire import Cancel, Job, Reply, Target

from .auth import Identity, Verifier, bearer_token, refuse_query_token
from .replies import ReplyRouter, ReplyStream

logger = logging.getLogger("reactor.api")


class Gateway:
    """Everything a request handler needs.

    :param settings: the gateway settings.
    :param registry: where the registry (restricted to enabled providers) is read: a
        ``RegistrySource`` that reloads it, or a ``FixedRegistry``. Each request reads it once.
    :param redis: the process's pool.
    :param verifier: checks bearer tokens.
    :param extensions: quota, routing and usage hooks, run in order (``shared/extensions.py``).
    :param tracing: starts the span of each inference request (``shared/tracing.py``); None for none.
    """

    def __init__(self, settings: Settings, registry: RegistrySource | FixedRegistry, redis: Redis,
                 verifier: Verifier, extensions: Sequence[Extension] = (), tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing
        self.registry_source = registry
        self._model_objects: tuple[Registry | None, dict[str, Any]] = (None, {})
        self.redis = redis
        self.verifier = verifier
        self.extensions = list(extensions)
        # Set by a SIGTERM: health says "draining" so load balancers stop sending (api/cli.py).
        self.draining = False
        self.keys = Keys(settings.key_prefix)
        self.health = RouteHealth(redis, self.keys, settings.routing)
        self.process_id = uuid.uuid4().hex[:12]
        # Past the deadline even a live worker's request ends (the worker's own request_timeout
        # should end it first).
        silence = silence_timeout(settings.heartbeat_interval)
        self.replies = ReplyRouter(redis, self.keys.reply_channel(self.process_id),
                                   heartbeat=settings.heartbeat_interval, silence_timeout=silence,
                                   deadline=settings.queue_timeout + settings.request_timeout + 2 * silence)
        self.enqueuer = Enqueuer(redis, self.keys, job_lifetime(settings))
        self.capacity = PoolCapacity(redis, self.keys, list(settings.enabled_providers), settings.heartbeat_interval,
                                     settings.queue_backlog)
        self.usage = UsageRecorder(redis, self.keys, settings.usage_retention_days, settings.usage_spool)
        self._background: set[asyncio.Task] = set()

    @property
    def registry(self) -> Registry:
        """The registry now; a request reads it once and keeps that one (a reload does not touch it)."""
        return self.registry_source.current

    def model_objects(self) -> dict[str, Any]:
        """``/ai/v1/models``'s objects for the current registry, built once per registry."""
        registry = self.registry
        if self._model_objects[0] is not registry:
            from .catalog import model_objects

            self._model_objects = (registry, model_objects(registry))
        return self._model_objects[1]

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
        if request.scope["query_string"]:
            refuse_query_token(request.query_params)
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

    async def speed(self, models: list[Model]) -> dict[str, RouteStats]:
        """The measured speed of each model's first route, for the ``fastest`` strategy."""
        targets = [Target(m.id, m.routes[0].provider, m.routes[0].model) for m in models if m.routes]
        stats = await self.health.stats(targets)
        return {t.model_id: stats[(t.provider, t.upstream_model)] for t in targets}

    async def available(self, targets: list[Target]) -> list[Target]:
        """``targets`` that can serve now, in order: routes cooling down go last, and pools without a
        live worker are left out.

        :raises NoWorker: no target's pool has a live worker (naming the providers).
        :raises Unavailable: Redis is unreachable.
        """
        cooling = await self.health.cooling(targets)
        ordered = ([t for t in targets if (t.provider, t.upstream_model) not in cooling]
                   + [t for t in targets if (t.provider, t.upstream_model) in cooling])
        live, idle = [], []
        for target in ordered:
            try:
                await self.capacity.limit(target.provider)
            except NoWorker:
                idle.append(target.provider)
                continue
            except (RedisError, OSError):
                raise Unavailable("The job queue (Redis) is unreachable.") from None
            live.append(target)
        if not live:
            names = ", ".join(repr(p) for p in dict.fromkeys(idle))
            raise NoWorker(f"No worker serves the provider {names} right now; try again shortly.",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return live

    async def submit(self, job: Job) -> ReplyStream:
        """Enqueue ``job`` for its first target's provider and wait until a worker starts it.

        :raises NoWorker: no live worker serves the provider, or none took the job within ``queue_timeout``.
        :raises Overloaded: the pool's workers are all busy and its backlog is full.
        :raises UserShareExceeded: the job's user already holds their share of the pool.
        :raises Unavailable: Redis is unreachable.
        """
        if not self.replies.ready:
            raise Unavailable("The gateway is reconnecting to Redis; try again shortly.")
        provider = job.targets[0].provider
        try:
            room = await self.capacity.room(provider, self.settings.queue_user_share)
        except (RedisError, OSError):
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        stream = self.replies.open(job.request_id, start_timeout=self.settings.queue_timeout,
                                   rerun=functools.partial(self.rerun, job),
                                   unsettled=functools.partial(self.meter_lost_result, job))
        try:
            admitted = await self.enqueuer.enqueue(job, provider, self.settings.queue_timeout, *room)
            if admitted is Admission.ADMITTED:
                await stream.next()
        except (RedisError, OSError):
            # redis-py raises its ConnectionError mostly, but a socket reset mid-command can
            # surface as the OS's; either way it is Redis being away, never a 500.
            stream.close()
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        except (GatewayError, asyncio.CancelledError):
            self.abandon(stream)
            raise
        refused = admitted.refusal(provider)
        if refused is not None:
            stream.close()  # nothing was queued, so there is nothing to cancel
            raise refused
        return stream

    def abandon(self, stream: ReplyStream) -> None:
        """Stop waiting for a request's replies and tell the workers to drop it.

        The cancel is sent detached, so it goes out even while the request itself is being torn down.
        """
        stream.close()
        self.spawn(self.cancel(stream.reply_id))

    async def rerun(self, job: Job, stream: ReplyStream, lost: str) -> None:
        """Run ``job`` again on another live worker of its pool: its worker was lost before any
        output reached the client (``stream.run`` is the new run; ``lost`` the lost run's reply id).

        The lost run is told to stop (a worker that was only slow drops it; a dead one hears
        nothing) and taken out of its queue. The new run keeps the request id, so whichever run
        meters the request, it is metered once. It starts from the first target of the model that
        was serving (the ``start`` names the model, not the route).

        :raises NoWorker: no live worker serves the pool any more (the lost one no longer counts).
        :raises Overloaded: the pool is full.
        :raises Unavailable: Redis is unreachable.
        """
        self.spawn(self.cancel(lost))
        lost_provider = job.targets[job.attempt].provider
        lost_id = self.keys.job_id(lost_provider, queue_job_id(job))
        attempt = next((i for i, t in enumerate(job.targets) if t.model_id == stream.model_id), job.attempt)
        job.attempt, job.tried, job.reply_seq, job.run = attempt, attempt, 0, stream.run
        provider = job.targets[attempt].provider
        try:
            await self.enqueuer.forget(lost_provider, lost_id, job.user_id)
            room = await self.capacity.room(provider, self.settings.queue_user_share)
            admitted = await self.enqueuer.enqueue(job, provider, self.settings.queue_timeout, *room)
        except (RedisError, OSError):
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        refused = admitted.refusal(provider)
        if refused is not None:
            raise refused

    def meter_lost_result(self, job: Job, stream: ReplyStream, result: Reply) -> None:
        """Meter a non-streamed request whose worker fell silent right after its result: it may have
        died before metering it. The result carries the usage the worker would have recorded."""
        try:
            answer = msgspec.json.decode(result.body or b"{}")
        except msgspec.DecodeError:
            answer = None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        tokens = tokens_from_usage({"completion_tokens": 0, **usage} if isinstance(usage, dict) else None)
        self.spawn(self.meter_lost_worker(job, 0, job.enqueued_at, stream.model_id, stream.provider,
                                            tokens=tokens))

    async def meter_lost_worker(self, job: Job, out_chars: int, started: float, model_id: str | None = None,
                                provider: str | None = None, tokens: Tokens | None = None) -> None:
        """Meter a request whose worker died before metering it: ``tokens``, or else what the client
        was sent, estimated.

        The worker may yet record it, or have done so (it was only slow, or died just after); the
        request-id claim keeps whichever record comes first, so the request is never counted twice,
        and the extensions settle only for the record that counted.

        :param model_id: the model serving when the worker was lost, and ``provider`` its provider
            (both from the worker's start reply).
        """
        target = next((t for t in job.targets if t.model_id == model_id and provider in (None, t.provider)),
                      job.targets[job.attempt])
        if tokens is None:
            body = msgspec.json.decode(job.body)
            tokens = Tokens(estimate_tokens(prompt_chars(body)), estimate_tokens(out_chars), estimated=True)
        props = build_usage(request_id=job.request_id, user_id=job.user_id, alias=job.alias,
                            model_id=target.model_id, provider=target.provider, tokens=tokens,
                            model=self.registry.models.get(target.model_id), started=started, status="worker_lost",
                            surface=job.surface)
        try:
            first = await self.usage.record(props)
        except (RedisError, OSError):
            first = True  # logged by the recorder; the reservations are settled all the same
        if first:
            await self.after_usage(props, job)

    async def after_usage(self, props: UsageProperties, job: Job) -> None:
        """The extensions' after-usage hooks, for a request the front door settles itself."""
        for extension in self.extensions:
            try:
                await extension.after_usage(props, job.reservations)
            except Exception:
                logger.exception("extension %s failed after the usage of %s", extension.name, job.request_id)

    async def release(self, job: Job) -> None:
        """Settle a request no worker will: refused or abandoned before any upstream accepted it."""
        if not job.reservations:
            return
        target = job.targets[job.attempt] if job.targets else Target("", "", "")
        props = build_usage(request_id=job.request_id, user_id=job.user_id, alias=job.alias,
                            model_id=target.model_id, provider=target.provider, tokens=Tokens(0, 0), model=None,
                            started=job.enqueued_at, status="refused")
        await self.after_usage(props, job)

    async def cancel(self, request_id: str) -> None:
        """Tell every worker to drop ``request_id`` (a run's reply id): abort its upstream call, or skip
        it if queued."""
        try:
            await self.redis.publish(self.keys.cancel_channel, msgspec.msgpack.encode(Cancel(request_id)))
        except (RedisError, OSError):
            pass  # the job's own timeouts end it
