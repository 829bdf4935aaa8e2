"""``POST /ai/v1/chat/completions`` and ``POST /ai/v1/embeddings``.

Route → validate → resolve the model → enqueue → relay what the worker sends back.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import GatewayError, InternalError, InvalidRequest
from shared.extensions import RequestInfo
from shared.routing import plan
from shared.usage import estimate_tokens, prompt_chars
from shared.wire import ChatRequest, EmbeddingsRequest, Job, check_chat, check_embeddings, decode_request

from .gateway import Gateway
from .replies import ReplyStream, reply_error
from .sse import EventStreamResponse

_DONE = b"data: [DONE]\n\n"


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def _admit(request: Request, schema: type, check: Callable[[Any], None],
                 kind: str) -> tuple[Gateway, Any, Job]:
    """The steps every inference route shares: who asks, what they ask, which targets may serve
    it (the strategy's order, the extensions' routing, what is available now), and whether the
    caller's quota allows it."""
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    body = await gateway.read_body(request)
    typed, raw = decode_request(body, schema)
    check(typed)
    alias, targets = await plan(gateway.registry, typed.model, kind, gateway.round_robin_turn, speed=gateway.speed)
    request_id = uuid.uuid4().hex
    info: RequestInfo | None = None
    if gateway.extensions:
        info = RequestInfo(
            request_id=request_id, user_id=identity.user_id, claims=identity.claims,
            headers={k: v for k, v in request.headers.items() if k != "authorization"}, kind=kind, model=typed.model,
            prompt_tokens=estimate_tokens(prompt_chars(raw)),
            max_tokens=getattr(typed, "max_completion_tokens", None) or getattr(typed, "max_tokens", None))
        for extension in gateway.extensions:
            targets = await extension.route(info, targets)
            if not targets:
                raise InvalidRequest(f"No route may serve '{typed.model}' for this request.", param="model",
                                     code="no_route")
    targets = await gateway.available(targets)
    job = Job(request_id=request_id, kind=kind, reply_channel=gateway.replies.channel,
              user_id=identity.user_id, targets=targets, alias=alias, body=body, enqueued_at=time.time())
    if info is not None:
        try:
            for extension in gateway.extensions:
                reservation = await extension.check_quota(info)
                if reservation is not None:
                    job.reservations.append(reservation)
        except BaseException:
            await gateway.release(job)
            raise
    return gateway, typed, job


async def _submit(gateway: Gateway, job: Job) -> ReplyStream:
    """Enqueue the job; a job that never reached a worker gives its reservations back."""
    try:
        return await gateway.submit(job)
    except GatewayError:
        await gateway.release(job)
        raise


async def chat_completions(request: Request) -> Response:
    gateway, chat, job = await _admit(request, ChatRequest, check_chat, "chat")
    job.stream = stream = bool(chat.stream)
    job.include_usage = stream and bool(chat.stream_options and chat.stream_options.include_usage)
    replies = await _submit(gateway, job)
    headers = _headers(gateway, job)
    if not stream:
        return await _single(gateway, replies, headers)
    try:
        first = await replies.next()
    except BaseException:
        gateway.abandon(replies)
        raise
    if first.kind == "error" and not first.frames:
        # Nothing was sent yet, so the failure can still be a proper HTTP status.
        replies.close()
        raise reply_error(first)
    return EventStreamResponse(_relay(gateway, job, replies, first), headers=headers)


async def embeddings(request: Request) -> Response:
    gateway, _, job = await _admit(request, EmbeddingsRequest, check_embeddings, "embeddings")
    replies = await _submit(gateway, job)
    return await _single(gateway, replies, _headers(gateway, job))


def _headers(gateway: Gateway, job: Job) -> dict[str, str]:
    headers = {"X-Request-Id": job.request_id}
    for extension in gateway.extensions:
        headers.update(extension.response_headers(job.reservations))
    return headers


async def _single(gateway: Gateway, replies: ReplyStream, headers: dict[str, str]) -> Response:
    try:
        reply = await replies.next()
    except BaseException:
        gateway.abandon(replies)
        raise
    replies.close()
    if reply.kind == "result" and reply.body is not None:
        return Response(reply.body, media_type="application/json", headers=headers)
    if reply.kind == "error":
        raise reply_error(reply)
    raise InternalError(f"Unexpected reply '{reply.kind}' from the worker.")


async def _relay(gateway: Gateway, job: Job, replies: ReplyStream, reply) -> AsyncIterator[bytes]:
    finished = False
    try:
        while True:
            out_chars = reply.out_chars
            frames = reply.frames
            out = _sse(frames[0]) if len(frames) == 1 else b"".join([_sse(frame) for frame in frames])
            if reply.kind == "done":
                finished = True
                yield out + _DONE
                return
            if reply.kind == "error":
                finished = True
                yield out + _sse(reply_error(reply).to_json())
                return
            if out:
                yield out
            try:
                reply = await replies.next()
            except GatewayError as exc:
                # The worker went silent or its messages were lost: it may be dead with the
                # usage unrecorded, so meter what reached the client.
                if out_chars:
                    gateway.spawn(gateway.meter_lost_worker(job, out_chars, job.enqueued_at, replies.model_id))
                yield _sse(exc.to_json())
                return
    finally:
        if finished:
            replies.close()
        else:
            # The client hung up, or the worker went silent: either way the upstream call must stop.
            gateway.abandon(replies)
