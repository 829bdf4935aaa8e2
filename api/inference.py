"""What every inference surface of the front door shares.

A surface (chat completions and embeddings in ``completions.py``; the Responses and Messages APIs
in their own modules) reads its request, translates it into the gateway's internal request (an
OpenAI chat or embeddings body), and then goes through the same steps here: :func:`admit`
(which targets may serve it, the extensions' routing, availability, quota), :func:`submit`
(enqueue; wait for a worker), and reading the worker's replies, either as one result
(:func:`single`) or chunk by chunk (:func:`chunks`). Providers, routing, quotas and metering are
therefore never copied per surface; the job's ``surface`` names which one served, for usage.

Each step also notes what it learnt in the request's record (``observe.py``): who asked, the job,
how long it queued, when the first token went out, how it failed. That record becomes the
request's log line and metrics, for every surface alike.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from starlette.types import Receive

from shared.errors import GatewayError, InternalError, InvalidRequest
from shared.extensions import RequestInfo
from shared.routing import plan
from shared.usage import estimate_tokens, prompt_chars
from shared.wire import Job, decode_request

from .auth import Identity
from .gateway import Gateway
from .observe import CLIENT_CLOSED, client_request_id, current
from .replies import ReplyStream, reply_error

_chunk_decoder = msgspec.json.Decoder()


async def admit(gateway: Gateway, identity: Identity, headers: Mapping[str, str], body: bytes, schema: type,
                check: Callable[[Any], None], kind: str, surface: str) -> tuple[Any, Job]:
    """Validate ``body`` (an OpenAI chat or embeddings request) and make its job.

    Which targets may serve it (the strategy's order, the extensions' routing, what is available
    now), and whether the caller's quota allows it.

    :param headers: the client's request headers, for the extensions.
    :param surface: which API the client spoke (``chat``, ``embeddings``, ``responses``, ``messages``).
    """
    record = current.get()
    # The record's id: a request refused before it becomes a job is answered and traced under it too.
    request_id = record.request_id if record is not None and record.job is None else uuid.uuid4().hex
    span = None
    if record is not None:
        record.admitted(surface, identity.user_id)
        if gateway.tracing is not None:
            # Ended with the record (observe.py), whether or not the request becomes a job.
            record.span = span = gateway.tracing.request_started(surface, request_id, identity.user_id,
                                                                 headers.get("traceparent"))
    typed, raw = decode_request(body, schema)
    check(typed)
    alias, targets = await plan(gateway.registry, typed.model, kind, gateway.round_robin_turn, speed=gateway.speed)
    info: RequestInfo | None = None
    if gateway.extensions:
        info = RequestInfo(
            request_id=request_id, user_id=identity.user_id, claims=identity.claims,
            headers={k: v for k, v in headers.items() if k not in ("authorization", "x-api-key")}, kind=kind,
            model=typed.model, prompt_tokens=estimate_tokens(prompt_chars(raw)),
            max_tokens=getattr(typed, "max_completion_tokens", None) or getattr(typed, "max_tokens", None))
        for extension in gateway.extensions:
            targets = await extension.route(info, targets)
            if not targets:
                raise InvalidRequest(f"No route may serve '{typed.model}' for this request.", param="model",
                                     code="no_route")
    targets = await gateway.available(targets)
    job = Job(request_id=request_id, kind=kind, reply_channel=gateway.replies.channel,
              user_id=identity.user_id, targets=targets, alias=alias, body=body, enqueued_at=time.time(),
              surface=surface, client_request_id=client_request_id(headers.get("x-request-id")))
    if record is not None:
        record.job = job
    if span is not None:
        assert gateway.tracing is not None
        job.traceparent = gateway.tracing.request_admitted(span, job, typed.model)
    if info is not None:
        try:
            for extension in gateway.extensions:
                reservation = await extension.check_quota(info)
                if reservation is not None:
                    job.reservations.append(reservation)
        except BaseException:
            await gateway.release(job)
            raise
    return typed, job


async def submit(gateway: Gateway, job: Job) -> ReplyStream:
    """Enqueue the job and wait for a worker to take it; a job that never reached a worker gives
    its reservations back."""
    started = time.perf_counter()
    record = current.get()
    try:
        replies = await gateway.submit(job)
    except GatewayError as exc:
        if record is not None:
            record.failed(exc.code)
        await gateway.release(job)
        raise
    if record is not None:
        record.replies = replies
        record.queue_wait_s = time.perf_counter() - started
    return replies


def response_headers(gateway: Gateway, job: Job) -> dict[str, str]:
    """``X-Request-Id`` (the client's own when it sent a usable one, else the job's) and what the
    extensions add (``x-ratelimit-*``)."""
    headers = {"X-Request-Id": job.client_request_id or job.request_id}
    for extension in gateway.extensions:
        headers.update(extension.response_headers(job.reservations))
    return headers


class ClientClosed(GatewayError):
    """The client hung up before its answer was ready; nobody reads the response (499, as nginx logs it)."""

    status = 499
    type = "invalid_request_error"
    code = CLIENT_CLOSED


async def single(gateway: Gateway, replies: ReplyStream, receive: Receive) -> bytes:
    """The one result of a non-streamed job: the OpenAI response body.

    :param receive: the client's ASGI ``receive``. A client that hangs up while the job runs
        cancels it as a stream's does: the worker stops the upstream call and meters what it used
        as ``cancelled``.
    :raises GatewayError: what the worker reported; :class:`ClientClosed` when the client left.
    """
    try:
        reply = await _unless_client_leaves(replies, receive)
    except BaseException:
        gateway.abandon(replies)
        raise
    if reply.kind == "result" and reply.body is not None:
        # The worker meters the request after sending this: should it die first, the front door does.
        replies.close(reply)
        return reply.body
    replies.close()
    if reply.kind == "error":
        error = reply_error(reply)
        record = current.get()
        if record is not None:
            record.failed(error.code)
        raise error
    raise InternalError(f"Unexpected reply '{reply.kind}' from the worker.")


async def _unless_client_leaves(replies: ReplyStream, receive: Receive) -> Any:
    """``replies.next()``, or :class:`ClientClosed` as soon as ``receive`` says the client is gone.

    The body is read by now, so the next ASGI message can only be the disconnect. One watcher task
    per request, which cancels the waiting one: no second task for the wait itself.
    """
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await replies.next()
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            raise ClientClosed("The client closed the connection before the answer was ready.") from None
        raise
    finally:
        watcher.cancel()


def lost_mid_stream(gateway: Gateway, job: Job, replies: ReplyStream, out_chars: int, exc: GatewayError) -> None:
    """A stream's worker went silent or its messages were lost after output went out: it may be
    dead with the usage unrecorded, so meter what reached the client (``out_chars``; the
    request-id claim keeps it to one record), and note the failure in the request's record."""
    if out_chars:
        gateway.spawn(gateway.meter_lost_worker(job, out_chars, job.enqueued_at, replies.model_id, replies.provider))
    record = current.get()
    if record is not None:
        record.failed(exc.code)


