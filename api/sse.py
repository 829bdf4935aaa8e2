"""A Server-Sent Events response that notices a client hanging up while it waits.

Starlette's StreamingResponse only learns of a disconnect on some ASGI servers; an LLM
stream can sit for seconds between tokens, and a client that left must cancel the upstream
call at once. So this response watches ``receive`` for ``http.disconnect`` beside sending,
and cancels the event iterator (whose ``finally`` tells the worker) the moment it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from starlette.types import Receive, Scope, Send

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and friends buffer responses unless told not to; a buffered SSE stream stalls.
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class EventStreamResponse:
    """Sends ``events`` (already framed as ``data: …\\n\\n`` bytes) as ``text/event-stream``.

    :param events: the byte frames; closed (cancelled) when the client disconnects.
    :param headers: extra response headers.
    """

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.events = events
        self.headers = {**SSE_HEADERS, **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        sender = asyncio.create_task(self._send_events(send))
        watcher = asyncio.create_task(self._wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)

    async def _send_events(self, send: Send) -> None:
        try:
            async for frame in self.events:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write; the watcher sees the disconnect too
        finally:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()

    @staticmethod
    async def _wait_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
