"""The job functions arq runs: serve one chat completion or embeddings request.

A job reads the request the front door validated, calls the provider of its target,
re-stamps what comes back so the client sees one consistent completion (our id, the
registry's model name), streams it through a :class:`ReplyPublisher`, and meters it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import struct
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.config import Settings
from shared.errors import GatewayError, InternalError, UpstreamTimeout
from shared.registry import Registry
from shared.usage import Tokens, UsageRecorder, build_usage, estimate_tokens, prompt_chars, tokens_from_usage
from shared.wire import Job, job_decoder

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


class JobRunner:
    """Everything a job needs, built once per worker process.

    :param settings: the gateway settings.
    :param registry: for prices (cost) of the model that served.
    :param redis: the worker's pool.
    :param providers: the enabled providers by name.
    :param usage: records what each request cost.
    :param replies: sends every job's replies to the front doors.
    """

    def __init__(self, settings: Settings, registry: Registry, redis: Redis,
                 providers: Mapping[str, Provider], usage: UsageRecorder, replies: ReplyHub) -> None:
        self.settings = settings
        self.registry = registry
        self.redis = redis
        self.providers = providers
        self.usage = usage
        self.replies = replies
        self.running: dict[str, asyncio.Task] = {}
        # Jobs cancelled because their client hung up, told apart from the worker shutting down.
        self._hung_up: set[str] = set()
        # Cancels that arrived before their job started, kept briefly so the job is skipped.
        self.cancelled: dict[str, float] = {}

    def cancel(self, request_id: str) -> None:
        task = self.running.get(request_id)
        if task is not None:
            self._hung_up.add(request_id)
            task.cancel()
            return
        now = time.monotonic()
        self.cancelled[request_id] = now
        if len(self.cancelled) > 10_000:
            cutoff = now - 2 * self.settings.queue_timeout
            self.cancelled = {k: t for k, t in self.cancelled.items() if t > cutoff}

    async def run(self, payload: bytes) -> None:
        """Run one job in the calling task; a cancel from the front door ends it without failing the arq job.

        Not in a task of its own: during a burst every extra task hop waits a whole loop turn, and
        the hop before the upstream request is on the path to the first token.
        """
        job = job_decoder.decode(payload)
        if self.cancelled.pop(job.request_id, None) is not None:
            return
        task = asyncio.current_task()
        assert task is not None
        self.running[job.request_id] = task
        try:
            await self._serve(job)
        except asyncio.CancelledError:
            if job.request_id in self._hung_up and task.cancelling() == 1:
                task.uncancel()  # the client's cancel, and only that: the job is over, the worker is not
                return
            raise  # the worker is shutting down, or the job timed out
        finally:
            self.running.pop(job.request_id, None)
            self._hung_up.discard(job.request_id)

    async def _serve(self, job: Job) -> None:
        target = job.targets[0]
        provider = self.providers.get(target.provider)
        publisher = self.replies.open(job.reply_channel, job.request_id)
        body = _decode(job.body)
        body["model"] = target.upstream_model
        meter = Meter(body)
        started = time.time()
        status = "ok"
        publisher.start(target.model_id)
        try:
            if provider is None:
                raise InternalError(f"This worker has no provider named {target.provider!r}.")
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    if job.kind == "embeddings":
                        await self._embeddings(job, provider, body, meter, publisher)
                    elif job.stream:
                        await self._stream(job, provider, body, meter, publisher)
                    else:
                        await self._complete(job, provider, body, meter, publisher)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"The request took longer than request_timeout ({self.settings.request_timeout:g} s).") from None
        except ReplyLost as exc:
            # The front door has already told the client; stop the upstream call and meter what it did.
            status = "error"
            logger.warning("job %s: replies cannot be published (%s); abandoning it", job.request_id, exc)
        except GatewayError as exc:
            status = "error"
            with contextlib.suppress(ReplyLost):
                await publisher.finish("error", error=exc)
        except asyncio.CancelledError:
            status = "cancelled"
            await publisher.abandon()
            raise
        except Exception:
            status = "error"
            logger.exception("job %s failed", job.request_id)
            with contextlib.suppress(ReplyLost):
                await publisher.finish("error", error=InternalError("The worker failed while serving this request."))
        finally:
            if meter.accepted:
                # Shielded: a cancelled job must still meter what the upstream already produced.
                await asyncio.shield(self._record(job, target.model_id, target.provider, meter, started, status))

    async def _complete(self, job: Job, provider: Provider, body: dict, meter: Meter,
                        publisher: ReplyPublisher) -> None:
        body.pop("stream_options", None)
        result = await provider.complete(body)
        meter.accepted = True
        meter.observe(result.get("choices") or [])
        meter.usage = tokens_from_usage(result.get("usage"))
        result["id"] = f"chatcmpl-{job.request_id}"
        result["object"] = "chat.completion"
        result["model"] = job.targets[0].model_id
        result["created"] = int(time.time())
        if meter.usage is None:
            result["usage"] = usage_object(meter.tokens())
        await publisher.finish("result", body=_encode(result))

    async def _stream(self, job: Job, provider: Provider, body: dict, meter: Meter,
                      publisher: ReplyPublisher) -> None:
        # Always ask for usage: metering needs it whether or not the client does.
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        body["stream_options"] = {**options, "include_usage": True}
        chunk_id, created, model_id = f"chatcmpl-{job.request_id}", int(time.time()), job.targets[0].model_id
        usage_sent = False
        async for chunk in provider.stream(body):
            meter.accepted = True
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
            publisher.frame(_encode(chunk))
        if job.include_usage and not usage_sent:
            publisher.frame(_encode({
                "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [], "usage": usage_object(meter.tokens()),
            }))
        await publisher.finish("done")

    async def _embeddings(self, job: Job, provider: Provider, body: dict, meter: Meter,
                          publisher: ReplyPublisher) -> None:
        encoding = body.get("encoding_format") or "float"
        dimensions = body.get("dimensions")
        # The upstream always answers in floats; shortening and base64 happen here, so every
        # upstream supports both whatever it implements itself.
        body["encoding_format"] = "float"
        result = await provider.embed(body)
        meter.accepted = True
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
        result["model"] = job.targets[0].model_id
        result["usage"] = {"prompt_tokens": meter.tokens().tokens_in, "total_tokens": meter.tokens().tokens_in}
        await publisher.finish("result", body=_encode(result))

    async def _record(self, job: Job, model_id: str, provider: str, meter: Meter, started: float,
                      status: str) -> None:
        props = build_usage(request_id=job.request_id, user_id=job.user_id, alias=job.alias, model_id=model_id,
                            provider=provider, tokens=meter.tokens(), model=self.registry.models.get(model_id),
                            started=started, status=status)
        try:
            await self.usage.record(props)
        except Exception:
            logger.exception("could not record usage of %s", job.request_id)
