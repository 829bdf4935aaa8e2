"""The job functions arq runs: serve one chat completion or embeddings request.

A job reads the request the front door validated, calls the provider of its target,
re-stamps what comes back so the client sees one consistent completion (our id, the
registry's model name), streams it through a :class:`ReplyPublisher`, and meters it.

Every job, whichever path claimed it (arq's own loop or the worker's batch claim, which skips
arq's ``on_job_start``/``on_job_end``), goes through :meth:`JobRunner.run`, so the runner's own
``on_job_start``/``on_job_end`` hooks see them all, and its log records name the job's request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import Redis

from redis.exceptions import RedisError

from shared.config import Settings
from shared.errors import GatewayError, InternalError, NoWorker, ProviderError, Unavailable, UpstreamTimeout
from shared.extensions import Extension
from shared.fleet import PoolCapacity
from shared.health import RouteHealth
from shared.logs import log_context
from shared.queue import Enqueuer, reply_id
from shared.tracing import Tracing
from shared.overlay import FixedRegistry, RegistrySource
from shared.usage import (Tokens, UsageProperties, UsageRecorder, build_usage, estimate_tokens, prompt_chars,
                          tokens_from_usage)
from shared.wire import Job, Target, job_decoder

from .providers import Provider
from .publisher import ReplyHub, ReplyLost, ReplyPublisher

logger = logging.getLogger("reactor.worker")
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class Meter:
    """What one request has cost so far, from upstream usage or, failing that, an estimate."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.usage: Tokens | None = None
        self.accepted = False      # the upstream answered 2xx, so the request counts
        self.out_chars = 0
        self.started = time.monotonic()
        self.first_token_s: float | None = None
        self.error: GatewayError | None = None  # why this attempt failed, if it did

    def observe(self, choices: list[Any]) -> None:
        for choice in choices:
            delta = choice.get("delta") or choice.get("message") or {}
            content = delta.get("content")
            if isinstance(content, str):
                self.out_chars += len(content)
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                self.out_chars += len(fn.get("arguments") or "") + len(fn.get("name") or "")

    def tokens(self) -> Tokens:
        if self.usage is not None:
            return self.usage
        return Tokens(estimate_tokens(prompt_chars(self._body)), estimate_tokens(self.out_chars), estimated=True)


def usage_object(tokens: Tokens) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens.tokens_in,
        "completion_tokens": tokens.tokens_out,
        "total_tokens": tokens.tokens_in + tokens.tokens_out,
        "prompt_tokens_details": {"cached_tokens": tokens.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": tokens.reasoning_tokens},
    }


def shape_embedding(vector: list[float], dimensions: int | None, encoding: str) -> list[float] | str:
    """Shorten to ``dimensions`` (re-normalised to unit length, as OpenAI's shortened vectors are) and encode."""
    if dimensions and len(vector) > dimensions:
        vector = vector[:dimensions]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


class Attempt(NamedTuple):
    """One upstream attempt of a job on this worker."""

    target: Target
    error: GatewayError | None     # why it failed; None when the upstream answered
    first_token_s: float | None    # seconds from the attempt's start to its first token (or whole answer)


@dataclass
class JobOutcome:
    """How a job ended on this worker, for the ``on_job_end`` hook.

    ``status`` is the usage status (``ok``, ``error``, ``incomplete``, ``cancelled``), or ``handoff``
    when the job went on to another provider's pool, whose worker reports the rest. ``tried``
    counts the request's targets tried so far on every worker; ``attempts`` are this worker's.
    """

    target: Target                       # the target this worker tried last
    status: str
    attempts: list[Attempt]
    tried: int
    usage: UsageProperties | None        # what was settled; None for a hand-off
    error: GatewayError | None           # what the client was told, when it failed
    duration_s: float


class Handoff:
    """Moves a job to another provider's worker pool, for a fallback this worker cannot serve itself.

    :param enqueuer: puts jobs on provider queues.
    :param capacity: which pools have live workers, and how much they may hold.
    :param queue_timeout: how long a handed-off job may wait for its new pool.
    :param user_share: the part of the new pool the job's user may hold (``queue_user_share``).
    """

    def __init__(self, enqueuer: Enqueuer, capacity: PoolCapacity, queue_timeout: float,
                 user_share: float = 1.0) -> None:
        self._enqueuer = enqueuer
        self._capacity = capacity
        self._queue_timeout = queue_timeout
        self._user_share = user_share

    async def has_workers(self, provider: str) -> bool:
        try:
            await self._capacity.limit(provider)
        except (NoWorker, RedisError, OSError):
            return False
        return True

    async def send(self, job: Job, provider: str) -> None:
        """Queue ``job`` on ``provider``'s pool.

        :raises GatewayError: the pool has no live worker or no room, for anyone or for the job's
            user (Redis errors as Unavailable).
        """
        try:
            room = await self._capacity.room(provider, self._user_share)
            admitted = await self._enqueuer.enqueue(job, provider, self._queue_timeout, *room)
        except (RedisError, OSError):
            raise Unavailable("The job queue (Redis) is unreachable.") from None
        refused = admitted.refusal(provider)
        if refused is not None:
            raise refused


