"""A Server-Sent Events response that notices a client hanging up while it waits.

Starlette's StreamingResponse only learns of a disconnect on some ASGI servers; an LLM
stream can sit for seconds between tokens, and a client that left must cancel the upstream
call at once. So this response watches ``receive`` for ``http.disconnect`` beside sending,
and cancels the event iterator (whose ``finally`` tells the worker) the moment it comes.

With ``keepalive``, the wait for the first frame (the queue, a slow upstream) happens inside the
response: the head waits for the first frame, so a failure before it is still an HTTP status,
but every ``keepalive`` seconds without one sends an SSE comment (the head with the first), so
proxies that cut idle connections keep the stream open. After the first frame the loop is the
plain one: no timer per event.

Per event, the body frame skips the middleware wrappers of ``send`` (each of which only looks at
the head) and goes to the ``send`` our outermost middleware left in the scope (:data:`BODY_SEND`),
and a :class:`LastFrame` carries the end of the body with it: one write fewer per stream. At a
thousand streams of a token every 100 ms both are thousands of calls a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from shared.errors import GatewayError

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and friends buffer responses unless told not to; a buffered SSE stream stalls.
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}
# An SSE comment: every client ignores it, every proxy sees bytes moving.
KEEPALIVE = b": keep-alive\n\n"
# The scope key under which api/observe.py's middleware leaves the ``send`` it was handed: once the
# head went out through every wrapper, body frames go straight to it.
BODY_SEND = "reactor.body_send"


class LastFrame(bytes):
    """A frame after which the stream is over: it goes out with the end of the body, in one write."""


class EventStreamResponse:
    """Sends ``events`` (already framed as ``data: …\\n\\n`` bytes) as ``text/event-stream``.

    :param events: the byte frames; closed (cancelled) when the client disconnects.
    :param headers: extra response headers.
    :param keepalive: seconds between keep-alive comments while the first frame is awaited; None
        sends the head at once and no comments. With it, a :class:`GatewayError` the events raise
        before the head went out is raised from here (the app renders it as an HTTP error); after
        the head, it becomes a final ``data: {"error": …}`` event.
    """

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None,
                 keepalive: float | None = None) -> None:
        self.events = events
        self.headers = {**SSE_HEADERS, **(headers or {})}
        self.keepalive = keepalive
        self._head_sent = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.create_task(self._send_events(send, scope.get(BODY_SEND, send)))
        watcher = asyncio.create_task(self._wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
        if not self._head_sent and not sender.cancelled() and isinstance(sender.exception(), GatewayError):
            raise sender.exception()  # type: ignore[misc]

    def _head(self) -> Message:
        self._head_sent = True
        raw = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        return {"type": "http.response.start", "status": 200, "headers": raw}

    async def _send_events(self, send: Send, body_send: Send) -> None:
        """:param body_send: where body frames go once the head went out through ``send``."""
        try:
            if self.keepalive is None:
                await send(self._head())
            elif not await self._first_frame(send, body_send):
                return
            async for frame in self.events:
                last = type(frame) is LastFrame
                await body_send({"type": "http.response.body", "body": frame, "more_body": not last})
                if last:
                    return
            await body_send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write; the watcher sees the disconnect too
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _first_frame(self, send: Send, body_send: Send) -> bool:
        """Wait for the first frame, sending a comment every ``keepalive`` seconds; then send the
        head (if no comment did) and the frame. False when the stream is already over."""
        waiting = asyncio.create_task(_anext(self.events))
        try:
            while not (await asyncio.wait({waiting}, timeout=self.keepalive))[0]:
                if not self._head_sent:
                    await send(self._head())
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
        except BaseException:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            raise
        try:
            frame: bytes | None = waiting.result()
            more = frame is not None and type(frame) is not LastFrame
        except GatewayError as exc:
            if not self._head_sent:
                raise
            frame, more = b"data: " + exc.to_json() + b"\n\n", False
        if not self._head_sent:
            await send(self._head())
        await body_send({"type": "http.response.body", "body": frame or b"", "more_body": more})
        return more

    @staticmethod
    async def _wait_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


async def _anext(events: AsyncIterator[bytes]) -> Any:
    """The next frame, or None at the end."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
