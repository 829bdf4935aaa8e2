"""Server-Sent Events, decoded as the WHATWG spec says, from a response's lines.

What upstreams really send is covered: ``data:`` split over several lines (joined with
``\\n``), ``event:`` names (the Responses and Anthropic streams), ``id:`` and ``retry:``,
comments as keep-alives (``: OPENROUTER PROCESSING``), a field without a colon, one optional
space after the colon, and any line ending (the line reader strips ``\\n``, ``\\r\\n`` and ``\\r``).
One leniency beyond the spec: an event still open when the body ends is dispatched rather than
dropped, since some upstreams close right after their last ``data:`` line.

No maintained decoder fits here: httpx-sse reads httpx responses only, and the worker reads
aiohttp's (see ``http.py``); this one is tested case by case in ``tests/test_sse.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple


class ServerSentEvent(NamedTuple):
    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None


async def iter_events(lines: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
    """The events of a stream of lines (without their line endings)."""
    data: list[bytes] = []
    event = ""
    last_id: str | None = None
    retry: int | None = None
    async for line in lines:
        if not line:
            # A blank line dispatches the event; one without data is dropped, as the spec says.
            if data:
                yield ServerSentEvent(b"\n".join(data), event or "message", last_id, retry)
            data, event = [], ""
            continue
        if line[0] == 0x3A:  # ":" starts a comment
            continue
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" not in value:
                last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():
                retry = int(value)
        # Any other field is ignored, as the spec says.
    if data:
        yield ServerSentEvent(b"\n".join(data), event or "message", last_id, retry)