class StreamFailed(Exception):
    """A stream ended with an error; ``error`` is what to tell the client, ``partial`` whether any
    chunk went before it."""

    def __init__(self, error: GatewayError, partial: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.partial = partial


async def chunks(gateway: Gateway, job: Job, replies: ReplyStream) -> AsyncIterator[dict[str, Any]]:
    """The OpenAI ``chat.completion.chunk`` objects of a streamed job, as the worker sends them.

    Ends after the last chunk; a failure ends it with :class:`StreamFailed`. Leaving the loop
    early (the client hung up) stops the worker's upstream call. A worker that dies mid-stream
    is metered for what was sent, as the chat completions surface does.
    """
    finished = False
    sent = False
    out_chars = 0
    record = current.get()
    try:
        while True:
            try:
                reply = await replies.next()
            except GatewayError as exc:
                lost_mid_stream(gateway, job, replies, out_chars, exc)
                raise StreamFailed(exc, sent) from None
            out_chars = reply.out_chars
            for frame in reply.frames:
                if not sent and record is not None:
                    record.first_token()
                sent = True
                yield _chunk_decoder.decode(frame)
            if reply.kind == "done":
                finished = True
                return
            if reply.kind == "error":
                finished = True
                error = reply_error(reply)
                if record is not None:
                    record.failed(error.code)
                raise StreamFailed(error, sent)
    finally:
        if finished:
            replies.close()
        else:
            if record is not None:
                record.failed(CLIENT_CLOSED)  # kept only when nothing failed before
            gateway.abandon(replies)
