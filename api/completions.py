"""The OpenAI surface: ``POST /ai/v1/chat/completions`` and ``POST /ai/v1/embeddings``.

Route → validate → resolve the model → enqueue → relay what the worker sends back. The worker
already speaks this surface's chunks, so a stream's frames are relayed as bytes, untouched; the
relay notes in the request's record (``observe.py``) when the first token went out and how the
stream ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import GatewayError
from shared.wire import ChatRequest, EmbeddingsRequest, Job, check_chat, check_embeddings

from .gateway import Gateway
from .inference import admit, lost_mid_stream, response_headers, single, submit
from .observe import CLIENT_CLOSED, current
from .replies import ReplyStream, reply_error
from .sse import EventStreamResponse, LastFrame

_DONE = b"data: [DONE]\n\n"


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def _read_and_admit(request: Request, schema: type, check: Callable[[Any], None],
                          kind: str) -> tuple[Gateway, Any, Job]:
    gateway: Gateway = request.app.state.gateway
    identity = await gateway.authenticate(request)
    body = await gateway.read_body(request)
    typed, job = await admit(gateway, identity, request.headers, body, schema, check, kind, surface=kind)
    return gateway, typed, job


async def chat_completions(request: Request) -> Response:
    gateway, chat, job = await _read_and_admit(request, ChatRequest, check_chat, "chat")
    job.stream = stream = bool(chat.stream)
    job.include_usage = stream and bool(chat.stream_options and chat.stream_options.include_usage)
    if not stream:
        replies = await submit(gateway, job)
        return await _single(gateway, replies, response_headers(gateway, job), request)
    # The queue and the wait for the first token happen inside the response, which sends keep-alive
    # comments meanwhile; a failure before anything went out is still a proper HTTP status.
    return EventStreamResponse(_relay(gateway, job), headers=response_headers(gateway, job),
                               keepalive=gateway.settings.sse_keepalive)


async def embeddings(request: Request) -> Response:
    gateway, _, job = await _read_and_admit(request, EmbeddingsRequest, check_embeddings, "embeddings")
    replies = await submit(gateway, job)
    return Response(await single(gateway, replies, request.receive), media_type="application/json",
                    headers=response_headers(gateway, job))


async def _single(gateway: Gateway, replies: ReplyStream, headers: dict[str, str], request: Request) -> Response:
    return Response(await single(gateway, replies, request.receive), media_type="application/json", headers=headers)


async def _relay(gateway: Gateway, job: Job) -> AsyncIterator[bytes]:
    replies = await submit(gateway, job)
    finished = False
    record = current.get()
    try:
        try:
            reply = await replies.next()
        except GatewayError as exc:
            if record is not None:
                record.failed(exc.code)
            raise
        if reply.kind == "error" and not reply.frames:
            finished = True
            error = reply_error(reply)
            if record is not None:
                record.failed(error.code)
            raise error
        while True:
            out_chars = reply.out_chars
            frames = reply.frames
            out = _sse(frames[0]) if len(frames) == 1 else b"".join([_sse(frame) for frame in frames])
            if out and record is not None and record.first_token_at is None:
                record.first_token()
            if reply.kind == "done":
                finished = True
                yield LastFrame(out + _DONE)
                return
            if reply.kind == "error":
                finished = True
                error = reply_error(reply)
                if record is not None:
                    record.failed(error.code)
                yield LastFrame(out + _sse(error.to_json()))
                return
            if out:
                yield out
            try:
                reply = await replies.next()
            except GatewayError as exc:
                lost_mid_stream(gateway, job, replies, out_chars, exc)
                yield LastFrame(_sse(exc.to_json()))
                return
    finally:
        if finished:
            replies.close()
        else:
            # The client hung up, or the worker went silent: either way the upstream call must stop.
            if record is not None:
                record.failed(CLIENT_CLOSED)  # kept only when the worker's silence was not recorded first
            gateway.abandon(replies)