class JobRunner:
    """Everything a job needs, built once per worker process.

    :param settings: the gateway settings.
    :param registry: for prices (cost) of the model that served: anything with the current
        registry as ``.current`` (a reloading ``RegistrySource``).
    :param redis: the worker's pool.
    :param providers: the enabled providers by name.
    :param usage: records what each request cost.
    :param replies: sends every job's replies to the front doors.
    :param health: where route failures and speeds are reported, and cooldowns read.
    :param handoff: moves a job to another pool when its next candidate is served elsewhere.
    :param extensions: their ``after_usage`` hooks run once per request.
    :param on_job_start: called with each job as it starts (not for one cancelled before it started).
    :param on_job_end: called with each started job and its :class:`JobOutcome` once it is over,
        after its usage is settled. Hooks must be quick; what they raise is logged and dropped.
    :param tracing: when given, each job gets a span (a child of its request's span at the front
        door) with one child per upstream attempt (``shared/tracing.py``).
    """

    def __init__(self, settings: Settings, registry: RegistrySource | FixedRegistry, redis: Redis,
                 providers: Mapping[str, Provider], usage: UsageRecorder, replies: ReplyHub, *,
                 health: RouteHealth, handoff: Handoff, extensions: Sequence[Extension] = (),
                 on_job_start: Callable[[Job], None] | None = None,
                 on_job_end: Callable[[Job, JobOutcome], None] | None = None,
                 tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing
        self.registry_source = registry
        self.redis = redis
        self.providers = providers
        self.usage = usage
        self.replies = replies
        self.health = health
        self.handoff = handoff
        self.extensions = list(extensions)
        self.on_job_start = on_job_start
        self.on_job_end = on_job_end
        # Running jobs by the reply id of their run (the request id, unless the request runs again
        # after its worker was lost), which is what cancels name.
        self.running: dict[str, asyncio.Task] = {}
        # Jobs cancelled because their client hung up, told apart from the worker shutting down.
        self._hung_up: set[str] = set()
        # Cancels that arrived before their job started, kept briefly so the job is skipped.
        self.cancelled: dict[str, float] = {}

    def cancel(self, run_id: str) -> None:
        """Stop the job whose run ``run_id`` names (its ``reply_id``), or skip it should it start later."""
        task = self.running.get(run_id)
        if task is not None:
            self._hung_up.add(run_id)
            task.cancel()
            return
        now = time.monotonic()
        self.cancelled[run_id] = now
        if len(self.cancelled) > 10_000:
            cutoff = now - 2 * self.settings.queue_timeout
            self.cancelled = {k: t for k, t in self.cancelled.items() if t > cutoff}

    async def run(self, payload: bytes) -> None:
        """Run one job in the calling task; a cancel from the front door ends it without failing the arq job.

        Not in a task of its own: during a burst every extra task hop waits a whole loop turn, and
        the hop before the upstream request is on the path to the first token.
        """
        job = job_decoder.decode(payload)
        run_id = reply_id(job.request_id, job.run)
        if self.cancelled.pop(run_id, None) is not None:
            return
        task = asyncio.current_task()
        assert task is not None
        self.running[run_id] = task
        # The job's task is its own, so every record logged while serving it names its request.
        context = log_context.set(job)
        if self.on_job_start is not None:
            try:
                self.on_job_start(job)
            except Exception:
                logger.exception("on_job_start failed for %s", job.request_id)
        try:
            await self._serve(job)
        except asyncio.CancelledError:
            if run_id in self._hung_up and task.cancelling() == 1:
                task.uncancel()  # the client's cancel, and only that: the job is over, the worker is not
                return
            raise  # the worker is shutting down, or the job timed out
        finally:
            self.running.pop(run_id, None)
            self._hung_up.discard(run_id)
            log_context.reset(context)

    async def _serve(self, job: Job) -> None:
        """Serve ``job`` with its current target, falling back to the next candidates on failure.

        A target that fails before any of the answer went out is replaced by the next candidate:
        served here when this worker has its provider, else handed to that provider's pool (the
        front door keeps listening on the same reply channel). Once output went out, nothing is
        retried: the stream ends with an ``incomplete_response`` error and what was produced is
        metered.
        """
        publisher = self.replies.open(job.reply_channel, reply_id(job.request_id, job.run), seq=job.reply_seq)
        started = time.time()
        clock = time.monotonic()
        attempt, tried = job.attempt, job.tried
        meter: Meter | None = None
        target = job.targets[attempt]
        status = "ok"
        handed_off = False
        attempts: list[Attempt] = []
        failure: GatewayError | None = None
        tracing = self.tracing
        span = tracing.job_started(job) if tracing is not None else None
        # The overall deadline runs from when the client asked, across attempts and hand-offs.
        remaining = self.settings.request_timeout - max(0.0, started - job.enqueued_at) if job.enqueued_at else \
            self.settings.request_timeout
        try:
            try:
                async with asyncio.timeout(max(remaining, 0.001)):
                    while True:
                        target = job.targets[attempt]
                        tried += 1
                        body = _decode(job.body)
                        body["model"] = target.upstream_model
                        # Assigned before the call: a cancelled attempt still meters what it used.
                        meter = Meter(body)
                        if span is None:
                            await self._attempt(job, target, body, meter, publisher)
                        else:
                            await self._traced_attempt(span, job, target, body, meter, publisher)
                        attempts.append(Attempt(target, meter.error, meter.first_token_s))
                        if meter.error is None:
                            await self.health.succeeded(target, meter.first_token_s)
                            break
                        exc = meter.error
                        await self.health.failed(target, exc)
                        following = (await self._next_candidate(job, attempt, tried)
                                     if exc.retryable and not publisher.has_output else None)
                        if following is None:
                            raise exc
                        nxt = job.targets[following]
                        logger.warning("request %s: %s on %s failed (%s: %s); falling back to %s on %s",
                                       job.request_id, target.model_id, target.provider, exc.code, exc.message,
                                       nxt.model_id, nxt.provider)
                        attempt = following
                        if nxt.provider not in self.providers:
                            handed_off = True
                            failure = await self._hand_off(job, attempt, tried, publisher)
                            status = "handoff" if failure is None else "error"
                            return
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The request took longer than request_timeout ({self.settings.request_timeout:g} s).") from None
        except ReplyLost as exc:
            # The front door has already told the client; stop the upstream call and meter what it did.
            status = "error"
            logger.warning("job %s: replies cannot be published (%s); abandoning it", job.request_id, exc)
        except GatewayError as exc:
            status = "error"
            if publisher.has_output:
                status = "incomplete"
                # Never re-asked elsewhere with the partial text as a prefix: the client learns the
                # answer is cut, and what it got is metered.
                exc = ProviderError(f"The answer is incomplete: {exc.message}", status=exc.status,
                                    code="incomplete_response", retryable=False)
            failure = exc
            with contextlib.suppress(ReplyLost):
                await publisher.finish("error", error=exc)
        except asyncio.CancelledError:
            status = "cancelled"
            await publisher.abandon()
            raise
        except Exception:
            status = "error"
            logger.exception("job %s failed", job.request_id)
            failure = InternalError("The worker failed while serving this request.")
            with contextlib.suppress(ReplyLost):
                await publisher.finish("error", error=failure)
        finally:
            usage = None
            try:
                if not handed_off:
                    # Shielded: a cancelled job must still meter what the upstream already produced.
                    usage = await asyncio.shield(self._settle(job, target, meter, started, status, tried))
            finally:
                outcome = JobOutcome(target, status, attempts, tried, usage, failure, time.monotonic() - clock)
                self._ended(job, outcome)
                if span is not None:
                    assert tracing is not None
                    tracing.job_ended(span, target, status, tried, failure.code if failure else None,
                                      usage.tokens_in if usage else None, usage.tokens_out if usage else None,
                                      usage.cost_usd if usage else None)

    def _ended(self, job: Job, outcome: JobOutcome) -> None:
        """The job's line in the log (at debug: the front door logs every request), then the hook."""
        if logger.isEnabledFor(logging.DEBUG):
            usage = outcome.usage
            ttft = next((a.first_token_s for a in reversed(outcome.attempts) if a.error is None), None)
            logger.debug("job ended", extra={"fields": {
                "status": outcome.status, "surface": job.surface, "user": job.user_id, "alias": job.alias,
                "model": outcome.target.model_id, "provider": outcome.target.provider, "attempts": outcome.tried,
                "code": outcome.error.code if outcome.error else None,
                "tokens_in": usage.tokens_in if usage else None, "tokens_out": usage.tokens_out if usage else None,
                "cost_usd": usage.cost_usd if usage else None,
                "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
                "duration_ms": round(outcome.duration_s * 1000, 2)}})
        if self.on_job_end is not None:
            try:
                self.on_job_end(job, outcome)
            except Exception:
                logger.exception("on_job_end failed for %s", job.request_id)

    async def _attempt(self, job: Job, target: Target, body: dict, meter: Meter, publisher: ReplyPublisher) -> None:
        """Serve the job with one target; ``meter.error`` says why it failed, if it did."""
        provider = self.providers.get(target.provider)
        publisher.start(target.model_id, target.provider)
        try:
            if provider is None:
                raise InternalError(f"This worker has no provider named {target.provider!r}.")
            if job.kind == "embeddings":
                await self._embeddings(job, target, provider, body, meter, publisher)
            elif job.stream:
                await self._stream(job, target, provider, body, meter, publisher)
            else:
                await self._complete(job, target, provider, body, meter, publisher)
        except GatewayError as exc:
            meter.error = exc

    async def _traced_attempt(self, span: Any, job: Job, target: Target, body: dict, meter: Meter,
                              publisher: ReplyPublisher) -> None:
        """:meth:`_attempt` in a span of its own, a child of the job's ``span``."""
        tracing = self.tracing
        assert tracing is not None
        attempt_span = tracing.attempt_started(span, job, target)
        try:
            await self._attempt(job, target, body, meter, publisher)
        finally:
            error = meter.error
            tracing.attempt_ended(attempt_span, error.code if error is not None else None,
                                  meter.tokens() if meter.accepted and error is None else None)

    async def _next_candidate(self, job: Job, attempt: int, tried: int) -> int | None:
        """The index of the next target to try, or None: past ``max_attempts``, or none is available.

        Skipped: routes already tried for this request, routes cooling down (every replica's
        failures count), and pools with no live worker.
        """
        if tried >= self.settings.routing.max_attempts:
            return None
        used = {(t.provider, t.upstream_model) for t in job.targets[:attempt + 1]}
        rest = job.targets[attempt + 1:]
        cooling = await self.health.cooling(rest)
        for offset, candidate in enumerate(rest):
            route = (candidate.provider, candidate.upstream_model)
            if route in used or route in cooling:
                continue
            if candidate.provider in self.providers or await self.handoff.has_workers(candidate.provider):
                return attempt + 1 + offset
        return None

    async def _hand_off(self, job: Job, attempt: int, tried: int,
                        publisher: ReplyPublisher) -> GatewayError | None:
        """Give the job to the pool of ``job.targets[attempt]``; its worker continues the reply.

        The hand-off message goes out before the job is queued, so the front door always sees it
        before anything from the next worker. When the pool cannot take it, the client is told why
        from here, the request is settled, and that error is returned.
        """
        target = job.targets[attempt]
        await publisher.finish("handoff")
        job.attempt, job.tried, job.reply_seq = attempt, tried, publisher.next_seq
        try:
            await self.handoff.send(job, target.provider)
        except GatewayError as exc:
            logger.warning("request %s: cannot hand off to %s (%s)", job.request_id, target.provider, exc.message)
            # This worker answers after all; the front door takes its message after the hand-off.
            job.reply_seq = publisher.next_seq
            with contextlib.suppress(ReplyLost):
                await self.replies.open(job.reply_channel, reply_id(job.request_id, job.run),
                                        seq=job.reply_seq).finish("error", error=exc)
            await self._settle(job, target, None, time.time(), "error", tried)
            return exc
        return None

    async def _complete(self, job: Job, target: Target, provider: Provider, body: dict, meter: Meter,
                        publisher: ReplyPublisher) -> None:
        body.pop("stream_options", None)
        result = await provider.complete(body)
        meter.first_token_s = time.monotonic() - meter.started
        meter.accepted = True
        meter.observe(result.get("choices") or [])
        meter.usage = tokens_from_usage(result.get("usage"))
        result["id"] = f"chatcmpl-{job.request_id}"
        result["object"] = "chat.completion"
        result["model"] = target.model_id
        result["created"] = int(time.time())
        if meter.usage is None:
            result["usage"] = usage_object(meter.tokens())
        await publisher.finish("result", body=_encode(result))

    async def _stream(self, job: Job, target: Target, provider: Provider, body: dict, meter: Meter,
                      publisher: ReplyPublisher) -> None:
        # Always ask for usage: metering needs it whether or not the client does.
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        body["stream_options"] = {**options, "include_usage": True}
        chunk_id, created, model_id = f"chatcmpl-{job.request_id}", int(time.time()), target.model_id
        usage_sent = False
        # A first chunk with only the role is held back until the answer starts: an upstream that
        # fails right after it can still be replaced by the next candidate.
        held: bytes | None = None
        async for chunk in provider.stream(body):
            if not meter.accepted:
                meter.accepted = True
                meter.first_token_s = time.monotonic() - meter.started
            tokens = tokens_from_usage(chunk.get("usage"))
            if tokens is not None:
                meter.usage = tokens
            choices = chunk.get("choices") or []
            if not choices and not (tokens is not None and job.include_usage):
                continue  # a usage chunk the client did not ask for, or an upstream's empty preamble
            meter.observe(choices)
            publisher.out_chars = meter.out_chars
            chunk["id"], chunk["object"], chunk["created"], chunk["model"] = (
                chunk_id, "chat.completion.chunk", created, model_id)
            if job.include_usage:
                if choices:
                    chunk["usage"] = None
                else:
                    usage_sent = True
            else:
                chunk.pop("usage", None)
            if not publisher.has_output and held is None and _only_role(choices):
                held = _encode(chunk)
                continue
            if held is not None:
                publisher.frame(held)
                held = None
            publisher.frame(_encode(chunk))
        if held is not None:
            publisher.frame(held)
        if job.include_usage and not usage_sent:
            publisher.frame(_encode({
                "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [], "usage": usage_object(meter.tokens()),
            }))
        await publisher.finish("done")

    async def _embeddings(self, job: Job, target: Target, provider: Provider, body: dict, meter: Meter,
                          publisher: ReplyPublisher) -> None:
        encoding = body.get("encoding_format") or "float"
        dimensions = body.get("dimensions")
        # The upstream always answers in floats; shortening and base64 happen here, so every
        # upstream supports both whatever it implements itself.
        body["encoding_format"] = "float"
        result = await provider.embed(body)
        meter.accepted = True
        meter.first_token_s = time.monotonic() - meter.started
        data = result.get("data")
        if not isinstance(data, list):
            raise InternalError("The upstream's embeddings answer has no 'data' list.")
        for item in data:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, str):
                raw = base64.b64decode(vector)
                vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            if not isinstance(vector, list):
                raise InternalError("The upstream's embeddings answer holds a vector of the wrong type.")
            item["embedding"] = shape_embedding(vector, dimensions, encoding)
        meter.usage = tokens_from_usage({"completion_tokens": 0, **(result.get("usage") or {})})
        result["object"] = "list"
        result["model"] = target.model_id
        result["usage"] = {"prompt_tokens": meter.tokens().tokens_in, "total_tokens": meter.tokens().tokens_in}
        await publisher.finish("result", body=_encode(result))

    async def _settle(self, job: Job, target: Target, meter: Meter | None, started: float, status: str,
                      attempts: int) -> UsageProperties:
        """Meter the request if an upstream accepted it, then run the extensions' after-usage hooks
        (with zero usage when nothing was used, so reservations are released). Returns the record."""
        # A job cancelled mid-call counts too: the upstream already has the prompt (estimated, as nothing came back).
        used = meter is not None and (meter.accepted or status == "cancelled")
        tokens = meter.tokens() if used else Tokens(0, 0)
        props = build_usage(request_id=job.request_id, user_id=job.user_id, alias=job.alias, model_id=target.model_id,
                            provider=target.provider, tokens=tokens,
                            model=self.registry_source.current.models.get(target.model_id),
                            started=started, status=status, attempts=attempts, surface=job.surface)
        if used:
            try:
                await self.usage.record(props)
            except Exception:
                logger.exception("could not record usage of %s", job.request_id)
        for extension in self.extensions:
            try:
                await extension.after_usage(props, job.reservations)
            except Exception:
                logger.exception("extension %s failed after the usage of %s", extension.name, job.request_id)
        return props


def _only_role(choices: list[Any]) -> bool:
    """Whether a chunk's choices say nothing yet: a role, empty content, no tool call, no finish."""
    if not choices:
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or choice.get("finish_reason") is not None:
            return False
        if delta.get("content") or delta.get("tool_calls") or delta.get("function_call") or delta.get("refusal"):
            return False
    return True
